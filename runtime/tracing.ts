// OpenTelemetry traces, shared by the runner and the CMS: the standard
// OTEL_* variables (read by each service's configuration module, which hands
// its environment to tracingConfigFromEnv) and the SDK they start. Off by
// default: without an OTLP endpoint there is no configuration, so no SDK,
// no exporter and no span objects, and callers hold null.
//
//   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the full URL spans are posted to (wins over the next)
//   OTEL_EXPORTER_OTLP_ENDPOINT         the collector's base URL; spans go to <it>/v1/traces
//   OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL  http/protobuf (default) or http/json
//   OTEL_SERVICE_NAME                   the service.name of every span (default: the service's own name)
//   OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG  always_on, always_off, traceidratio, parentbased_always_on
//                                       (default), parentbased_always_off, parentbased_traceidratio; ARG the ratio (default 1)
//   OTEL_SDK_DISABLED                   "true": no traces whatever else is set
import { ROOT_CONTEXT, SpanKind, trace, type Context, type Span, type TextMapGetter, type TextMapSetter, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { Sampler } from '@opentelemetry/sdk-trace';

// The SDK, its exporters and the resource attributes are imported when
// traces are started (startTracing), not with this module: every service
// imports it, and most run with traces off, where loading the exporters
// (protobufjs generating its codecs included) would cost each process tens
// of milliseconds of start-up and several MiB for nothing.

export type OtlpProtocol = 'http/protobuf' | 'http/json';

export const TRACES_SAMPLERS = [
  'always_on',
  'always_off',
  'traceidratio',
  'parentbased_always_on',
  'parentbased_always_off',
  'parentbased_traceidratio',
] as const;
export type TracesSampler = (typeof TRACES_SAMPLERS)[number];

export interface TracingConfig {
  /** Where spans are posted (the traces endpoint itself, /v1/traces included). */
  url: string;
  protocol: OtlpProtocol;
  serviceName: string;
  sampler: TracesSampler;
  /** The ratio of the traceidratio samplers, 0 to 1. */
  samplerRatio: number;
}

/**
 * The OTEL_* variables of `env`, or null when traces are off (no endpoint,
 * or OTEL_SDK_DISABLED=true). Throws on a value that cannot be meant.
 */
export function tracingConfigFromEnv(env: NodeJS.ProcessEnv, defaultServiceName: string): TracingConfig | null {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return null;
  const signal = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  if (!signal && !base) return null;
  const url = signal ? signal : `${base!.replace(/\/+$/, '')}/v1/traces`;
  const name = signal ? 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT' : 'OTEL_EXPORTER_OTLP_ENDPOINT';
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new Error(`${name} must be an http(s) URL, got ${JSON.stringify(signal || base)}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new Error(`${name} must be an http(s) URL, got ${JSON.stringify(signal || base)}`);

  const protocolName = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL?.trim() ? 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL' : 'OTEL_EXPORTER_OTLP_PROTOCOL';
  const protocol = env[protocolName]?.trim() || 'http/protobuf';
  if (protocol !== 'http/protobuf' && protocol !== 'http/json') {
    throw new Error(`${protocolName} must be http/protobuf or http/json (grpc is not supported), got ${JSON.stringify(protocol)}`);
  }

  const sampler = (env.OTEL_TRACES_SAMPLER?.trim() || 'parentbased_always_on') as TracesSampler;
  if (!TRACES_SAMPLERS.includes(sampler)) throw new Error(`OTEL_TRACES_SAMPLER must be one of ${TRACES_SAMPLERS.join(', ')}, got ${JSON.stringify(sampler)}`);
  const rawRatio = env.OTEL_TRACES_SAMPLER_ARG?.trim();
  const samplerRatio = rawRatio ? Number(rawRatio) : 1;
  if (!Number.isFinite(samplerRatio) || samplerRatio < 0 || samplerRatio > 1) {
    throw new Error(`OTEL_TRACES_SAMPLER_ARG must be a ratio from 0 to 1, got ${JSON.stringify(rawRatio)}`);
  }
  return { url: parsed.href, protocol, serviceName: env.OTEL_SERVICE_NAME?.trim() || defaultServiceName, sampler, samplerRatio };
}

type SdkTrace = typeof import('@opentelemetry/sdk-trace');

function samplerOf(config: TracingConfig, sdk: SdkTrace): Sampler {
  const { AlwaysOffSampler, AlwaysOnSampler, ParentBasedSampler, TraceIdRatioBasedSampler } = sdk;
  const ratio = () => new TraceIdRatioBasedSampler(config.samplerRatio);
  switch (config.sampler) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return ratio();
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: ratio() });
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}

/** A started SDK: the service's tracer, and what stops it (flushing the spans not yet sent). */
export interface Tracing {
  readonly tracer: Tracer;
  readonly config: TracingConfig;
  /** Sends the spans ended so far. */
  flush(): Promise<void>;
  shutdown(): Promise<void>;
}

/**
 * Starts the SDK for `config`. Nothing is registered globally: spans are
 * made from the tracer returned, with their parents passed explicitly, so
 * no context manager runs on every await of the process.
 */
export async function startTracing(config: TracingConfig): Promise<Tracing> {
  const [sdk, { resourceFromAttributes }, { ATTR_SERVICE_NAME }, exporter] = await Promise.all([
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/semantic-conventions'),
    config.protocol === 'http/json'
      ? import('@opentelemetry/exporter-trace-otlp-http').then(({ OTLPTraceExporter }) => new OTLPTraceExporter({ url: config.url }))
      : import('@opentelemetry/exporter-trace-otlp-proto').then(({ OTLPTraceExporter }) => new OTLPTraceExporter({ url: config.url })),
  ]);
  const provider = new sdk.TracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: config.serviceName }),
    sampler: samplerOf(config, sdk),
    // Batched off the request path; a full queue drops spans rather than holding memory.
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter, maxQueueSize: 4096, scheduledDelayMillis: 1000 })],
  });
  return {
    tracer: provider.getTracer('gatehouse'),
    config,
    flush: () => provider.forceFlush(),
    shutdown: () => provider.shutdown(),
  };
}

const propagator = new W3CTraceContextPropagator();

/** Reads traceparent (and tracestate) through a function giving a header's value by lower-case name. */
const getter: TextMapGetter<(name: string) => string | undefined> = {
  keys: () => ['traceparent', 'tracestate'],
  get: (carrier, key) => carrier(key.toLowerCase()),
};

/** The context a client's `traceparent` continues, or the root context when it sent none (or a malformed one). */
export function incomingContext(header: (name: string) => string | undefined): Context {
  return propagator.extract(ROOT_CONTEXT, header, getter);
}

const setter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

/** The traceparent (and tracestate) headers naming `span` as the parent of what follows. */
export function outgoingHeaders(span: Span): Record<string, string> {
  const headers: Record<string, string> = {};
  propagator.inject(trace.setSpan(ROOT_CONTEXT, span), headers, setter);
  return headers;
}

export { SpanKind, trace, type Context, type Span };
