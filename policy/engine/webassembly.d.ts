// The few WebAssembly globals the engine uses. Node has them at run time;
// TypeScript only declares them in its DOM lib, which a server must not pull in.
declare namespace WebAssembly {
  class Module {
    private constructor();
    static exports(module: Module): { name: string; kind: string }[];
    static imports(module: Module): { module: string; name: string; kind: string }[];
  }
  class Memory {
    private constructor();
    readonly buffer: ArrayBuffer;
  }
  class Global {
    private constructor();
    value: number | bigint;
  }
  class Instance {
    private constructor();
    readonly exports: Record<string, unknown>;
  }
  function compile(bytes: ArrayBuffer | Uint8Array): Promise<Module>;
}
