/**
 * GET /usage/{project} against a real etcd and the real CMS app: records
 * written with budget/usage.ts addUsage over several hours and models, read
 * back for explicit ranges, the default (the last day) and bad parameters.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { emptyUsage, HOUR_MS, type UsageRecord } from '../../budget/keys.js';
import { addUsage } from '../../budget/usage.js';
import { parseUsageTime } from '../../cms/routes/budgets.js';
import { startHarness, type Cms, type Harness, type Response } from './harness.js';

let harness: Harness;
let cms: Cms;

const iso = (ms: number) => new Date(ms).toISOString();
const record = (requests: number, prompt: number, completion: number, unsettled = 0): UsageRecord => ({
  requests,
  prompt_tokens: prompt,
  completion_tokens: completion,
  charged_tokens: prompt + completion + unsettled * 100,
  unsettled,
});

/** Midnight UTC thirty days ago, its hours as written below (relative to now: ranges up to now stay under 400 days). */
const DAY = Math.floor(Date.now() / (24 * HOUR_MS)) * 24 * HOUR_MS - 30 * 24 * HOUR_MS;
/** The date of a time, YYYY-MM-DD. */
const date = (ms: number) => iso(ms).slice(0, 10);
const written: Array<{ project: string; hour: number; model: string; usage: UsageRecord }> = [
  { project: 'team-a', hour: DAY + 0 * HOUR_MS, model: 'gpt-4o', usage: record(2, 100, 50) },
  { project: 'team-a', hour: DAY + 0 * HOUR_MS, model: 'llama-3', usage: record(1, 10, 5) },
  { project: 'team-a', hour: DAY + 1 * HOUR_MS, model: 'gpt-4o', usage: record(3, 300, 30, 1) },
  { project: 'team-a', hour: DAY + 5 * HOUR_MS, model: 'org/model@v1', usage: record(4, 40, 4) },
  { project: 'team-a', hour: DAY + 23 * HOUR_MS, model: 'llama-3', usage: record(5, 500, 0) },
  { project: 'team-a', hour: DAY + 24 * HOUR_MS, model: 'llama-3', usage: record(6, 600, 60) },
  { project: 'team-b', hour: DAY + 1 * HOUR_MS, model: 'gpt-4o', usage: record(100, 1, 1) },
];

/** What the records in [fromHour, toHour) of team-a add up to. */
function expected(fromHour: number, toHour: number) {
  const rows = written.filter((w) => w.project === 'team-a' && w.hour >= fromHour && w.hour < toHour);
  const total = emptyUsage();
  const models: Record<string, UsageRecord> = {};
  for (const row of rows) {
    for (const key of Object.keys(total) as (keyof UsageRecord)[]) {
      total[key] += row.usage[key];
      (models[row.model] ??= emptyUsage())[key] += row.usage[key];
    }
  }
  const hours = rows
    .map((row) => ({ hour: iso(row.hour), model: row.model, ...row.usage }))
    .sort((a, b) => a.hour.localeCompare(b.hour) || encodeURIComponent(a.model).localeCompare(encodeURIComponent(b.model)));
  return { project: 'team-a', from: iso(fromHour), to: iso(toHour), total, models, hours };
}

beforeAll(async () => {
  harness = await startHarness();
  cms = await harness.startCms();
  for (const w of written) {
    // Each record in two parts: usage adds up.
    const half = { ...emptyUsage(), requests: 1 };
    await addUsage(harness.etcdClient, w.project, w.hour, w.model, half);
    await addUsage(harness.etcdClient, w.project, w.hour, w.model, { ...w.usage, requests: w.usage.requests - 1 });
  }
});
afterAll(async () => {
  await harness?.close();
});

const admin = () => ({ token: harness.tokens.admin });
const usage = (query: string, token = harness.tokens.admin) => cms.request('GET', `/usage/team-a${query}`, { token });

function expectBadQuery(response: Response): void {
  expect(response.status, response.text).toBe(400);
  expect(response.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(response.json()).toMatchObject({ status: 400, type: 'urn:gatehouse:problem:invalid-usage-query', detail: expect.any(String) });
}

describe('ranges', () => {
  it("a whole day: totals, per model, per hour and model in time order; another project's usage is not in it", async () => {
    const response = await usage(`?from=${iso(DAY)}&to=${iso(DAY + 24 * HOUR_MS)}`);
    expect(response.status).toBe(200);
    expect(response.headers['content-type']).toMatch(/^application\/json/);
    expect(response.json()).toEqual(expected(DAY, DAY + 24 * HOUR_MS));
    expect(response.json().total.requests).toBe(15);
    expect(Object.keys(response.json().models).sort()).toEqual(['gpt-4o', 'llama-3', 'org/model@v1']);
  });

  it('the hours that start in [from, to): times inside an hour round from down and to up', async () => {
    // 01:30 to 05:10 counts the hours starting 01:00 to 05:00.
    const body = (await usage(`?from=${iso(DAY + 1.5 * HOUR_MS)}&to=${iso(DAY + 5 * HOUR_MS + 600_000)}`)).json();
    expect(body).toEqual(expected(DAY + HOUR_MS, DAY + 6 * HOUR_MS));
    expect(body.hours.map((h: { hour: string }) => h.hour)).toEqual([iso(DAY + HOUR_MS), iso(DAY + 5 * HOUR_MS)]);
    // to on an hour boundary excludes that hour.
    expect((await usage(`?from=${iso(DAY)}&to=${iso(DAY + 5 * HOUR_MS)}`)).json()).toEqual(expected(DAY, DAY + 5 * HOUR_MS));
    expect((await usage(`?from=${iso(DAY + 2 * HOUR_MS)}&to=${iso(DAY + 3 * HOUR_MS)}`)).json()).toEqual(expected(DAY + 2 * HOUR_MS, DAY + 3 * HOUR_MS));
  });

  it('dates, offsets (as %2B, or a + that arrived as a space) and fractions are read as the instants they name', async () => {
    const day = date(DAY);
    expect((await usage(`?from=${day}&to=${date(DAY + 24 * HOUR_MS)}`)).json()).toEqual(expected(DAY, DAY + 24 * HOUR_MS));
    // 02:00+01:00 is 01:00Z.
    expect((await usage(`?from=${day}T02:00:00%2B01:00&to=${day}T03:00:00%2B01:00`)).json()).toEqual(expected(DAY + HOUR_MS, DAY + 2 * HOUR_MS));
    expect((await usage(`?from=${day}T02:00:00+01:00&to=${day}T03:00:00+01:00`)).json()).toEqual(expected(DAY + HOUR_MS, DAY + 2 * HOUR_MS));
    expect((await usage(`?from=${date(DAY - HOUR_MS)}T23:00:00-01:00&to=${day}T00:59:59.999999-01:00`)).json()).toEqual(expected(DAY, DAY + 2 * HOUR_MS));
  });

  it('long ranges: every hour counted once, up to 400 days', async () => {
    const from = DAY - 398 * 24 * HOUR_MS;
    const body = (await usage(`?from=${iso(from)}&to=${iso(DAY + 25 * HOUR_MS)}`)).json();
    expect(body).toEqual(expected(from, DAY + 25 * HOUR_MS));
    expect(body.total.requests).toBe(21);
  });

  it('group=day: the same totals, added up per UTC day and model; group=hour is the default', async () => {
    const range = `from=${iso(DAY + HOUR_MS)}&to=${iso(DAY + 25 * HOUR_MS)}`;
    const byHour = expected(DAY + HOUR_MS, DAY + 25 * HOUR_MS);
    expect((await usage(`?${range}&group=hour`)).json()).toEqual(byHour);
    const body = (await usage(`?${range}&group=day`)).json();
    const { hours: _hours, ...totals } = byHour;
    const sum = (...records: UsageRecord[]) =>
      records.reduce((a, b) => ({
        requests: a.requests + b.requests,
        prompt_tokens: a.prompt_tokens + b.prompt_tokens,
        completion_tokens: a.completion_tokens + b.completion_tokens,
        charged_tokens: a.charged_tokens + b.charged_tokens,
        unsettled: a.unsettled + b.unsettled,
      }));
    // Day one from 01:00 (gpt-4o once, org/model@v1, llama-3 at 23:00), day two's first hour (llama-3).
    expect(body).toEqual({
      ...totals,
      days: [
        { day: date(DAY), model: 'gpt-4o', ...record(3, 300, 30, 1) },
        { day: date(DAY), model: 'org/model@v1', ...record(4, 40, 4) },
        { day: date(DAY), model: 'llama-3', ...record(5, 500, 0) },
        { day: date(DAY + 24 * HOUR_MS), model: 'llama-3', ...record(6, 600, 60) },
      ],
    });
    expect(sum(...body.days.map(({ day: _d, model: _m, ...r }: { day: string; model: string } & UsageRecord) => r))).toEqual(totals.total);
  });

  it('a project without usage has zeros', async () => {
    const response = await cms.request('GET', `/usage/quiet?from=${iso(DAY)}&to=${iso(DAY + HOUR_MS)}`, admin());
    expect(response.status).toBe(200);
    expect(response.json()).toEqual({ project: 'quiet', from: iso(DAY), to: iso(DAY + HOUR_MS), total: emptyUsage(), models: {}, hours: [] });
  });
});

describe('defaults', () => {
  it('without from and to: the last 24 hours, this hour included', async () => {
    const now = Date.now();
    const hour = Math.floor(now / HOUR_MS) * HOUR_MS;
    // Well inside the default range, and well outside it, whenever the hour turns during the test.
    await addUsage(harness.etcdClient, 'team-now', hour, 'gpt-4o', record(1, 1, 1));
    await addUsage(harness.etcdClient, 'team-now', hour - 2 * HOUR_MS, 'gpt-4o', record(2, 2, 2));
    await addUsage(harness.etcdClient, 'team-now', hour - 30 * HOUR_MS, 'gpt-4o', record(40, 4, 4));
    const body = (await cms.request('GET', '/usage/team-now', admin())).json();
    expect(body.total.requests).toBe(3);
    expect(body.hours.map((h: { hour: string }) => h.hour)).toEqual([iso(hour - 2 * HOUR_MS), iso(hour)]);
    const from = Date.parse(body.from);
    const to = Date.parse(body.to);
    expect(to - from).toBe(25 * HOUR_MS); // 24 hours back from now, rounded out to whole hours
    expect(Math.abs(to - (hour + HOUR_MS))).toBeLessThanOrEqual(HOUR_MS);
  });

  it('only from: up to now; only to: the day before it', async () => {
    const onlyTo = (await usage(`?to=${iso(DAY + 2 * HOUR_MS)}`)).json();
    expect(onlyTo).toEqual(expected(DAY - 22 * HOUR_MS, DAY + 2 * HOUR_MS));
    const onlyFrom = (await usage(`?from=${iso(DAY + 23 * HOUR_MS)}`)).json();
    expect(onlyFrom.total.requests).toBe(11);
    expect(Date.parse(onlyFrom.to)).toBeGreaterThanOrEqual(Date.now() - HOUR_MS);
  });
});

describe('bad parameters: 400 problem+json', () => {
  const bad: Array<[string, string]> = [
    ['a word', '?from=yesterday'],
    ['epoch milliseconds', `?from=${DAY}`],
    ['an empty value', '?from='],
    ['no time zone', `?from=${date(DAY)}T00:00:00`],
    ['February 30th', '?from=2025-02-30T00:00:00Z&to=2025-03-11T00:00:00Z'],
    ['month 13', '?from=2025-13-01'],
    ['hour 24', `?from=${date(DAY)}T24:00:00Z`],
    ['a leap second', `?from=${date(DAY)}T23:59:60Z`],
    ['an offset of 24 hours', `?from=${date(DAY)}T00:00:00%2B24:00`],
    ['before 1970', '?from=1969-12-31T00:00:00Z&to=1970-01-01T01:00:00Z'],
    ['after 2199', '?from=2200-01-01&to=2200-01-02'],
    ['from after to', `?from=${iso(DAY + HOUR_MS)}&to=${iso(DAY)}`],
    ['from equal to to', `?from=${iso(DAY)}&to=${iso(DAY)}`],
    ['more than 400 days', `?from=${iso(DAY - 400 * 24 * HOUR_MS - 1000)}&to=${iso(DAY)}`],
    ['from in the future without to', `?from=${iso(Date.now() + 48 * HOUR_MS)}`],
    ['from given twice', `?from=${iso(DAY)}&from=${iso(DAY)}&to=${iso(DAY + HOUR_MS)}`],
    ['an unknown parameter', `?since=${date(DAY)}`],
    ['an unknown parameter beside good ones', `?from=${iso(DAY)}&to=${iso(DAY + HOUR_MS)}&model=gpt-4o`],
    ['a group other than hour or day', `?from=${iso(DAY)}&to=${iso(DAY + HOUR_MS)}&group=week`],
    ['group given twice', `?from=${iso(DAY)}&to=${iso(DAY + HOUR_MS)}&group=day&group=day`],
  ];
  for (const [what, query] of bad) {
    it(what, async () => {
      expectBadQuery(await usage(query));
    });
  }

  it('exactly 400 days is accepted', async () => {
    expect((await usage(`?from=${iso(DAY - 400 * 24 * HOUR_MS)}&to=${iso(DAY)}`)).status).toBe(200);
  });

  it('an invalid project is 400, "platform" too; other paths and methods are refused', async () => {
    for (const project of ['platform', 'Team-A', 'a_b']) {
      const response = await cms.request('GET', `/usage/${project}`, admin());
      expect(response.status).toBe(400);
      expect(response.json().type).toBe('urn:gatehouse:problem:invalid-project-name');
    }
    expect((await cms.request('GET', '/usage/team-a/gpt-4o', admin())).status).toBe(400);
    const put = await cms.request('PUT', '/usage/team-a', { ...admin(), body: '{}' });
    expect(put.status).toBe(405);
    expect(put.headers.allow).toBe('GET, HEAD');
  });

  it('a usage read writes nothing', async () => {
    const before = await harness.budgetSnapshot();
    await usage(`?from=${iso(DAY)}&to=${iso(DAY + HOUR_MS)}`);
    await usage('?from=nonsense');
    expect(await harness.budgetSnapshot()).toEqual(before);
  });
});

describe('who may read usage', () => {
  it("platform admins and the project's own users; others 403, no token 401, before any parameter is looked at", async () => {
    const query = `?from=${iso(DAY)}&to=${iso(DAY + 24 * HOUR_MS)}`;
    expect((await usage(query, harness.tokens.admin)).status).toBe(200);
    const own = await usage(query, harness.tokens.teamA);
    expect(own.status).toBe(200);
    expect(own.json()).toEqual(expected(DAY, DAY + 24 * HOUR_MS));
    for (const q of [query, '?from=garbage']) {
      const other = await usage(q, harness.tokens.teamB);
      expect(other.status).toBe(403);
      expect(other.json()).toMatchObject({ type: 'urn:gatehouse:problem:forbidden' });
      const anonymous = await cms.request('GET', `/usage/team-a${q}`);
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers['www-authenticate']).toMatch(/^Bearer realm="gatehouse"/);
    }
    expect((await usage(query, await harness.keys.expiredToken({ sub: 'tom', role: 'project_user', project: 'team-a' }))).status).toBe(401);
    expect((await usage(query, await harness.keys.badSignatureToken({ sub: 'tom', role: 'project_user', project: 'team-a' }))).status).toBe(401);
  });
});

describe('parseUsageTime', () => {
  it('reads RFC 3339 times and dates, and nothing else', () => {
    expect(parseUsageTime('2025-03-10T01:02:03Z')).toBe(Date.UTC(2025, 2, 10, 1, 2, 3));
    expect(parseUsageTime('2025-03-10t01:02:03.5z')).toBe(Date.UTC(2025, 2, 10, 1, 2, 3, 500));
    expect(parseUsageTime('2024-02-29')).toBe(Date.UTC(2024, 1, 29));
    expect(parseUsageTime('2025-03-10T01:02:03+05:30')).toBe(Date.UTC(2025, 2, 9, 19, 32, 3));
    expect(parseUsageTime('2025-03-10T01:02Z')).toBe(Date.UTC(2025, 2, 10, 1, 2));
    // Years below 100 are years, not 1900 + n (Date.UTC's reading).
    expect(parseUsageTime('0050-01-01')).toBe(-60589296000000);
    for (const text of [
      '2025-02-29',
      '2025-04-31',
      '2025-03-10 01:02:03Z',
      '2025-3-10',
      '+2025-03-10',
      '2025-03-10T01:02:03+0530',
      ' 2025-03-10',
      '2025-03-10T01Z',
    ]) {
      expect(parseUsageTime(text), text).toBeNull();
    }
  });
});
