// Conf parsing for plugins whose conf is a JSON object described by a JSON
// Schema. ajv compiles the schema once, so PrepareConf stays fast.
import { Ajv, type JSONSchemaType, type ValidateFunction } from 'ajv';
import { ConfError } from './plugin.js';

const ajv = new Ajv({ allErrors: true, strict: true, useDefaults: true });

export function jsonConfParser<T>(pluginName: string, schema: JSONSchemaType<T> | object): (raw: string) => T {
  const validate = ajv.compile(schema) as ValidateFunction<T>;
  return (raw: string): T => {
    let value: unknown;
    try {
      value = raw === '' ? {} : JSON.parse(raw);
    } catch (err) {
      throw new ConfError(`${pluginName}: conf is not valid JSON (${(err as Error).message})`);
    }
    if (!validate(value)) {
      const reasons = (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}`).join('; ');
      throw new ConfError(`${pluginName}: invalid conf: ${reasons}`);
    }
    return value;
  };
}
