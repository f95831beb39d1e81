/**
 * Instruction metering for policy wasm, so that an evaluation can be bounded
 * on the calling thread.
 *
 * When a module is compiled, its bytes are rewritten (binaryen) to carry a
 * mutable i32 global, exported as `gatehouse_fuel`, that is decremented by
 * one at every loop iteration and at the entry of every function that calls
 * another; when it drops below zero the code executes `unreachable`, which
 * traps out of the evaluation. Work between two such points is straight-line
 * code of one function body (or a call to a function that calls nothing and
 * whose own loops are metered), so the fuel an evaluation may burn bounds its
 * time. The engine sets the fuel before each evaluation (index.ts).
 *
 * Nothing else changes: no optimisation pass runs, imports (opa_abort,
 * opa_builtin0..4) and exports stay as they are, and the result is validated.
 */
import type binaryenType from 'binaryen';

export const FUEL_GLOBAL = 'gatehouse_fuel';

type Binaryen = typeof binaryenType;
type Ref = number;

/**
 * The expression classes of binaryen.js walked here: the JS API has them
 * (binaryen.Block.getChildAt, ...), its type declarations do not.
 */
interface Expressions {
  Block: { getNumChildren(e: Ref): number; getChildAt(e: Ref, i: number): Ref };
  If: { getCondition(e: Ref): Ref; getIfTrue(e: Ref): Ref; getIfFalse(e: Ref): Ref };
  Loop: { getBody(e: Ref): Ref; setBody(e: Ref, body: Ref): void };
  Break: { getCondition(e: Ref): Ref; getValue(e: Ref): Ref };
  Switch: { getCondition(e: Ref): Ref; getValue(e: Ref): Ref };
  Call: { getNumOperands(e: Ref): number; getOperandAt(e: Ref, i: number): Ref };
  CallIndirect: { getTarget(e: Ref): Ref; getNumOperands(e: Ref): number; getOperandAt(e: Ref, i: number): Ref };
  LocalSet: { getValue(e: Ref): Ref };
  GlobalSet: { getValue(e: Ref): Ref };
  Load: { getPtr(e: Ref): Ref };
  Store: { getPtr(e: Ref): Ref; getValue(e: Ref): Ref };
  Unary: { getValue(e: Ref): Ref };
  Binary: { getLeft(e: Ref): Ref; getRight(e: Ref): Ref };
  Select: { getIfTrue(e: Ref): Ref; getIfFalse(e: Ref): Ref; getCondition(e: Ref): Ref };
  Drop: { getValue(e: Ref): Ref };
  Return: { getValue(e: Ref): Ref };
  MemoryGrow: { getDelta(e: Ref): Ref };
  MemoryCopy: { getDest(e: Ref): Ref; getSource(e: Ref): Ref; getSize(e: Ref): Ref };
  MemoryFill: { getDest(e: Ref): Ref; getValue(e: Ref): Ref; getSize(e: Ref): Ref };
  Function: { setBody(func: Ref, body: Ref): void };
}

let loading: Promise<Binaryen> | null = null;

/** binaryen is loaded on first use: a process that never compiles policy wasm does not pay for it. */
function binaryen(): Promise<Binaryen> {
  loading ??= import('binaryen').then((module) => module.default);
  return loading;
}

export class MeteringError extends Error {
  override readonly name = 'MeteringError';
}

/** The children of an expression, for the expression kinds OPA's compiler emits; any other kind is refused. */
function children(b: Binaryen, x: Expressions, e: Ref): Ref[] {
  const id = b.getExpressionId(e);
  const list = (count: number, at: (i: number) => Ref): Ref[] => Array.from({ length: count }, (_, i) => at(i));
  switch (id) {
    case b.BlockId:
      return list(x.Block.getNumChildren(e), (i) => x.Block.getChildAt(e, i));
    case b.IfId:
      return [x.If.getCondition(e), x.If.getIfTrue(e), x.If.getIfFalse(e)];
    case b.LoopId:
      return [x.Loop.getBody(e)];
    case b.BreakId:
      return [x.Break.getCondition(e), x.Break.getValue(e)];
    case b.SwitchId:
      return [x.Switch.getCondition(e), x.Switch.getValue(e)];
    case b.CallId:
      return list(x.Call.getNumOperands(e), (i) => x.Call.getOperandAt(e, i));
    case b.CallIndirectId:
      return [x.CallIndirect.getTarget(e), ...list(x.CallIndirect.getNumOperands(e), (i) => x.CallIndirect.getOperandAt(e, i))];
    case b.LocalSetId:
      return [x.LocalSet.getValue(e)];
    case b.GlobalSetId:
      return [x.GlobalSet.getValue(e)];
    case b.LoadId:
      return [x.Load.getPtr(e)];
    case b.StoreId:
      return [x.Store.getPtr(e), x.Store.getValue(e)];
    case b.UnaryId:
      return [x.Unary.getValue(e)];
    case b.BinaryId:
      return [x.Binary.getLeft(e), x.Binary.getRight(e)];
    case b.SelectId:
      return [x.Select.getIfTrue(e), x.Select.getIfFalse(e), x.Select.getCondition(e)];
    case b.DropId:
      return [x.Drop.getValue(e)];
    case b.ReturnId:
      return [x.Return.getValue(e)];
    case b.MemoryGrowId:
      return [x.MemoryGrow.getDelta(e)];
    case b.MemoryCopyId:
      return [x.MemoryCopy.getDest(e), x.MemoryCopy.getSource(e), x.MemoryCopy.getSize(e)];
    case b.MemoryFillId:
      return [x.MemoryFill.getDest(e), x.MemoryFill.getValue(e), x.MemoryFill.getSize(e)];
    case b.LocalGetId:
    case b.GlobalGetId:
    case b.ConstId:
    case b.NopId:
    case b.UnreachableId:
    case b.MemorySizeId:
      return [];
    default:
      throw new MeteringError(`the policy wasm has an instruction metering does not know (binaryen expression id ${id})`);
  }
}

/**
 * The policy wasm with fuel metering added (see above). Throws a
 * MeteringError when the bytes are not wasm binaryen can read, or use an
 * instruction the walk does not know, or the result does not validate.
 */
export async function meterPolicyWasm(wasm: Uint8Array): Promise<Uint8Array> {
  const b = await binaryen();
  const x = b as unknown as Expressions;
  let module: binaryenType.Module;
  try {
    module = b.readBinary(wasm);
  } catch (cause) {
    throw new MeteringError('not wasm binaryen can read', { cause });
  }
  try {
    module.setFeatures(module.getFeatures() | b.Features.MutableGlobals);
    // Set to the most an i32 holds, so that loading the module and its data (before the first evaluation) runs unmetered in practice.
    module.addGlobal(FUEL_GLOBAL, b.i32, true, module.i32.const(0x7fffffff));
    module.addGlobalExport(FUEL_GLOBAL, FUEL_GLOBAL);
    const charge = (): Ref[] => [
      module.global.set(FUEL_GLOBAL, module.i32.sub(module.global.get(FUEL_GLOBAL, b.i32), module.i32.const(1))),
      module.if(module.i32.lt_s(module.global.get(FUEL_GLOBAL, b.i32), module.i32.const(0)), module.unreachable()),
    ];
    for (let i = 0; i < module.getNumFunctions(); i++) {
      const func = module.getFunctionByIndex(i);
      const info = b.getFunctionInfo(func);
      if (info.module) continue; // an import: nothing to rewrite
      const loops: Ref[] = [];
      let calls = false;
      const stack: Ref[] = [info.body];
      while (stack.length > 0) {
        const e = stack.pop()!;
        if (!e) continue;
        const id = b.getExpressionId(e);
        if (id === b.LoopId) loops.push(e);
        else if (id === b.CallId || id === b.CallIndirectId) calls = true;
        stack.push(...children(b, x, e));
      }
      for (const loop of loops) {
        const body = x.Loop.getBody(loop);
        x.Loop.setBody(loop, module.block(null, [...charge(), body], b.getExpressionType(body)));
      }
      // A function that calls nothing runs its straight-line code once per call from a metered one (or its metered loops).
      if (calls) x.Function.setBody(func, module.block(null, [...charge(), info.body], info.results));
    }
    if (!module.validate()) throw new MeteringError('the metered policy wasm does not validate');
    return module.emitBinary();
  } finally {
    module.dispose();
  }
}

/**
 * Meters a small module once, so that binaryen's own code is compiled and
 * warm before the first policy (a cold binaryen takes about a second over a
 * policy module; warm, tens of milliseconds).
 */
export async function warmUpMetering(): Promise<void> {
  const b = await binaryen();
  const module = new b.Module();
  try {
    const body = module.block(null, [
      module.loop('l', module.block(null, [module.drop(module.call('leaf', [], b.i32)), module.br('l', module.i32.const(0))])),
      module.return(module.call('leaf', [], b.i32)),
    ]);
    module.addFunction('leaf', b.none, b.i32, [], module.i32.const(1));
    module.addFunction('main', b.none, b.i32, [], body);
    module.addFunctionExport('main', 'main');
    await meterPolicyWasm(module.emitBinary());
  } finally {
    module.dispose();
  }
}
