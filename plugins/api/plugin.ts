// The plugin interface of the Gatehouse runner. Close to the Go runner's
// (name, parse conf, request filter, response filter) and to the JavaScript
// runner proposed to APISIX, so plugins move over easily.
import type { Logger } from 'pino';
import type { GatewayRequest, StopResponse, UpstreamResponse } from './http.js';

/** Thrown by `parseConf` when a conf is invalid; the message names the problem. */
export class ConfError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfError';
  }
}

/** State shared by every plugin of one chain for one request. */
export interface CallContext {
  /** Values earlier plugins left for later ones (for example the verified identity). */
  readonly state: Map<string, unknown>;
  readonly log: Logger;
  /** The APISIX route the call came through (from PrepareConf's key), when known. */
  readonly route?: string | null;
  /**
   * Request headers the chain's plugins name as credentials under their
   * confs (Plugin.credentialHeaders), lower-case: beyond http/credentials'
   * fixed list, they never enter a policy input either.
   */
  readonly credentialHeaders?: ReadonlySet<string>;
  /**
   * The span of the plugin running, when the runner exports traces
   * (OTEL_*); absent otherwise, so `ctx.trace?.attributes({...})` costs a
   * null check. What a plugin adds is what it decided (a policy, a path
   * template, an issuer): never a token, a secret, a credential header's
   * value or a body.
   */
  readonly trace?: TraceHook;
}

/** Values a span attribute may hold. */
export type TraceAttributes = Record<string, string | number | boolean | readonly string[] | readonly number[]>;

export interface TraceHook {
  /** Adds attributes to the running plugin's span. */
  attributes(attributes: TraceAttributes): void;
  /**
   * The call is settled after its response under `reservation` (an LLM
   * budget's reservation id): the settle span joins this request's trace.
   */
  settlesLater(reservation: string, attributes: TraceAttributes): void;
}

export interface Plugin<Conf = unknown> {
  /** The name routes use in `ext-plugin-*` confs. */
  readonly name: string;
  /**
   * Parses and validates the JSON conf string from PrepareConf. Runs under
   * APISIX's global lock: keep it fast and free of I/O. Throw ConfError.
   */
  parseConf(raw: string): Conf;
  /**
   * Request headers that carry credentials under this conf (ones the plugin
   * strips or injects), beyond http/credentials' fixed list. Asked once per
   * prepared chain, not per request.
   */
  credentialHeaders?(conf: Conf): readonly string[];
  /**
   * Runs for `ext-plugin-pre-req` / `ext-plugin-post-req`. Change `request` to
   * rewrite it; set anything on `response` to answer the client and stop the chain.
   */
  requestFilter(conf: Conf, request: GatewayRequest, response: StopResponse, ctx: CallContext): void | Promise<void>;
  /** Runs for `ext-plugin-post-resp`, after the upstream answered. */
  responseFilter?(conf: Conf, response: UpstreamResponse, ctx: CallContext): void | Promise<void>;
}

/** Erases a plugin's conf type, for registries holding plugins of many kinds. */
export type AnyPlugin = Plugin<any>;

/**
 * Stands in for a plugin whose dependency this runner does not have (no
 * token verifier, no budgets, no Vault): every conf naming it is refused at
 * PrepareConf with `reason`, so no route ever runs it.
 */
export function unavailablePlugin(name: string, reason: string): Plugin<never> {
  return {
    name,
    parseConf() {
      throw new ConfError(`${name}: ${reason}`);
    },
    requestFilter() {
      throw new Error(`${name}: ${reason}`);
    },
  };
}
