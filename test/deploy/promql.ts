// The metric names a PromQL expression selects, and the metric names a
// Prometheus text exposition declares: enough to check that a dashboard's
// queries name metrics something exports. Unknown function names are an
// error rather than a guess.

const AGGREGATIONS = ['sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile', 'limitk', 'limit_ratio'];
// Prometheus 2.x/3.x functions (docs: querying/functions).
const FUNCTIONS = [
  'abs',
  'absent',
  'absent_over_time',
  'acos',
  'acosh',
  'asin',
  'asinh',
  'atan',
  'atanh',
  'avg_over_time',
  'ceil',
  'changes',
  'clamp',
  'clamp_max',
  'clamp_min',
  'cos',
  'cosh',
  'count_over_time',
  'day_of_month',
  'day_of_week',
  'day_of_year',
  'days_in_month',
  'deg',
  'delta',
  'deriv',
  'exp',
  'floor',
  'histogram_avg',
  'histogram_count',
  'histogram_fraction',
  'histogram_quantile',
  'histogram_stddev',
  'histogram_stdvar',
  'histogram_sum',
  'holt_winters',
  'double_exponential_smoothing',
  'hour',
  'idelta',
  'increase',
  'irate',
  'label_join',
  'label_replace',
  'last_over_time',
  'ln',
  'log10',
  'log2',
  'mad_over_time',
  'max_over_time',
  'min_over_time',
  'minute',
  'month',
  'pi',
  'predict_linear',
  'present_over_time',
  'quantile_over_time',
  'rad',
  'rate',
  'resets',
  'round',
  'scalar',
  'sgn',
  'sin',
  'sinh',
  'sort',
  'sort_desc',
  'sort_by_label',
  'sort_by_label_desc',
  'sqrt',
  'stddev_over_time',
  'stdvar_over_time',
  'sum_over_time',
  'tan',
  'tanh',
  'time',
  'timestamp',
  'vector',
  'year',
];
const CALLABLE = new Set([...AGGREGATIONS, ...FUNCTIONS]);
// Words that are never metric names: operators, modifiers, the float literals.
const KEYWORDS = new Set(['and', 'or', 'unless', 'atan2', 'bool', 'offset', 'inf', 'nan']);
// Modifiers whose parenthesised list holds label names.
const LABEL_LISTS = /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/g;

export class PromqlError extends Error {}

/** The metric names `expr` selects (bare, before `{` or `[`, or as `{__name__="..."}`); Grafana's $variables are left out. */
export function metricNames(expr: string): string[] {
  const names = new Set<string>();
  let rest = expr
    // Grafana's variables: $__rate_interval, ${datasource}, $instance.
    .replace(/\$\{[^}]*\}|\$\w+/g, ' 1m ')
    // Label lists of by (...), on (...) and the like.
    .replace(LABEL_LISTS, ' ');
  // Label matchers: a __name__ matcher names a metric; the rest are label names and strings.
  rest = rest.replace(/\{([^}]*)\}/g, (_whole, matchers: string) => {
    for (const m of matchers.matchAll(/__name__\s*=\s*"([^"]*)"/g)) names.add(m[1]!);
    return ' ';
  });
  rest = rest
    // Ranges and subqueries: [5m], [1h:30s].
    .replace(/\[[^\]]*\]/g, ' ')
    // Strings left (label_replace's arguments) and numbers, durations included (1e3, 0x1f, 5m).
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, ' ')
    .replace(/(?<![\w:])(?:0x[0-9a-f]+|\d+(?:\.\d+)?(?:e[+-]?\d+)?(?:ms|[smhdwy])*)(?![\w:])/gi, ' ');
  for (const match of rest.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    const [, word, call] = match as unknown as [string, string, string | undefined];
    if (call) {
      if (!CALLABLE.has(word)) throw new PromqlError(`unknown PromQL function "${word}" in ${expr}`);
      continue;
    }
    if (KEYWORDS.has(word.toLowerCase()) || CALLABLE.has(word)) continue;
    names.add(word);
  }
  return [...names];
}

/** The metric names a Prometheus text exposition declares (# TYPE) or has samples of. */
export function exposedMetrics(text: string): Map<string, string> {
  const metrics = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)/.exec(line);
    if (type) metrics.set(type[1]!, type[2]!);
    else {
      const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{\s]/.exec(line);
      if (sample && !metrics.has(sample[1]!)) metrics.set(sample[1]!, 'untyped');
    }
  }
  return metrics;
}

/** Whether `name` is a series of an exposed metric: the metric itself, or a histogram's (summary's) _bucket, _sum, _count. */
export function isExposed(name: string, exposed: Map<string, string>): boolean {
  if (exposed.has(name)) return true;
  const base = /^(.*)_(bucket|sum|count)$/.exec(name);
  if (!base) return false;
  const type = exposed.get(base[1]!);
  return type === 'histogram' || (type === 'summary' && base[2] !== 'bucket');
}

interface Panel {
  title?: string;
  targets?: { expr?: string }[];
  panels?: Panel[];
}

/** Every PromQL expression of a Grafana dashboard, with its panel's title (rows' panels included). */
export function dashboardExprs(dashboard: { panels?: Panel[] }): { panel: string; expr: string }[] {
  const out: { panel: string; expr: string }[] = [];
  const visit = (panels: Panel[] = []) => {
    for (const panel of panels) {
      for (const target of panel.targets ?? []) if (target.expr) out.push({ panel: panel.title ?? '?', expr: target.expr });
      visit(panel.panels);
    }
  };
  visit(dashboard.panels);
  return out;
}

/** The dashboard's queries naming a metric none of the scrapes exposes: "panel: metric" each. */
export function unexportedMetrics(dashboard: { panels?: Panel[] }, scrapes: string[]): string[] {
  const exposed = new Map<string, string>();
  for (const scrape of scrapes) for (const [name, type] of exposedMetrics(scrape)) exposed.set(name, type);
  const missing: string[] = [];
  for (const { panel, expr } of dashboardExprs(dashboard)) {
    for (const name of metricNames(expr)) if (!isExposed(name, exposed)) missing.push(`${panel}: ${name}`);
  }
  return missing;
}
