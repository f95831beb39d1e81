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

type VaultClient = ReturnType<typeof nodeVault> & {
  startTokenRenewal(options?: { ttl?: number }): Promise<unknown>;
  stopTokenRenewal(): void;
  on(event: string, listener: (...args: unknown[]) => void): void;
};

export class VaultSession {
  private readonly client: VaultClient;
  private loggingIn: Promise<void> | null = null;
  private loggedIn = false;
  private stopped = false;

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
    }) as VaultClient;
    this.client.on('token:error:renew', (err) => {
      this.log.warn({ err: sanitize(err).message }, 'Vault token renewal failed; logging in again');
      this.loggedIn = false;
      void this.ensureLoggedIn().catch(() => undefined);
    });
    this.client.on('token:expired', () => {
      this.log.warn('Vault token can no longer be renewed; logging in again');
      this.loggedIn = false;
      void this.ensureLoggedIn().catch(() => undefined);
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
      let ttl: number | undefined;
      if (this.config.auth.kind === 'approle') {
        const response = (await this.client.approleLogin({
          mount_point: this.config.auth.mount,
          role_id: this.config.auth.roleId,
          secret_id: this.config.auth.secretId,
        })) as { auth?: { lease_duration?: number } };
        ttl = response.auth?.lease_duration;
        this.log.info({ ttlSeconds: ttl }, 'logged in to Vault with AppRole');
      }
      if (this.stopped) return;
      // Renewal is scheduled from the token's TTL; a root token (TTL 0) needs none.
      await this.client.startTokenRenewal(ttl && ttl > 0 ? { ttl } : {});
      this.loggedIn = true;
    } catch (error) {
      throw sanitize(error);
    }
  }

  /** Reads a KV v2 secret's current data. */
  async readKv2(mount: string, path: string): Promise<Record<string, unknown>> {
    await this.ensureLoggedIn();
    try {
      const response = (await this.client.read(`${mount}/data/${path}`)) as { data?: { data?: Record<string, unknown> } };
      const data = response.data?.data;
      if (!data || typeof data !== 'object') throw new VaultRequestError(`no data at ${mount}/${path}`, 404);
      return data;
    } catch (error) {
      const safe = error instanceof VaultRequestError ? error : sanitize(error);
      if (safe.status === 403) this.loggedIn = false; // a revoked or expired token: log in again next time
      throw safe;
    }
  }

  stop(): void {
    this.stopped = true;
    this.client.stopTokenRenewal();
  }
}
