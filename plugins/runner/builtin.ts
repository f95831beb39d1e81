// The plugins this runner ships with, in one list.
import type { AnyPlugin } from '../api/plugin.js';
import { examplePlugin } from '../example/index.js';

export function builtinPlugins(): AnyPlugin[] {
  return [examplePlugin];
}
