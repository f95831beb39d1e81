// Names and addresses of `npm run dc:up`. The tests use their own prefix and
// subnet, so that they can run while a rehearsal is up.
import { join } from 'node:path';
import type { NetworkPlan } from './netns.js';

export const REHEARSAL_PLAN: NetworkPlan = { prefix: 'ghr', subnet: '10.77.0' };

export function rehearsalWorkDir(root: string): string {
  return join(root, '.local', 'dc-rehearsal');
}
