// The few WebAssembly globals the engine uses. Node has them at run time;
// TypeScript only declares them in its DOM lib, which a server must not pull in.
declare namespace WebAssembly {
  class Module {
    private constructor();
  }
  class Memory {
    private constructor();
    readonly buffer: ArrayBuffer;
  }
  function compile(bytes: ArrayBuffer | Uint8Array): Promise<Module>;
}
