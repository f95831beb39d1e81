// One authenticated connection to Vault per runner (node-vault): logs in with
// AppRole or uses the given token, renews the token before it expires, and
// logs in again when renewal fails. Errors that leave this module carry only
// a status and Vault's message, never a token or a request's headers.
import { Agent } from 'node:https';
import nodeVault from 'node-vault';
import type { Logger } from 'pino';
import type { VaultConfig } from './config.js';

export class VaultRequestError extends Error {
  override name = 'VaultRequestError';
  constructor(
    message: string,
    readonly status: number | null,
  ) {
    super(message);
  }
}

/** node-vault's errors hold the axios request, token header included: keep only what is safe. */
function sanitize(error: unknown): VaultRequestError {
  const e = error as { message?: unknown; response?: { statusCode?: number }; code?: string };
  const status = typeof e?.response?.statusCode === 'number' ? e.response.statusCode : null;
  const message = typeof e?.message === 'string' ? e.message.slice(0, 200) : 'Vault request failed';
  return new VaultRequestError(status === null && e?.code ? `${e.code}: ${message}` : message, status);
}

type VaultClient = ReturnType<typeof nodeVault>;

/** Renew when this fraction of the token's TTL has passed. */
const RENEW_AT_FRACTION = 0.75;
/**
 * Never wait longer than this between renewals: Vault's default TTLs (768 h)
 * overflow Node's timers (max ~24.8 days), and an early renewal costs nothing.
 */
const MAX_RENEW_DELAY_MS = 60 * 60 * 1000;
/** An AppRole token this close to its max TTL is replaced by a fresh login rather than renewed. */
const RELOGIN_BELOW_SECONDS = 30;

export class VaultSession {
  private readonly client: VaultClient;
  private loggingIn: Promise<void> | null = null;
  private loggedIn = false;
  private stopped = false;
  private renewTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly config: VaultConfig,
    private readonly log: Logger,
  ) {
    this.client = nodeVault({
      apiVersion: 'v1',
      endpoint: config.addr,
      ...(config.auth.kind === 'token' ? { token: config.auth.token } : {}),
      ...(config.namespace ? { namespace: config.namespace } : {}),
      requestOptions: {
        timeout: config.timeoutMs,
        ...(config.caCert ? { httpsAgent: new Agent({ ca: config.caCert }) } : {}),
      },
    });
  }

  /** Logs in (AppRole) or checks the token, then keeps it renewed. */
  ensureLoggedIn(): Promise<void> {
    if (this.loggedIn) return Promise.resolve();
    this.loggingIn ??= this.login().finally(() => (this.loggingIn = null));
    return this.loggingIn;
  }

  private async login(): Promise<void> {
    try {
      let ttl: number;
      if (this.config.auth.kind === 'approle') {
        const response = (await this.client.approleLogin({
          mount_point: this.config.auth.mount,
          role_id: this.config.auth.roleId,
          secret_id: this.config.auth.secretId,
        })) as { auth?: { lease_duration?: number } };
        ttl = response.auth?.lease_duration ?? 0;
        this.log.info({ ttlSeconds: ttl }, 'logged in to Vault with AppRole');
      } else {
        const self = (await this.client.tokenLookupSelf()) as { data?: { ttl?: number } };
        ttl = self.data?.ttl ?? 0;
      }
      if (this.stopped) return;
      this.loggedIn = true;
      this.scheduleRenewal(ttl); // a root token (TTL 0) needs none
    } catch (error) {
      throw sanitize(error);
    }
  }

  private scheduleRenewal(ttlSeconds: number): void {
    if (this.renewTimer) clearTimeout(this.renewTimer);
    this.renewTimer = null;
    if (ttlSeconds <= 0 || this.stopped) return;
    const delay = Math.min(ttlSeconds * RENEW_AT_FRACTION * 1000, MAX_RENEW_DELAY_MS);
    this.renewTimer = setTimeout(() => void this.renew(), delay);
    this.renewTimer.unref();
  }

  private async renew(): Promise<void> {
    try {
      const response = (await this.client.tokenRenewSelf()) as { auth?: { lease_duration?: number; renewable?: boolean } };
      const ttl = response.auth?.lease_duration ?? 0;
      // Renewal past the token's max TTL still succeeds, with a shorter TTL:
      // near the end, an AppRole client logs in again instead.
      if (this.config.auth.kind === 'approle' && (ttl < RELOGIN_BELOW_SECONDS || response.auth?.renewable === false)) {
        this.relogin('the token is near its max TTL');
        return;
      }
      this.scheduleRenewal(ttl);
    } catch (error) {
      this.log.warn({ err: sanitize(error).message }, 'Vault token renewal failed');
      this.relogin('renewal failed');
    }
  }

  private relogin(reason: string): void {
    if (this.stopped) return;
    this.log.info({ reason }, 'logging in to Vault again');
    this.loggedIn = false;
    void this.ensureLoggedIn().catch((err: Error) => {
      this.log.warn({ err: err.message }, 'Vault login failed; retrying on the next request');
    });
  }

  /** Reads a KV v2 secret's current data. */
  async readKv2(mount: string, path: string): Promise<Record<string, unknown>> {
    return this.call(async () => {
      const response = (await this.client.read(`${mount}/data/${path}`)) as { data?: { data?: Record<string, unknown> } };
      const data = response.data?.data;
      if (!data || typeof data !== 'object') throw new VaultRequestError(`no data at ${mount}/${path}`, 404);
      return data;
    });
  }

  /**
   * Signs `input` with transit key `key` (POST <mount>/sign/<key>): the
   * signature as Vault answers it, "vault:v<version>:<base64>". The key never
   * leaves Vault.
   */
  async transitSign(mount: string, key: string, input: Buffer): Promise<string> {
    return this.call(async () => {
      const response = (await this.client.write(`${mount}/sign/${key}`, { input: input.toString('base64') })) as { data?: { signature?: unknown } };
      const signature = response.data?.signature;
      if (typeof signature !== 'string') throw new VaultRequestError(`no signature from ${mount}/sign/${key}`, null);
      return signature;
    });
  }

  /** The public keys of transit key `key` by version (GET <mount>/keys/<key>), base64 as Vault gives them. */
  async transitPublicKeys(mount: string, key: string): Promise<Map<number, string>> {
    return this.call(async () => {
      const response = (await this.client.read(`${mount}/keys/${key}`)) as { data?: { keys?: Record<string, { public_key?: unknown }> } };
      const keys = new Map<number, string>();
      for (const [version, entry] of Object.entries(response.data?.keys ?? {})) {
        if (typeof entry?.public_key === 'string') keys.set(Number(version), entry.public_key);
      }
      return keys;
    });
  }

  /** A request on a logged-in session; its errors made safe, a 403 taken as a token to renew. */
  private async call<T>(request: () => Promise<T>): Promise<T> {
    await this.ensureLoggedIn();
    try {
      return await request();
    } catch (error) {
      const safe = error instanceof VaultRequestError ? error : sanitize(error);
      if (safe.status === 403) this.loggedIn = false; // a revoked or expired token: log in again next time
      throw safe;
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.renewTimer) clearTimeout(this.renewTimer);
  }
}
