/**
 * The serial log cap: a log past its limit is copied whole to `.1` and
 * emptied in place, and a writer holding it open with O_APPEND (as QEMU
 * does) goes on writing at the new end, not at its old offset.
 */
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { capSerialLog } from '../../src/cloud/qemu/serial-cap.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-serial-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('capSerialLog', () => {
  it('leaves a log within the limit, and a missing one, alone', async () => {
    const log = join(dir, 'small.log');
    await writeFile(log, 'tick 1 100\n');
    expect(await capSerialLog(log, 64)).toBe(0);
    expect(await readFile(log, 'utf8')).toBe('tick 1 100\n');
    expect(await capSerialLog(join(dir, 'never-started.log'), 64)).toBe(0);
  });

  it('rotates a log past the limit to .1, and an O_APPEND writer continues at the start of the emptied file', async () => {
    const log = join(dir, 'serial.log');
    const writer = await open(log, 'a');
    try {
      const before = Array.from({ length: 20 }, (_, i) => `tick ${i} ${i * 100}\n`).join('');
      await writer.write(before);
      expect(await capSerialLog(log, 64)).toBe(Buffer.byteLength(before));
      expect(await readFile(`${log}.1`, 'utf8')).toBe(before);
      expect((await stat(log)).size).toBe(0);
      await writer.write('tick 20 2000\n');
      expect(await readFile(log, 'utf8')).toBe('tick 20 2000\n');
      // A second rotation replaces the older copy: two files at most.
      await writer.write('x'.repeat(100));
      await capSerialLog(log, 64);
      expect(await readFile(`${log}.1`, 'utf8')).toBe(`tick 20 2000\n${'x'.repeat(100)}`);
    } finally {
      await writer.close();
    }
  });
});
