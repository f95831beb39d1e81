import { describe, expect, it } from 'vitest';
import { encodeQuery, normalizeRequestPath, parseQuery, percentDecode, uriSafeEncode } from '../../tools/apisix-standin/uri.js';

describe('nginx $uri normalisation', () => {
  it('decodes, merges slashes and resolves dot segments as the reference example', () => {
    expect(normalizeRequestPath('/a//b/./c/../d%20e')).toBe('/a/b/d e');
  });

  it.each([
    ['/', '/'],
    ['/a/', '/a/'],
    ['/a/b/..', '/a/'],
    ['/a/./', '/a/'],
    ['//x///y', '/x/y'],
    ['/%2e%2e/', null],
    ['/a/%2e%2e/b', '/b'],
    ['/caf%C3%A9', '/café'],
  ])('%s -> %s', (raw, expected) => {
    expect(normalizeRequestPath(raw)).toBe(expected);
  });

  it('refuses climbing above the root and malformed escapes (nginx answers 400)', () => {
    expect(normalizeRequestPath('/../etc')).toBeNull();
    expect(normalizeRequestPath('/a%zz')).toBeNull();
    expect(normalizeRequestPath('/a%2')).toBeNull();
  });

  it('leaves + alone in a path but decodes it as a space in a query', () => {
    expect(percentDecode('a+b', false)).toBe('a+b');
    expect(percentDecode('a+b', true)).toBe('a b');
  });
});

describe('query arguments as ngx.req.get_uri_args gives them', () => {
  it('keeps repeated names as several values and bare flags as true', () => {
    const args = parseQuery('a=1&b=2&a=3&debug&empty=&x=%20y+z');
    expect([...args]).toEqual([
      ['a', ['1', '3']],
      ['b', ['2']],
      ['debug', [true]],
      ['empty', ['']],
      ['x', [' y z']],
    ]);
  });

  it('skips empty parts and nameless arguments, and keeps every argument, as APISIX 3.9 (get_uri_args(0)) does', () => {
    expect([...parseQuery('&&=v&k=1')]).toEqual([['k', ['1']]]);
    const many = Array.from({ length: 150 }, (_, i) => `k${i}=${i}`).join('&');
    expect(parseQuery(many).size).toBe(150);
    expect(parseQuery(many, 100).size).toBe(100);
  });

  it('encodes back like ngx.encode_args, flags bare', () => {
    const args = new Map<string, (string | true)[]>([
      ['a', ['1', 'x y']],
      ['flag', [true]],
      ['é', ['&=']],
    ]);
    expect(encodeQuery(args)).toBe('a=1&a=x%20y&flag&%C3%A9=%26%3D');
  });
});

describe("APISIX's uri_safe_encode for rewritten paths", () => {
  it('escapes only space, #, %, ?, control and non-ASCII bytes', () => {
    expect(uriSafeEncode('/a b#c%d?e')).toBe('/a%20b%23c%25d%3Fe');
    expect(uriSafeEncode('/tab\there\x7f')).toBe('/tab%09here%7F');
    expect(uriSafeEncode('/café')).toBe('/caf%C3%A9');
    expect(uriSafeEncode("/keep:@!$&'()*+,;=-._~")).toBe("/keep:@!$&'()*+,;=-._~");
  });

  it('double-encodes an already encoded path, which is why runners must send it decoded', () => {
    expect(uriSafeEncode('/a%20b')).toBe('/a%2520b');
  });
});
