/** Prometheus metrics of one CMS instance, in its own registry (several apps may share a process in tests). */
import { Counter, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from '../runtime/process-metrics.js';

export interface CmsMetrics {
  registry: Registry;
  httpRequests: Counter<'method' | 'route' | 'status'>;
  httpDuration: Histogram<'method' | 'route'>;
  compileDuration: Histogram<'outcome'>;
  etcdWriteDuration: Histogram<'operation'>;
  policyWrites: Counter<'operation' | 'outcome'>;
  budgetWrites: Counter<'operation' | 'outcome'>;
}

export function createCmsMetrics(): CmsMetrics {
  const registry = new Registry();
  collectProcessMetrics(registry, 'gatehouse_cms_');
  return {
    registry,
    httpRequests: new Counter({
      name: 'gatehouse_cms_http_requests_total',
      help: 'HTTP requests answered, by route template and status',
      labelNames: ['method', 'route', 'status'],
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: 'gatehouse_cms_http_request_duration_seconds',
      help: 'Time to answer an HTTP request',
      labelNames: ['method', 'route'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    compileDuration: new Histogram({
      name: 'gatehouse_cms_rego_compile_duration_seconds',
      help: 'Time to compile a policy with opa (parse and build)',
      labelNames: ['outcome'],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    etcdWriteDuration: new Histogram({
      name: 'gatehouse_cms_etcd_write_duration_seconds',
      help: 'Time spent in etcd for one policy write (reads and the transaction)',
      labelNames: ['operation'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
    policyWrites: new Counter({
      name: 'gatehouse_cms_policy_writes_total',
      help: 'Policy writes, by operation and outcome',
      labelNames: ['operation', 'outcome'],
      registers: [registry],
    }),
    budgetWrites: new Counter({
      name: 'gatehouse_cms_budget_writes_total',
      help: 'Budget writes, by operation and outcome',
      labelNames: ['operation', 'outcome'],
      registers: [registry],
    }),
  };
}
