// Plain objects keyed by names a client chose: header names, query
// parameters, the keys of a JSON body. Any name is a key like any other, so
// none may be set by assignment: assigned, "__proto__" sets the object's
// prototype instead of a key, and the name vanishes from the document.

/** Sets `key` of `record` to `value` as an own, enumerable property, whatever the key. */
export function setOwnKey(record: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(record, key, { value, enumerable: true, writable: true, configurable: true });
  else record[key] = value;
}
