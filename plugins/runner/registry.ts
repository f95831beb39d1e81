// The plugins this runner knows, by the name routes use.
import type { AnyPlugin } from '../api/plugin.js';

export class PluginRegistry {
  private readonly byName = new Map<string, AnyPlugin>();

  constructor(plugins: Iterable<AnyPlugin>) {
    for (const plugin of plugins) {
      if (this.byName.has(plugin.name)) throw new Error(`two plugins are named ${plugin.name}`);
      this.byName.set(plugin.name, plugin);
    }
  }

  get(name: string): AnyPlugin | undefined {
    return this.byName.get(name);
  }

  get names(): string[] {
    return [...this.byName.keys()];
  }
}
