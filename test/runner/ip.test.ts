import { describe, expect, it } from 'vitest';
import { formatIp } from '../../plugins/runner/ip.js';

describe('formatIp', () => {
  it('writes IPv4 dotted, IPv6 in RFC 5952 form, anything else as empty', () => {
    expect(formatIp(new Uint8Array([127, 0, 0, 1]))).toBe('127.0.0.1');
    expect(formatIp(new Uint8Array([255, 10, 0, 200]))).toBe('255.10.0.200');
    expect(formatIp(new Uint8Array([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]))).toBe('2001:db8::1');
    expect(formatIp(new Uint8Array(16))).toBe('::');
    expect(formatIp(new Uint8Array([0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1]))).toBe('2001:db8:1:0:1::1');
    expect(formatIp(new Uint8Array([1, 2, 3]))).toBe('');
  });
});
