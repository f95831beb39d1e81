// Reading an LLM answer's usage as its text streams past: pieces of any size,
// answers of any length, and usage that cannot be trusted is `invalid`.
import { describe, expect, it } from 'vitest';
import { MAX_EVENT_CHARS, UsageScanner, usageOfAnswer, type AnswerUsage } from '../../budget/answer-usage.js';

/** The usage of `text` pushed in pieces of `size` characters. */
function inPieces(text: string, size: number): AnswerUsage {
  const scanner = new UsageScanner();
  for (let i = 0; i < text.length; i += size) scanner.push(text.slice(i, i + size));
  return scanner.end();
}

const event = (value: unknown) => `data: ${JSON.stringify(value)}\n\n`;

describe('usageOfAnswer', () => {
  it('reads a JSON answer and the last usage event of a stream, the same in pieces of any size', () => {
    const whole = JSON.stringify({
      id: 'x',
      choices: [{ message: { content: 'a "usage": {} \\ b' } }],
      usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 },
      tail: [1, { usage: 9 }],
    });
    const stream = [
      event({ choices: [{ delta: { content: 'usage' } }], usage: null }),
      'data: {broken "usage"\n\n',
      event({ choices: [], usage: { prompt_tokens: 9, completion_tokens: 2 } }),
      'data: [DONE]\n\n',
    ].join('');
    for (const size of [1, 2, 3, 7, 1_000]) {
      expect(inPieces(whole, size), `json in ${size}`).toEqual({ kind: 'usage', prompt: 3, completion: 4 });
      expect(inPieces(`  \r\n${stream.replaceAll('\n', '\r\n')}`, size), `events in ${size}`).toEqual({ kind: 'usage', prompt: 9, completion: 2 });
    }
    // Names written with escapes, responses-style names, a usage member not last.
    expect(usageOfAnswer('{"us\\u0061ge": {"input_tokens": 5, "output_tokens": 6}, "id": "x"}')).toEqual({ kind: 'usage', prompt: 5, completion: 6 });
    expect(usageOfAnswer('{"usage": null}')).toEqual({ kind: 'none' });
    expect(usageOfAnswer(event({ choices: [] }))).toEqual({ kind: 'none' });
    expect(usageOfAnswer('')).toEqual({ kind: 'none' });
    expect(usageOfAnswer('<html>bad gateway</html>')).toEqual({ kind: 'none' });
    // A JSON answer read only when it is one whole object.
    expect(usageOfAnswer('{"usage": {"prompt_tokens": 1, "completion_tokens": 1}')).toEqual({ kind: 'none' });
    expect(usageOfAnswer('{"usage": {"prompt_tokens": 1, "completion_tokens": 1}} trailing')).toEqual({ kind: 'none' });
  });

  it('refuses usage that is not finite, negative, not numbers, or not an object: never a number nobody can trust', () => {
    const invalid = (text: string) => expect(usageOfAnswer(text).kind, text).toBe('invalid');
    invalid('{"usage": {"prompt_tokens": 1e400, "completion_tokens": 1}}');
    invalid(`{"usage": {"prompt_tokens": ${Number.MAX_VALUE}, "completion_tokens": ${Number.MAX_VALUE}}}`);
    invalid('{"usage": {"prompt_tokens": -1, "completion_tokens": 2}}');
    invalid('{"usage": {"prompt_tokens": "12", "completion_tokens": 2}}');
    invalid('{"usage": {}}');
    invalid('{"usage": [1, 2]}');
    invalid('{"usage": "lots"}');
    invalid(event({ choices: [], usage: { prompt_tokens: 1, completion_tokens: -5 } }));
    invalid(`data: {"choices": [], "usage": {"prompt_tokens": 1e999, "completion_tokens": 0}}\n\n`);
    // The last usage event decides: a valid one after an invalid one is read.
    expect(usageOfAnswer(`data: {"usage": {"prompt_tokens": 1e999}}\n\n${event({ usage: { prompt_tokens: 2, completion_tokens: 3 } })}`)).toEqual({
      kind: 'usage',
      prompt: 2,
      completion: 3,
    });
  });

  it('reads answers of tens of megabytes in pieces, holding only what the usage needs', () => {
    const content = 'word '.repeat(2_000_000); // 10 MB
    const whole = JSON.stringify({ choices: [{ message: { content } }], usage: { prompt_tokens: 10, completion_tokens: 2_000_000 } });
    expect(inPieces(whole, 65_536)).toEqual({ kind: 'usage', prompt: 10, completion: 2_000_000 });
    const chunks = Array.from({ length: 50_000 }, (_, i) => event({ choices: [{ delta: { content: `w${i} ` } }], usage: null })).join('');
    expect(inPieces(chunks + event({ choices: [], usage: { prompt_tokens: 1, completion_tokens: 50_000 } }) + 'data: [DONE]\n\n', 16_384)).toEqual({
      kind: 'usage',
      prompt: 1,
      completion: 50_000,
    });
    // An event too long to read may have been the usage: unless a later one carries it, the usage cannot be known.
    const huge = `data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}, "pad": "${'x'.repeat(MAX_EVENT_CHARS)}"}\n\n`;
    expect(inPieces(huge, 100_000).kind).toBe('invalid');
    expect(inPieces(huge + event({ usage: { prompt_tokens: 4, completion_tokens: 4 } }), 100_000)).toEqual({ kind: 'usage', prompt: 4, completion: 4 });
  });
});
