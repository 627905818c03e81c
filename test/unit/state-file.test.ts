/** CoalescedWrites (src/cloud/state-file.ts): saves asked while a write is queued share it; none resolves before a write that started after it; a failure rejects only the saves that shared it. */
import { expect, it } from 'vitest';
import { CoalescedWrites } from '../../src/cloud/state-file.ts';

it('runs one write for every save asked while one is queued, never overlapping, each save resolved by a write that read the state after it', async () => {
  let state = 0;
  const written: number[] = [];
  const releases: (() => void)[] = [];
  let running = 0;
  const writes = new CoalescedWrites(() => {
    const value = state; // read when the write starts
    running++;
    expect(running).toBe(1);
    return new Promise<void>((resolve) => releases.push(() => {
      written.push(value);
      running--;
      resolve();
    }));
  });
  const next = () => new Promise((resolve) => setImmediate(resolve));
  state = 1;
  const first = writes.save();
  await next();
  // The first write runs; ten changes meanwhile share the one queued after it.
  const later = Array.from({ length: 10 }, () => {
    state++;
    return writes.save();
  });
  expect(new Set(later).size).toBe(1);
  releases.shift()?.();
  await first;
  await next();
  releases.shift()?.();
  await Promise.all(later);
  expect(written).toEqual([1, 11]);
  await writes.drain();
});

it('rejects the saves that shared a failed write and goes on with the next', async () => {
  let fail = true;
  const writes = new CoalescedWrites(async () => {
    if (fail) throw new Error('disk full');
  });
  const a = writes.save();
  await expect(a).rejects.toThrow('disk full');
  fail = false;
  await expect(writes.save()).resolves.toBeUndefined();
});
