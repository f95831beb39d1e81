// A project's LLM budget: what the CMS accepts, stores and returns, and what
// gateways enforce. The one module that knows the document's shape.
//
//   {
//     "windows": [{"per": "minute", "tokens": 20000}, {"per": "day", "tokens": 1000000}],
//     "models": {"gpt-4o": {"windows": [{"per": "minute", "tokens": 5000}]}},
//     "default_max_tokens": 512,
//     "block_tokens": 2000
//   }
//
// windows             token limits per UTC calendar window (minute, hour,
//                     day, month); a call must fit in every one
// models              further limits for calls to one model (charged to both)
// default_max_tokens  the completion size a call without `max_tokens` is
//                     charged for at most (it is then sent upstream as the
//                     call's max_tokens); absent: such calls are refused
// block_tokens        how many tokens a gateway leases from etcd at a time
//                     (default: a tenth of the smallest window's limit)
import { Ajv, type ValidateFunction } from 'ajv';

export const WINDOW_KINDS = ['minute', 'hour', 'day', 'month'] as const;
export type WindowKind = (typeof WINDOW_KINDS)[number];

export interface BudgetWindow {
  per: WindowKind;
  tokens: number;
}

export interface Budget {
  windows: BudgetWindow[];
  models?: Record<string, { windows: BudgetWindow[] }>;
  default_max_tokens?: number;
  block_tokens?: number;
}

/** Model names as OpenAI-compatible APIs spell them: letters, digits and . _ : / @ + -. */
export const MODEL_NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$';
const MODEL_NAME = new RegExp(MODEL_NAME_PATTERN);

/** Whether a text is a model name, the one rule for a budget's models, a call's and a policy decision's. */
export function isModelName(name: string): boolean {
  return MODEL_NAME.test(name);
}
const MAX_TOKENS = 1e12;

const windowsSchema = {
  type: 'array',
  minItems: 1,
  maxItems: WINDOW_KINDS.length,
  items: {
    type: 'object',
    additionalProperties: false,
    required: ['per', 'tokens'],
    properties: {
      per: { type: 'string', enum: [...WINDOW_KINDS] },
      tokens: { type: 'integer', minimum: 1, maximum: MAX_TOKENS },
    },
  },
};

const budgetSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['windows'],
  properties: {
    windows: windowsSchema,
    models: {
      type: 'object',
      maxProperties: 256,
      propertyNames: { pattern: MODEL_NAME_PATTERN },
      additionalProperties: {
        type: 'object',
        additionalProperties: false,
        required: ['windows'],
        properties: { windows: windowsSchema },
      },
    },
    default_max_tokens: { type: 'integer', minimum: 1, maximum: 10_000_000 },
    block_tokens: { type: 'integer', minimum: 1, maximum: MAX_TOKENS },
  },
};

const ajv = new Ajv({ allErrors: true, strict: true });
const validate = ajv.compile(budgetSchema) as ValidateFunction<Budget>;

export interface BudgetProblem {
  /** JSON pointer into the submitted document. */
  pointer: string;
  message: string;
}

/** The problems of a submitted budget (empty: valid). */
export function budgetProblems(value: unknown): BudgetProblem[] {
  const problems: BudgetProblem[] = [];
  if (!validate(value)) {
    for (const error of validate.errors ?? []) {
      // Pointers name the member at fault (RFC 6901: "" is the document, "/" a member named "").
      if (error.keyword === 'propertyNames') continue; // its cause comes beside it, naming the property
      let pointer = error.instancePath;
      let message = error.message ?? 'invalid';
      if (error.keyword === 'additionalProperties') {
        const name = String(error.params.additionalProperty);
        pointer += `/${escapePointer(name)}`;
        message = `unknown field "${name}"`;
      } else if (error.keyword === 'required') {
        pointer += `/${escapePointer(String(error.params.missingProperty))}`;
        message = 'is required';
      } else if (error.propertyName !== undefined) {
        pointer += `/${escapePointer(error.propertyName)}`;
        message = `the name ${message}`;
      }
      problems.push({ pointer, message });
    }
    return problems;
  }
  const budget = value;
  const seen = (windows: BudgetWindow[], at: string) => {
    const kinds = new Set<string>();
    for (const [i, window] of windows.entries()) {
      if (kinds.has(window.per)) problems.push({ pointer: `${at}/${i}/per`, message: `a second "${window.per}" window` });
      kinds.add(window.per);
    }
  };
  seen(budget.windows, '/windows');
  for (const [model, limits] of Object.entries(budget.models ?? {})) seen(limits.windows, `/models/${escapePointer(model)}/windows`);
  return problems;
}

function escapePointer(segment: string): string {
  return segment.replaceAll('~', '~0').replaceAll('/', '~1');
}

/** Parses a stored or submitted budget, throwing with the problems when invalid. */
export function parseBudget(value: unknown): Budget {
  const problems = budgetProblems(value);
  if (problems.length > 0) throw new Error(`invalid budget: ${problems.map((p) => `${p.pointer}: ${p.message}`).join('; ')}`);
  return value as Budget;
}

/** Where a window starts and ends (UTC calendar), for a time in ms. */
export function windowBounds(per: WindowKind, nowMs: number): { start: number; end: number } {
  const d = new Date(nowMs);
  switch (per) {
    case 'minute': {
      const start = Math.floor(nowMs / 60_000) * 60_000;
      return { start, end: start + 60_000 };
    }
    case 'hour': {
      const start = Math.floor(nowMs / 3_600_000) * 3_600_000;
      return { start, end: start + 3_600_000 };
    }
    case 'day': {
      const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
      return { start, end: start + 86_400_000 };
    }
    case 'month': {
      const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
      return { start, end: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) };
    }
  }
}

/** A limit a call is charged against: the project's own windows, or a model's. */
export interface BudgetLimit {
  /** "*" for the project's own windows, else the model. */
  scope: string;
  per: WindowKind;
  tokens: number;
}

/** Every limit a call to `model` must fit in. */
export function limitsFor(budget: Budget, model: string | null): BudgetLimit[] {
  const limits: BudgetLimit[] = budget.windows.map((w) => ({ scope: '*', per: w.per, tokens: w.tokens }));
  const own = model !== null ? budget.models?.[model] : undefined;
  if (own && model !== null) for (const w of own.windows) limits.push({ scope: model, per: w.per, tokens: w.tokens });
  return limits;
}

/** Every limit of a budget: the project's own windows, then each model's. */
export function allLimits(budget: Budget): BudgetLimit[] {
  return [
    ...budget.windows.map((w) => ({ scope: '*', per: w.per, tokens: w.tokens })),
    ...Object.entries(budget.models ?? {}).flatMap(([model, own]) => own.windows.map((w) => ({ scope: model, per: w.per, tokens: w.tokens }))),
  ];
}

/** The block a gateway leases at a time for a limit. */
export function blockTokens(budget: Budget, limit: BudgetLimit): number {
  const smallest = Math.min(...budget.windows.map((w) => w.tokens), ...Object.values(budget.models ?? {}).flatMap((m) => m.windows.map((w) => w.tokens)));
  return Math.min(limit.tokens, budget.block_tokens ?? Math.max(1, Math.ceil(smallest / 10)));
}
