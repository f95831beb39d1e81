/**
 * Demo content for the local stack (`npm start`): a platform policy, a demo
 * project policy, demo signing keys and tokens, and example curl commands.
 *
 *   const identity = await createDemoIdentity(dir);           // JWKS file + tokens
 *   await seedDemoPolicies({ etcdEndpoints, opaPath });       // only writes what is absent
 *   console.log(demoCurlCommands('http://127.0.0.1:9080', identity.tokens));
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { PLATFORM_POLICY_NAME, PolicyStore } from '../policy/store/index.js';
import { pemFileSigner } from '../policy/signing/index.js';
import { createEtcdClient } from '../etcd/index.js';
import type { IdentityConfig } from '../identity/index.js';
import { RegoCompiler, policySubmission } from '../cms/rego-compiler.js';

/** The seed's example policy object (section 4.1), verbatim: Rego v0 syntax. */
export const EXAMPLE_POLICY = {
  rego: 'package project.authz\n\ndefault allow = false\n\nallow {\n  input.user.role == "admin"\n}',
  data: { valid_roles: ['admin', 'viewer'] },
};

export const DEMO_PROJECT = 'demo';

/** Platform policy: every gateway request needs a verified caller; /internal/ is never exposed. */
export const DEMO_PLATFORM_POLICY = {
  rego: `package gatehouse.platform

default allow := false

has_user if input.user.sub

internal_path if startswith(input.request.path, "/internal/")

allow if {
	has_user
	not internal_path
}

reason := "a verified identity is required" if {
	not has_user
} else := "internal paths are not exposed" if {
	internal_path
}

status_code := 401 if not has_user
`,
  data: {},
};

/**
 * Demo project policy: the seed's example (admins may call the project's
 * routes), extended for the LLM hairpin with a model allow-list and a
 * max_tokens limit read from the request body.
 */
export const DEMO_PROJECT_POLICY = {
  rego: `package project.authz

default allow := false

llm_call if startswith(input.request.path, "/llm/")

# The seed's example.
allow if input.user.role == "admin"

# Project members may use the project's routes...
allow if {
	not llm_call
	input.user.role in data.valid_roles
}

# ...and the LLM, with an allowed model and a bounded answer.
allow if {
	llm_call
	input.user.role in data.valid_roles
	input.body.model in data.models
	input.body.max_tokens <= data.max_tokens
}

reason := "model not allowed for this project" if {
	llm_call
	not input.body.model in data.models
} else := "max_tokens is above this project's limit" if {
	llm_call
	input.body.max_tokens > data.max_tokens
} else := "role not allowed in this project" if not allow
`,
  data: { valid_roles: ['platform_admin', 'project_user'], models: ['gpt-4o-mini', 'llama-3'], max_tokens: 1024 },
};

/** The demo project's LLM key in the local Vault (a placeholder: the LLM is a stub). */
export const DEMO_LLM_SECRET = { mount: 'secret', path: `llm/${DEMO_PROJECT}`, field: 'api_key', value: 'sk-demo-not-a-real-key' };

export interface SeedOptions {
  etcdEndpoints: string[];
  /** etcd user, when etcd has auth on (the CMS's: it writes policies). */
  etcdAuth?: { username: string; password: string };
  opaPath: string;
  /** Recorded as the author of the seeded versions. */
  author?: string;
  /** Sign the seeded versions with this key (policy/signing), as the CMS would; a seeded version it did not sign is written again. */
  signing?: { keyFile: string; kid: string };
}

/**
 * Writes the platform policy and the demo project through the store when
 * they are absent, or when the stored version is an older seed (a restart
 * keeps whatever a user wrote). Returns the names it wrote.
 */
export async function seedDemoPolicies(options: SeedOptions): Promise<string[]> {
  const client = createEtcdClient(options.etcdEndpoints, options.etcdAuth ? { auth: options.etcdAuth } : {});
  const store = new PolicyStore(client, { signer: options.signing ? pemFileSigner(options.signing.keyFile, options.signing.kid) : null });
  const compiler = new RegoCompiler({ opaPath: options.opaPath });
  const written: string[] = [];
  try {
    for (const [name, policy] of [
      [PLATFORM_POLICY_NAME, DEMO_PLATFORM_POLICY],
      [DEMO_PROJECT, DEMO_PROJECT_POLICY],
    ] as const) {
      const author = options.author ?? 'gatehouse-demo';
      const dataText = JSON.stringify(policy.data);
      const current = await store.get(name);
      // Keep what a user wrote; bring an older seeded version up to date.
      const signedAsAsked = !options.signing || current?.meta.signature?.kid === options.signing.kid;
      if (current && (current.meta.author !== author || (current.rego === policy.rego && current.dataText === dataText && signedAsAsked))) continue;
      const compiled = await compiler.compile(policy.rego, dataText);
      try {
        await store.put(name, policySubmission(policy.rego, dataText, compiled, author), current ? { ifVersion: [current.meta.version] } : { ifAbsent: true });
        written.push(name);
      } catch (error) {
        // Another process wrote it between our read and write: fine.
        if ((error as Error).name !== 'PreconditionFailedError') throw error;
      }
    }
  } finally {
    client.close();
  }
  return written;
}

export interface DemoTokens {
  platformAdmin: string;
  projectUser: string;
  otherProjectUser: string;
}

export interface DemoIdentity {
  /** Ready for buildCmsApp({ identity }) and the gateway's jwt plugin. */
  identityConfig: IdentityConfig;
  jwksFile: string;
  tokens: DemoTokens;
  /** Signs a 12-hour token with other claims, with the same key. */
  sign(claims: Record<string, unknown>): Promise<string>;
}

export const DEMO_ISSUER = 'https://gatehouse.local/demo-issuer';
export const DEMO_AUDIENCE = 'gatehouse';

/** A fresh ES256 key, its JWKS written to `dir/jwks.json`, and 12-hour demo tokens. */
export async function createDemoIdentity(dir: string): Promise<DemoIdentity> {
  await mkdir(dir, { recursive: true });
  const { publicKey, privateKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = `demo-${Date.now().toString(36)}`;
  const jwksFile = join(dir, 'jwks.json');
  await writeFile(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' }] }));
  const sign = (claims: Record<string, unknown>) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid })
      .setIssuer(DEMO_ISSUER)
      .setAudience(DEMO_AUDIENCE)
      .setIssuedAt()
      .setExpirationTime('12h')
      .sign(privateKey);
  return {
    jwksFile,
    identityConfig: {
      jwks: { kind: 'file', path: jwksFile },
      issuer: DEMO_ISSUER,
      audience: [DEMO_AUDIENCE],
      algorithms: ['ES256'],
      clockToleranceSeconds: 30,
      claimNames: { sub: 'sub', role: 'role', project: 'project' },
    },
    sign,
    tokens: {
      platformAdmin: await sign({ sub: 'ada', role: 'platform_admin' }),
      projectUser: await sign({ sub: 'dev', role: 'project_user', project: DEMO_PROJECT }),
      otherProjectUser: await sign({ sub: 'eve', role: 'project_user', project: 'other-team' }),
    },
  };
}

/** Example curl commands against a CMS (or the gateway route in front of it). */
export function demoCurlCommands(baseUrl: string, tokens: DemoTokens): string {
  const examplePolicy = JSON.stringify(EXAMPLE_POLICY).replaceAll("'", "'\\''");
  return [
    `# list policies (platform admin sees all)`,
    `curl -s ${baseUrl}/policies -H "Authorization: Bearer ${tokens.platformAdmin}"`,
    `# read the demo project's policy as its project user (ETag header = version)`,
    `curl -si ${baseUrl}/policies/${DEMO_PROJECT} -H "Authorization: Bearer ${tokens.projectUser}"`,
    `# the platform policy is for platform admins only: 403`,
    `curl -si ${baseUrl}/policies/platform -H "Authorization: Bearer ${tokens.projectUser}"`,
    `# create a project with the seed's example policy (201, then 200 when repeated)`,
    `curl -si -X PUT ${baseUrl}/policies/team-a -H "Authorization: Bearer ${tokens.platformAdmin}" -H 'Content-Type: application/json' --data '${examplePolicy}'`,
    `# replace only if still at version 1`,
    `curl -si -X PUT ${baseUrl}/policies/team-a -H 'If-Match: "1"' -H "Authorization: Bearer ${tokens.platformAdmin}" -H 'Content-Type: application/json' --data '${examplePolicy}'`,
    `# history`,
    `curl -s ${baseUrl}/policies/team-a/history -H "Authorization: Bearer ${tokens.platformAdmin}"`,
  ].join('\n');
}
