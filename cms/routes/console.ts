/**
 * The web console (cms/console/app, built into dist/console): static files,
 * no credentials in them; it calls the API with the token it is given. Not
 * part of the API (undocumented in /openapi.json, no identity needed).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyPluginAsync } from 'fastify';
import { HttpProblem } from '../../http/problem.js';
import { packageRoot } from '../../runtime/paths.js';

export interface ConsoleRoutesOptions {
  /** Identities offered at one click (GET /console/demo-tokens): the local stack's only. */
  demoTokens?: { label: string; token: string }[];
}

const CONSOLE_FILES: Record<string, { file: string; type: string }> = {
  '/console/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/console/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/console/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
};

export const consoleRoutes: FastifyPluginAsync<ConsoleRoutesOptions> = async (app, { demoTokens }) => {
  const consoleDir = join(packageRoot(), 'dist', 'console');
  app.get('/console', { config: { undocumented: true } }, async (_request, reply) => reply.redirect('/console/', 302));
  for (const [url, { file, type }] of Object.entries(CONSOLE_FILES)) {
    app.get(url, { config: { undocumented: true } }, async (_request, reply) => {
      const path = join(consoleDir, file);
      if (!existsSync(path)) throw new HttpProblem({ status: 404, detail: 'the console is not built (npm run build)' });
      return (
        reply
          .type(type)
          // CodeMirror styles itself at run time: inline styles, nothing else inline, nothing from elsewhere.
          .header(
            'Content-Security-Policy',
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
          )
          .header('X-Content-Type-Options', 'nosniff')
          .header('Referrer-Policy', 'no-referrer')
          .send(readFileSync(path))
      );
    });
  }
  app.get('/console/demo-tokens', { config: { undocumented: true } }, async (_request, reply) => {
    if (!demoTokens) throw new HttpProblem({ status: 404, detail: 'no demo sign-in here' });
    return reply.type('application/json').send(demoTokens);
  });
};
