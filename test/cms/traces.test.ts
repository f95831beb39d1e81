// The CMS's traces (OTEL_*, cms/tracing.ts) reaching a real collector
// (dev/otelcol): a span per HTTP request, continuing the client's
// traceparent, with children for compile (the policy's tests inside it), the
// load check and the etcd write. No span holds the token or the policy.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHarness, type Cms, type Harness } from './harness.js';
import { startLocalCollector, type LocalCollector } from '../../dev/otelcol/index.js';
import { tracingConfigFromEnv } from '../../runtime/tracing.js';

const REGO = 'package team.authz\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user.role in data.valid_roles # marker-rego-9c1\n';
const TESTS = {
  'authz_test.rego': 'package team.authz_test\nimport rego.v1\nimport data.team.authz\n\ntest_admin if authz.allow with input as {"user": {"role": "admin"}}\n',
};

let harness: Harness;
let collector: LocalCollector;
let cms: Cms;

beforeAll(async () => {
  harness = await startHarness();
  collector = await startLocalCollector();
  const tracing = tracingConfigFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: collector.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' }, 'gatehouse-cms');
  cms = await harness.startCms({ tracing });
}, 60_000);

afterAll(async () => {
  await harness?.close();
  await collector?.stop();
});

describe('CMS traces', () => {
  it('a policy write: the request span with compile, tests, load check and etcd write under it', async () => {
    const traceId = '0af7651916cd43dd8448eb211c80319c';
    const clientSpan = 'b7ad6b7169203331';
    const body = JSON.stringify({ rego: REGO, data: { valid_roles: ['admin'] }, tests: TESTS });
    const res = await cms.request('PUT', '/policies/team-traced', {
      token: harness.tokens.admin,
      body,
      headers: { traceparent: `00-${traceId}-${clientSpan}-01` },
    });
    expect(res.status).toBe(201);

    const ofTrace = () => collector.spans.filter((s) => s.traceId === traceId);
    // The request span ends last, when the answer is out.
    await collector.until(() => ofTrace().some((s) => s.parentSpanId === clientSpan));
    const spans = ofTrace();
    const request = spans.find((s) => s.parentSpanId === clientSpan)!;
    expect(request.name).toBe('PUT /policies/:name');
    expect(request.resource['service.name']).toBe('gatehouse-cms');
    expect(request.attributes).toMatchObject({ 'http.request.method': 'PUT', 'http.route': '/policies/:name', 'http.response.status_code': 201 });

    const children = spans.filter((s) => s.parentSpanId === request.spanId).map((s) => s.name);
    expect(children.sort()).toEqual(['compile', 'etcd write', 'load check']);
    const compile = spans.find((s) => s.name === 'compile')!;
    expect(compile.attributes['gatehouse.policy.name']).toBe('team-traced');
    const tests = spans.find((s) => s.name === 'tests')!;
    expect(tests.parentSpanId).toBe(compile.spanId);

    const everything = collector.raw.join('\n');
    for (const secret of [harness.tokens.admin, 'marker-rego-9c1']) expect(everything).not.toContain(secret);
  });
});
