/**
 * A real OpenTelemetry Collector on loopback for tests and benchmarks: the
 * core distribution's components built from the Go module proxy by
 * `npm run setup` (dev/otelcol, binary in .local/bin/otelcol, or
 * OTELCOL_BINARY). It receives OTLP over HTTP (http/protobuf and http/json)
 * and forwards every span, as OTLP/JSON, to a sink of ours that keeps them
 * for the test to read.
 *
 *   const collector = await startLocalCollector();
 *   collector.endpoint             // 'http://127.0.0.1:<port>': OTEL_EXPORTER_OTLP_ENDPOINT
 *   await collector.until((spans) => spans.some((s) => s.name === 'opa'));
 *   collector.spans                // every span received so far, flattened
 *   await collector.stop();
 */
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../local-etcd/index.js';
import { packageRoot } from '../../runtime/paths.js';
import { localServerProcess } from '../child-process.js';

export const otelcolBinary = process.env.OTELCOL_BINARY || join(packageRoot(), '.local/bin/otelcol');

export type AttributeValue = string | number | boolean | AttributeValue[] | null;

/** One span as the collector passed it on. */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** '' for a root span. */
  parentSpanId: string;
  name: string;
  /** OTLP's SpanKind number (1 internal, 2 server, 3 client). */
  kind: number;
  attributes: Record<string, AttributeValue>;
  /** The resource's attributes (service.name among them). */
  resource: Record<string, AttributeValue>;
  /** OTLP's status code (0 unset, 1 ok, 2 error) and message. */
  status: { code: number; message: string };
}

export interface LocalCollector {
  /** The collector's OTLP/HTTP base URL (spans are posted to <endpoint>/v1/traces). */
  endpoint: string;
  readonly spans: ReceivedSpan[];
  /** Every OTLP/JSON body the collector passed on, as received (to look for what must never be in a span). */
  readonly raw: string[];
  /** Waits until `test` holds for the spans received (default 20 s), then returns them. */
  until(test: (spans: ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>;
  stop(): Promise<void>;
}

interface OtlpAnyValue {
  stringValue?: string;
  intValue?: string | number;
  doubleValue?: number;
  boolValue?: boolean;
  arrayValue?: { values?: OtlpAnyValue[] };
}
interface OtlpKeyValue {
  key: string;
  value?: OtlpAnyValue;
}

function valueOf(value: OtlpAnyValue | undefined): AttributeValue {
  if (!value) return null;
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.arrayValue !== undefined) return (value.arrayValue.values ?? []).map(valueOf);
  return null;
}

function attributesOf(list: OtlpKeyValue[] | undefined): Record<string, AttributeValue> {
  return Object.fromEntries((list ?? []).map((kv) => [kv.key, valueOf(kv.value)]));
}

/** The spans of one OTLP/JSON ExportTraceServiceRequest. */
export function spansOfExport(body: unknown): ReceivedSpan[] {
  const spans: ReceivedSpan[] = [];
  const resourceSpans = (body as { resourceSpans?: unknown[] }).resourceSpans ?? [];
  for (const rs of resourceSpans as { resource?: { attributes?: OtlpKeyValue[] }; scopeSpans?: { spans?: Record<string, unknown>[] }[] }[]) {
    const resource = attributesOf(rs.resource?.attributes);
    for (const ss of rs.scopeSpans ?? []) {
      for (const span of ss.spans ?? []) {
        const status = (span.status ?? {}) as { code?: number | string; message?: string };
        spans.push({
          traceId: String(span.traceId ?? ''),
          spanId: String(span.spanId ?? ''),
          parentSpanId: String(span.parentSpanId ?? ''),
          name: String(span.name ?? ''),
          kind: Number(span.kind ?? 0),
          attributes: attributesOf(span.attributes as OtlpKeyValue[] | undefined),
          resource,
          status: { code: Number(status.code ?? 0), message: status.message ?? '' },
        });
      }
    }
  }
  return spans;
}

async function startSink(received: (body: string) => void): Promise<Server> {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      if (req.method === 'POST' && req.url === '/v1/traces') received(Buffer.concat(chunks).toString('utf8'));
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

async function waitReady(endpoint: string, child: { exitCode: number | null; signalCode: NodeJS.Signals | null }, output: () => string): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`otelcol exited (${child.exitCode ?? child.signalCode}):\n${output()}`);
    try {
      // An empty export: answered once the OTLP receiver serves.
      const response = await fetch(`${endpoint}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
        signal: AbortSignal.timeout(1_000),
      });
      await response.arrayBuffer();
      if (response.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`otelcol did not serve on ${endpoint}:\n${output()}`);
}

/**
 * `forward: false` (a benchmark's sink): spans are received and dropped by
 * the collector's debug exporter, none reach `spans`.
 */
export async function startLocalCollector(options: { forward?: boolean } = {}): Promise<LocalCollector> {
  const forward = options.forward ?? true;
  if (!existsSync(otelcolBinary)) {
    throw new Error(`no otelcol binary at ${otelcolBinary}: run \`npm run setup\` (builds dev/otelcol) or set OTELCOL_BINARY`);
  }
  const spans: ReceivedSpan[] = [];
  const raw: string[] = [];
  const sink = await startSink((body) => {
    raw.push(body);
    try {
      spans.push(...spansOfExport(JSON.parse(body)));
    } catch {
      // kept in raw; a body that is not JSON holds no spans to read
    }
  });
  const sinkPort = (sink.address() as AddressInfo).port;
  const port = await freePort();
  const endpoint = `http://127.0.0.1:${port}`;
  const dir = mkdtempSync(join(tmpdir(), 'gatehouse-otelcol-'));
  const configFile = join(dir, 'config.yaml');
  writeFileSync(
    configFile,
    [
      'receivers:',
      '  otlp:',
      '    protocols:',
      '      http:',
      `        endpoint: 127.0.0.1:${port}`,
      'exporters:',
      '  otlphttp:',
      `    endpoint: http://127.0.0.1:${sinkPort}`,
      '    encoding: json',
      '    compression: none',
      '    sending_queue:',
      '      enabled: false',
      '  debug:',
      '    verbosity: basic',
      'service:',
      '  telemetry:',
      '    logs:',
      '      level: warn',
      '    metrics:',
      // Otherwise it serves its own metrics on :8888, which two collectors cannot share.
      '      level: none',
      '  pipelines:',
      '    traces:',
      '      receivers: [otlp]',
      `      exporters: [${forward ? 'otlphttp' : 'debug'}]`,
      '',
    ].join('\n'),
  );
  const env = { PATH: process.env.PATH ?? '', HOME: tmpdir() };
  const server = localServerProcess({
    command: otelcolBinary,
    args: ['--config', `file:${configFile}`],
    env,
    ready: (child, output) => waitReady(endpoint, child, output),
  });
  try {
    await server.launch();
  } catch (err) {
    sink.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoint,
    spans,
    raw,
    async until(test, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (!test(spans)) {
        if (Date.now() > deadline)
          throw new Error(`the collector did not receive the spans awaited; it holds: ${spans.map((s) => s.name).join(', ') || 'none'}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      return spans;
    },
    async stop() {
      await server.stop();
      await new Promise<void>((resolve) => sink.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
