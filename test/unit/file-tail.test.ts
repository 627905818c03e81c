/**
 * tailFile (src/admin/file-tail.ts), the reader behind `dwcpctl vm console`:
 * the whole file or its last bytes; following appends as they happen (woken
 * by the file's change events), a truncation, the file's deletion, and the
 * caller's signal.
 */
import { appendFile, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tailFile } from '../../src/admin/file-tail.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-tail-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function collect(path: string, options: { tailBytes: number; chunkBytes?: number }): Promise<string> {
  let out = '';
  for await (const piece of tailFile(path, { ...options, follow: false, signal: new AbortController().signal })) out += piece.toString();
  return out;
}

describe('tailFile', () => {
  it('reads the whole file in pieces, or its last bytes, and says when it is missing', async () => {
    const path = join(dir, 'log');
    await writeFile(path, 'tick 0\ntick 1\ntick 2\n');
    expect(await collect(path, { tailBytes: 0, chunkBytes: 4 })).toBe('tick 0\ntick 1\ntick 2\n');
    expect(await collect(path, { tailBytes: 7 })).toBe('tick 2\n');
    expect(await collect(path, { tailBytes: 1_000 })).toBe('tick 0\ntick 1\ntick 2\n');
    await expect(collect(join(dir, 'absent'), { tailBytes: 0 })).rejects.toMatchObject({ code: 'not_found' });
  });

  it('follows appends and a truncation, and ends when the file is deleted or the signal fires', async () => {
    const path = join(dir, 'growing');
    await writeFile(path, 'a\n');
    const seen: string[] = [];
    const stop = new AbortController();
    const reader = (async () => {
      for await (const piece of tailFile(path, { tailBytes: 0, follow: true, signal: stop.signal, pollMs: 60_000 })) {
        seen.push(piece.toString());
        if (seen.join('') === 'a\nb\n') await truncate(path, 0).then(() => appendFile(path, 'c\n'));
        if (seen.join('').endsWith('c\n')) await rm(path);
      }
    })();
    // Whether this lands before the reader's first read or while it waits, it reads a, b in order.
    await appendFile(path, 'b\n');
    await reader;
    expect(seen.join('')).toBe('a\nb\nc\n');

    await writeFile(path, 'x\n');
    const pieces: string[] = [];
    const following = (async () => {
      for await (const piece of tailFile(path, { tailBytes: 0, follow: true, signal: stop.signal })) {
        pieces.push(piece.toString());
        stop.abort();
      }
    })();
    await following;
    expect(pieces).toEqual(['x\n']);
  });
});
