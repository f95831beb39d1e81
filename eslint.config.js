// Lint with type information, for the mistakes the compiler lets through:
// a promise nobody awaits or catches is an unhandled rejection, and in a
// gateway an unhandled rejection is an outage (or a request let through).
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.local/**', 'plugins/protocol/generated/**', 'dev/vault/**', 'dev/opa/**'] },
  {
    files: ['**/*.ts'],
    ignores: ['cms/console/app/**'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { project: './tsconfig.test.json', tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // The web console runs in the browser, with its own tsconfig (DOM types).
    files: ['cms/console/app/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { project: './cms/console/app/tsconfig.json', tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: { attributes: false, properties: false } }],
      '@typescript-eslint/await-thenable': 'error',
    },
  },
);
