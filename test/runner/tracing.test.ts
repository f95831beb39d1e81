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
      const tracing = startTracing(config);
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
});
