// Traces' configuration (the standard OTEL_* variables, read by each
// service's config module) and both OTLP/HTTP encodings reaching a real
// collector (dev/otelcol): a recording hop in front of it shows which one
// the SDK sent.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTracing, tracingConfigFromEnv } from '../../runtime/tracing.js';
import { runnerConfigFromEnv } from '../../plugins/runner/config.js';
import { cmsConfigFromEnv } from '../../cms/config.js';
import { startLocalCollector, type LocalCollector } from '../../dev/otelcol/index.js';
import { pino } from 'pino';
import { runRequestChain } from '../../plugins/runner/chain.js';
import { RunnerTraces } from '../../plugins/runner/tracing.js';
import type { CallContext, Plugin } from '../../plugins/api/plugin.js';
import type { HttpReqCallRequest } from '../../plugins/protocol/index.js';

const JWT = { JWT_JWKS_FILE: '/nonexistent/jwks.json', JWT_ISSUER: 'https://idp.test', JWT_AUDIENCE: 'gatehouse' };

describe('OTEL_* configuration', () => {
  it('is off without an endpoint: the runner and the CMS start no SDK', () => {
    expect(tracingConfigFromEnv({}, 'x')).toBeNull();
    expect(tracingConfigFromEnv({ OTEL_SERVICE_NAME: 'a', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, 'x')).toBeNull();
    expect(runnerConfigFromEnv({ ...JWT }).tracing).toBeNull();
    expect(cmsConfigFromEnv({ ...JWT }).tracing).toBeNull();
    expect(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }, 'x')).toBeNull();
  });

  it('reads the endpoint, protocol, service name and sampler', () => {
    expect(runnerConfigFromEnv({ ...JWT, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }).tracing).toEqual({
      url: 'http://collector:4318/v1/traces',
      protocol: 'http/protobuf',
      serviceName: 'gatehouse-runner',
      sampler: 'parentbased_always_on',
      samplerRatio: 1,
    });
    expect(
      cmsConfigFromEnv({
        ...JWT,
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://ignored:4318',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://collector/otlp/traces',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_SERVICE_NAME: 'cms-eu',
        OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
        OTEL_TRACES_SAMPLER_ARG: '0.25',
      }).tracing,
    ).toEqual({ url: 'https://collector/otlp/traces', protocol: 'http/json', serviceName: 'cms-eu', sampler: 'parentbased_traceidratio', samplerRatio: 0.25 });
  });

  it('refuses what cannot be meant', () => {
    const base = { OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' };
    expect(() => tracingConfigFromEnv({ ...base, OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' }, 'x')).toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL/);
    expect(() => tracingConfigFromEnv({ ...base, OTEL_TRACES_SAMPLER: 'sometimes' }, 'x')).toThrow(/OTEL_TRACES_SAMPLER/);
    expect(() => tracingConfigFromEnv({ ...base, OTEL_TRACES_SAMPLER_ARG: '2' }, 'x')).toThrow(/OTEL_TRACES_SAMPLER_ARG/);
    expect(() => tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' }, 'x')).toThrow(/OTEL_EXPORTER_OTLP_ENDPOINT/);
  });
});

describe('both OTLP/HTTP encodings reach the collector', () => {
  let collector: LocalCollector;
  let hop: Server;
  let hopUrl: string;
  const contentTypes: string[] = [];

  beforeAll(async () => {
    collector = await startLocalCollector();
    // Passes each export on to the collector as it came, noting its media type.
    hop = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (chunk: Buffer) => chunks.push(chunk));
      req.on('end', () => {
        contentTypes.push(String(req.headers['content-type']));
        fetch(`${collector.endpoint}${req.url}`, {
          method: 'POST',
          headers: { 'content-type': String(req.headers['content-type']) },
          body: Buffer.concat(chunks),
        })
          .then(async (answer) =>
            res.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? '' }).end(Buffer.from(await answer.arrayBuffer())),
          )
          .catch(() => res.writeHead(502).end());
      });
    });
    await new Promise<void>((resolve) => hop.listen(0, '127.0.0.1', resolve));
    hopUrl = `http://127.0.0.1:${(hop.address() as AddressInfo).port}`;
  }, 60_000);

  afterAll(async () => {
    if (hop) await new Promise((resolve) => hop.close(resolve));
    await collector?.stop();
  });

  for (const [protocol, mediaType] of [
    ['http/protobuf', 'application/x-protobuf'],
    ['http/json', 'application/json'],
  ] as const) {
    it(protocol, async () => {
      const config = tracingConfigFromEnv(
        { OTEL_EXPORTER_OTLP_ENDPOINT: hopUrl, OTEL_EXPORTER_OTLP_PROTOCOL: protocol, OTEL_SERVICE_NAME: `svc-${protocol}` },
        'x',
      )!;
      const tracing = await startTracing(config);
      const span = tracing.tracer.startSpan(`span over ${protocol}`, { attributes: { 'test.protocol': protocol, 'test.count': 3 } });
      span.end();
      await tracing.shutdown();
      const spans = await collector.until((all) => all.some((s) => s.name === `span over ${protocol}`));
      const received = spans.find((s) => s.name === `span over ${protocol}`)!;
      expect(received.attributes).toMatchObject({ 'test.protocol': protocol, 'test.count': 3 });
      expect(received.resource['service.name']).toBe(`svc-${protocol}`);
      expect(received.traceId).toBe(span.spanContext().traceId);
      expect(contentTypes.at(-1)).toBe(mediaType);
    });
  }

  it("the runner's chain: without traces no span and no hook; with them a request span, a plugin span, traceparent for the upstream", async () => {
    const seen: (CallContext['trace'] | undefined)[] = [];
    const plugin: Plugin<null> = {
      name: 'probe',
      parseConf: () => null,
      requestFilter(_conf, _request, _response, ctx) {
        seen.push(ctx.trace);
        ctx.trace?.attributes({ 'probe.decided': 'yes' });
      },
    };
    const call: HttpReqCallRequest = {
      id: 7,
      srcIp: new Uint8Array([127, 0, 0, 1]),
      method: 'GET',
      path: '/probe',
      args: [],
      headers: [{ name: 'authorization', value: 'Bearer secret-token-probe' }],
      confToken: 1,
    };
    const extra = { variable: async () => null, requestBody: async () => new Uint8Array(0), responseBody: async () => new Uint8Array(0) };
    const chain = [{ plugin, conf: null, route: 'probe-route' }];
    const log = pino({ level: 'silent' });

    // Off: the plugin gets no hook and the request goes on untouched.
    expect(await runRequestChain(chain, call, extra, log, null)).toEqual({ id: 7, action: null });
    expect(seen).toEqual([undefined]);

    const tracing = await startTracing(tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint, OTEL_SERVICE_NAME: 'probe-runner' }, 'x')!);
    const answer = await runRequestChain(chain, call, extra, log, new RunnerTraces(tracing, 60_000));
    await tracing.shutdown();
    expect(seen[1]).toBeDefined();
    const sent = answer.action?.type === 'rewrite' ? answer.action.headers : [];
    const traceparent = sent.find((h) => h.name === 'traceparent')?.value ?? '';
    expect(traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    const [, traceId, spanId] = traceparent.split('-');
    const spans = await collector.until((all) => all.filter((s) => s.traceId === traceId).length === 2);
    const request = spans.find((s) => s.spanId === spanId)!;
    expect(request).toMatchObject({ name: 'GET probe-route', parentSpanId: '' });
    const probe = spans.find((s) => s.traceId === traceId && s.name === 'probe')!;
    expect(probe.parentSpanId).toBe(spanId);
    expect(probe.attributes).toMatchObject({ 'gatehouse.plugin': 'probe', 'probe.decided': 'yes' });
    expect(collector.raw.join('\n')).not.toContain('secret-token-probe');
  });
});
