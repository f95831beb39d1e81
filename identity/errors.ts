/**
 * Why a bearer token was refused. `publicReason` is written for the caller
 * (a 401 body or WWW-Authenticate error_description): it names the failed
 * check and never echoes the token or any claim value.
 */
export type AuthenticationFailure =
  | 'missing_token' // no Authorization header, or not a Bearer one
  | 'malformed_token' // not a compact JWS
  | 'algorithm_not_allowed' // alg outside the allow-list, including "none"
  | 'missing_key_id' // no kid in the header: we never try every key
  | 'unknown_key' // kid not in the JWKS, even after a refresh
  | 'bad_signature'
  | 'expired'
  | 'not_yet_valid'
  | 'wrong_issuer'
  | 'wrong_audience'
  | 'invalid_claims' // a required claim is missing or of the wrong type
  | 'missing_subject'
  | 'keys_unavailable'; // the JWKS could not be read or fetched: not the caller's fault

export class AuthenticationError extends Error {
  override readonly name = 'AuthenticationError';

  constructor(
    readonly failure: AuthenticationFailure,
    readonly publicReason: string,
    options?: { cause?: unknown },
  ) {
    super(`${failure}: ${publicReason}`, options);
  }

  /** True when the fault is on our side (keys unreachable), so a 503 fits better than a 401. */
  get isServerSide(): boolean {
    return this.failure === 'keys_unavailable';
  }
}
