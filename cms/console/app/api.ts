// The CMS API as the console uses it, with the signed-in user's token. The
// token lives in this tab's sessionStorage only (gone when the tab closes).
const TOKEN_KEY = 'gatehouse.token';

export interface Answer<T> {
  status: number;
  etag: string | null;
  headers: Headers;
  body: T;
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function signIn(value: string): void {
  sessionStorage.setItem(TOKEN_KEY, value.trim());
}

export function signOut(): void {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** The claims of the token, read for display only: the CMS decides what is allowed. */
export function claims(): { sub?: string; role?: string; project?: string } {
  const part = token()?.split('.')[1];
  if (!part) return {};
  try {
    return JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/'))) as { sub?: string; role?: string; project?: string };
  } catch {
    return {};
  }
}

export async function api<T = unknown>(method: string, path: string, options: { body?: string; headers?: Record<string, string> } = {}): Promise<Answer<T>> {
  const response = await fetch(path, {
    method,
    headers: {
      ...(token() ? { authorization: `Bearer ${token()}` } : {}),
      ...(options.body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...options.headers,
    },
    ...(options.body !== undefined ? { body: options.body } : {}),
  });
  const text = await response.text();
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    // not JSON
  }
  return { status: response.status, etag: response.headers.get('etag'), headers: response.headers, body: body as T };
}

export interface Problem {
  title?: string;
  detail?: string;
  errors?: { file?: string; row?: number; col?: number; code?: string; message?: string }[];
  failures?: { name?: string; file?: string; row?: number; message?: string }[];
}
