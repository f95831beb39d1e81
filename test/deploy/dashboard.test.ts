// The Grafana dashboard (deploy/grafana/gatehouse.json) against the metrics a
// running stack exports: every metric its queries name is in a live scrape of
// the runner, the CMS, the decision API or APISIX's prometheus plugin.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { freePort } from '../../dev/apisix/index.js';
import { startTestStack, until, type TestStack } from '../support/stack.js';
import { repoRoot } from '../support/runner-process.js';
import { dashboardExprs, exposedMetrics, metricNames, PromqlError, unexportedMetrics } from './promql.js';

const dashboardPath = join(repoRoot, 'deploy', 'grafana', 'gatehouse.json');
const dashboard = () =>
  JSON.parse(readFileSync(dashboardPath, 'utf8')) as { panels: { title: string; type: string; datasource?: unknown; targets?: { expr: string }[] }[] } & Record<
    string,
    unknown
  >;
const routeIds = () =>
  (
    parse(readFileSync(join(repoRoot, 'apisix-conf', 'apisix.yaml'), 'utf8').replace(/#END\s*$/, '')) as {
      routes: { id: string; plugins?: Record<string, unknown> }[];
    }
  ).routes;

describe('metric names of PromQL', () => {
  it('are the selected metrics, not functions, label names, strings, durations or Grafana variables', () => {
    expect(
      metricNames('histogram_quantile(0.99, sum by (le, route) (rate(apisix_http_latency_bucket{type="request", route=~"rag|llm"}[$__rate_interval])))'),
    ).toEqual(['apisix_http_latency_bucket']);
    expect(metricNames('max by (policy) (gatehouse_policy_loaded_revision) - min by (policy) (gatehouse_policy_loaded_revision offset 5m) > bool 0')).toEqual([
      'gatehouse_policy_loaded_revision',
    ]);
    expect(metricNames('sum(rate(a_total[5m])) / on (job) group_left (x) b * 60 or vector(0)')).toEqual(['a_total', 'b']);
    expect(metricNames('{__name__="c_seconds", job="x"} unless d:recorded')).toEqual(['c_seconds', 'd:recorded']);
    expect(() => metricNames('rate_of(a_total[5m])')).toThrow(PromqlError);
  });

  it('a query naming a metric nobody exports is reported, with its panel', () => {
    const scrape = '# HELP good_total x\n# TYPE good_total counter\ngood_total 1\n# TYPE lat_seconds histogram\nlat_seconds_bucket{le="+Inf"} 1\n';
    const board = (expr: string) => ({ panels: [{ title: 'p', targets: [{ expr }] }] });
    expect(unexportedMetrics(board('rate(good_total[5m]) + histogram_quantile(0.9, rate(lat_seconds_bucket[5m])) + lat_seconds_count'), [scrape])).toEqual([]);
    expect(unexportedMetrics(board('rate(good_totl[5m])'), [scrape])).toEqual(['p: good_totl']);
    // _bucket only of a histogram; a counter has no _sum.
    expect(unexportedMetrics(board('good_total_sum'), [scrape])).toEqual(['p: good_total_sum']);
    // The real dashboard with one name misspelt, against its own names as the only export: the misspelt one is caught.
    const real = dashboard();
    const names = new Set(dashboardExprs(real).flatMap(({ expr }) => metricNames(expr)));
    const exported = [...names].map((name) => `# TYPE ${name.replace(/_bucket$/, '')} ${name.endsWith('_bucket') ? 'histogram' : 'counter'}`).join('\n');
    expect(unexportedMetrics(real, [exported])).toEqual([]);
    const target = real.panels.find((p) => p.targets?.some((t) => t.expr.includes('gatehouse_budget_refusals_total')))!;
    for (const t of target.targets!) t.expr = t.expr.replace('gatehouse_budget_refusals_total', 'gatehouse_budget_refusal_total');
    expect(unexportedMetrics(real, [exported])).toEqual([`${target.title}: gatehouse_budget_refusal_total`]);
  });
});

describe('the dashboard file', () => {
  it('asks for its Prometheus data source on import, and every query uses it', () => {
    const board = dashboard();
    expect((board.templating as { list: { name: string; type: string; query: string }[] }).list).toContainEqual(
      expect.objectContaining({ name: 'datasource', type: 'datasource', query: 'prometheus' }),
    );
    const queried = board.panels.filter((p) => p.targets);
    expect(queried.length).toBeGreaterThanOrEqual(10);
    for (const panel of queried) expect(panel.datasource, panel.title).toEqual({ type: 'prometheus', uid: '${datasource}' });
  });

  it('every route of apisix.yaml carries the prometheus plugin (request metrics for every route)', () => {
    for (const route of routeIds()) expect(route.plugins?.prometheus, route.id).toEqual({});
  });
});

describe('the dashboard against a running stack', () => {
  let test: TestStack;
  let runnerMetrics: number;

  beforeAll(async () => {
    runnerMetrics = await freePort();
    test = await startTestStack({ name: 'dashboard', ports: { runnerMetrics } });
    // A request on every route, allowed and denied, and a policy write: the counters have series.
    const admin = await test.keys.token({ sub: 'root', role: 'platform_admin' });
    const user = await test.keys.token({ sub: 'alice', role: 'admin', project: 'team-a' });
    const policy = JSON.stringify({ rego: 'package project.authz\n\ndefault allow = false\n\nallow {\n  input.user.role == "admin"\n}', data: {} });
    const put = await test.call('PUT', '/policies/team-a', { token: admin, body: policy, headers: { prefer: 'wait=10' } });
    expect(put.status, put.text).toBe(201);
    expect((await test.call('POST', '/rag/ask', { token: user, body: '{}' })).status).toBe(200);
    expect((await test.call('POST', '/rag/ask', { body: '{}' })).status).toBe(401);
    expect((await test.call('POST', '/v1/data/team-a/project/authz/allow', { token: user, body: '{"input":{"user":{"role":"admin"}}}' })).status).toBe(200);
    expect((await test.call('GET', '/console/')).status).toBe(200);
    // Refused (the test stack has no Vault for the llm route's vault plugin): counted all the same.
    expect((await test.call('POST', '/llm/v1/chat/completions', { body: '{}' })).status).toBeGreaterThanOrEqual(400);
  }, 120_000);

  afterAll(async () => {
    await test?.stop();
  });

  const scrape = async (url: string) => {
    const response = await fetch(url);
    expect(response.status, url).toBe(200);
    return response.text();
  };

  it("APISIX's /apisix/prometheus/metrics answers on its own port, with requests counted for every route", async () => {
    const url = test.stack.gateway.prometheusUrl;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/apisix\/prometheus\/metrics$/);
    expect(new URL(url!).port).not.toBe(String(test.stack.gateway.port));
    // The log phase counts a request after its answer: wait for the last one.
    const text = await until(
      () => scrape(url!),
      (t) => routeIds().every((route) => t.includes(`route="${route.id}"`)),
      'every route in apisix_http_status',
    );
    for (const route of routeIds()) expect(text, route.id).toMatch(new RegExp(`^apisix_http_status\\{code="\\d+",route="${route.id}"`, 'm'));
    expect(exposedMetrics(text).get('apisix_http_latency')).toBe('histogram');
  });

  it('every metric a query of the dashboard names is exported by the runner, the CMS, the decision API or APISIX', async () => {
    const urls = [
      `http://127.0.0.1:${runnerMetrics}/metrics`,
      `${test.stack.cmsUrl}/metrics`,
      `${test.stack.decisionUrl}/metrics`,
      test.stack.gateway.prometheusUrl!,
    ];
    // APISIX counts a request in its log phase, after the answer.
    const scrapes = await until(
      () => Promise.all(urls.map(scrape)),
      (s) => /^apisix_http_status\{/m.test(s[3]!),
      'APISIX to count requests',
    );
    expect(dashboardExprs(dashboard()).length).toBeGreaterThanOrEqual(20);
    expect(unexportedMetrics(dashboard(), scrapes)).toEqual([]);
    // Each scrape is its service's: the series the dashboard reads from each are there.
    const [runner, cms, decision, apisix] = scrapes.map(exposedMetrics);
    expect(runner!.has('gatehouse_decisions_total') && runner!.has('gatehouse_policy_propagation_seconds')).toBe(true);
    expect(cms!.has('gatehouse_cms_policy_writes_total')).toBe(true);
    expect(decision!.has('gatehouse_decision_api_decisions_total')).toBe(true);
    expect(apisix!.has('apisix_http_status')).toBe(true);
  });

  it("each Gatehouse service exports its process metrics (CPU, memory, event-loop lag) under its own metrics' prefix", async () => {
    const services = [
      { prefix: 'gatehouse_runner_', url: `http://127.0.0.1:${runnerMetrics}/metrics` },
      { prefix: 'gatehouse_cms_', url: `${test.stack.cmsUrl}/metrics` },
      { prefix: 'gatehouse_decision_api_', url: `${test.stack.decisionUrl}/metrics` },
    ];
    for (const { prefix, url } of services) {
      const exposed = exposedMetrics(await scrape(url));
      for (const name of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_max_seconds', 'nodejs_gc_duration_seconds'])
        expect(exposed.has(`${prefix}${name}`), `${url}: ${prefix}${name}`).toBe(true);
    }
  });
});
