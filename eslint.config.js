// Lint with type information, for the mistakes the compiler lets through:
// a promise nobody awaits or catches is an unhandled rejection, and in a
// gateway an unhandled rejection is an outage (or a request let through).
import tseslint from 'typescript-eslint';

/** Type-aware promise rules for the TypeScript of one tsconfig project. */
const promiseRules = (files, project, rules) => ({
  files,
  languageOptions: { parser: tseslint.parser, parserOptions: { project, tsconfigRootDir: import.meta.dirname } },
  plugins: { '@typescript-eslint': tseslint.plugin },
  rules: {
    '@typescript-eslint/no-floating-promises': 'error',
    '@typescript-eslint/no-misused-promises': 'error',
    '@typescript-eslint/await-thenable': 'error',
    ...rules,
  },
});

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.local/**', 'plugins/protocol/generated/**', 'dev/vault/**', 'dev/opa/**'] },
  { ...promiseRules(['**/*.ts'], './tsconfig.test.json', { '@typescript-eslint/require-await': 'off' }), ignores: ['cms/console/app/**'] },
  // The web console runs in the browser, with its own tsconfig (DOM types); its handlers may be async.
  promiseRules(['cms/console/app/**/*.ts'], './cms/console/app/tsconfig.json', {
    '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { attributes: false, properties: false } }],
  }),
);
