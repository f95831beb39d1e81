// The CMS's HTTP API as the policy CLI uses it: every answer kept whole
// (status, headers, body), problems turned into readable errors.
import { request } from 'undici';
import { isValidPolicyName } from '../policy/store/names.js';

export interface CmsAnswer {
  status: number;
  headers: Record<string, string>;
  text: string;
}

export class CmsError extends Error {
  constructor(
    readonly status: number,
    readonly problem: { title?: string; detail?: string; errors?: unknown[]; failures?: unknown[] } | null,
    message: string,
  ) {
    super(message);
  }
}

export class CmsClient {
  constructor(
    private readonly baseUrl: string,
    private readonly token: string,
  ) {}

  async call(method: 'GET' | 'PUT' | 'POST' | 'DELETE', path: string, options: { body?: string; headers?: Record<string, string> } = {}): Promise<CmsAnswer> {
    const response = await request(new URL(path, this.baseUrl), {
      method,
      headers: {
        authorization: `Bearer ${this.token}`,
        ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...options.headers,
      },
      ...(options.body !== undefined ? { body: options.body } : {}),
      headersTimeout: 90_000,
    });
    const text = await response.body.text();
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(response.headers)) if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(', ') : value;
    return { status: response.statusCode, headers, text };
  }

  /** The answer when its status is one of `ok`; otherwise a CmsError with the problem's words. */
  async expect(
    method: 'GET' | 'PUT' | 'POST' | 'DELETE',
    path: string,
    ok: number[],
    options: { body?: string; headers?: Record<string, string> } = {},
  ): Promise<CmsAnswer> {
    const answer = await this.call(method, path, options);
    if (ok.includes(answer.status)) return answer;
    let problem: CmsError['problem'] = null;
    try {
      problem = JSON.parse(answer.text) as CmsError['problem'];
    } catch {
      // not a problem document
    }
    throw new CmsError(
      answer.status,
      problem,
      `${method} ${path}: ${answer.status} ${problem?.title ?? ''}${problem?.detail ? `: ${problem.detail}` : ''}`.trim(),
    );
  }

  /** Every policy name the caller may see (all pages). */
  async names(): Promise<string[]> {
    const names: string[] = [];
    let token: string | undefined;
    do {
      const answer = await this.expect('GET', `/policies?limit=1000${token ? `&page_token=${encodeURIComponent(token)}` : ''}`, [200]);
      const page = JSON.parse(answer.text) as { policies: { name: unknown }[]; next_page_token?: string };
      for (const { name } of page.policies) {
        // A name becomes a folder and a URL path: one the CMS itself would never accept is refused.
        if (typeof name !== 'string' || !isValidPolicyName(name))
          throw new Error(`the CMS listed ${JSON.stringify(name)}, which is not a policy name: refused, nothing written`);
        names.push(name);
      }
      token = page.next_page_token;
    } while (token);
    return names;
  }
}

/** The version an ETag names ("3" -> 3). */
export function versionOf(etag: string | undefined): number {
  const version = Number(String(etag ?? '').replace(/[^0-9]/g, ''));
  if (!Number.isSafeInteger(version) || version < 1) throw new Error(`the CMS sent no usable ETag (${JSON.stringify(etag)})`);
  return version;
}
