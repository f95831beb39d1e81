import { describe, expect, it } from 'vitest';
import { GatewayRequest, type ExtraInfoSource } from '../../plugins/api/http.js';

const noExtraInfo: ExtraInfoSource = {
  variable: () => Promise.reject(new Error('not asked')),
  requestBody: () => Promise.reject(new Error('not asked')),
  responseBody: () => Promise.reject(new Error('not asked')),
};

describe('a request whose headers and args come from the call when first read', () => {
  function lazyRequest() {
    const reads = { headers: 0, args: 0 };
    const request = new GatewayRequest(
      {
        id: 1,
        method: 'GET',
        path: '/a',
        srcIp: '127.0.0.1',
        headers: () => {
          reads.headers++;
          return [
            { name: 'Accept', value: 'a' },
            { name: 'accept', value: 'b' },
          ];
        },
        args: () => {
          reads.args++;
          return [{ name: 'debug', value: null }];
        },
      },
      noExtraInfo,
    );
    return { request, reads };
  }

  it('reads neither while no plugin asks for them', () => {
    const { request, reads } = lazyRequest();
    expect(request.path).toBe('/a');
    request.path = '/b';
    expect(request.isChanged).toBe(true);
    expect(request.rewritten).toEqual({ path: '/b', body: null, headers: [], args: [], responseHeaders: [] });
    expect(reads).toEqual({ headers: 0, args: 0 });
  });

  it('answers with the changes of what was touched, without reading the rest', () => {
    const { request, reads } = lazyRequest();
    request.headers.set('x-set', '1');
    request.headers.delete('accept');
    request.responseHeaders.set('x-out', '2');
    expect(request.rewritten).toEqual({
      path: null,
      body: null,
      headers: [
        { name: 'x-set', value: '1' },
        { name: 'accept', value: null },
      ],
      args: [],
      responseHeaders: [{ name: 'x-out', value: '2' }],
    });
    expect(reads).toEqual({ headers: 1, args: 0 });
  });

  it('reads each once, on first use, with the same values as given eagerly', () => {
    const { request, reads } = lazyRequest();
    expect(request.headers.getAll('ACCEPT')).toEqual(['a', 'b']);
    expect(request.headers.get('accept')).toBe('a');
    expect(request.args.get('debug')).toBe('');
    expect(request.originalArgs).toEqual([{ name: 'debug', value: null }]);
    expect(reads).toEqual({ headers: 1, args: 1 });
  });
});
