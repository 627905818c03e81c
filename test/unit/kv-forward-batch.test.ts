import { describe, expect, it } from 'vitest';
import { ForwardBatch } from '../../src/kv/forward-batch.ts';

function turn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function batcher(opts: { maxItems?: number; maxBytes?: number; fail?: (items: number[]) => boolean } = {}) {
  const frames: number[][] = [];
  const failures: { err: string; items: readonly number[] }[] = [];
  const batch = new ForwardBatch<number>({
    write: async (items) => {
      if (opts.fail?.(items) === true) throw new Error(`frame of ${items.length} refused`);
      frames.push(items);
    },
    maxItems: opts.maxItems ?? 100,
    maxBytes: opts.maxBytes ?? 1000,
    sizeOf: (n) => n,
    failed: (err, items) => failures.push({ err: err instanceof Error ? err.message : String(err), items }),
  });
  return { batch, frames, failures };
}

describe('ForwardBatch', () => {
  it('sends what one turn pushed as one frame, in order, and the next turn as the next', async () => {
    const { batch, frames } = batcher();
    for (const n of [5, 1, 4]) batch.push(n);
    expect(frames).toEqual([]); // nothing leaves before the turn's I/O is done
    await turn();
    batch.push(2);
    await turn();
    expect(frames).toEqual([[5, 1, 4], [2]]);
  });

  it('splits by count and by estimated bytes, and sends an item larger than the byte budget alone', async () => {
    const { batch, frames } = batcher({ maxItems: 2, maxBytes: 10 });
    for (const n of [1, 1, 1, 6, 6, 50, 2]) batch.push(n);
    await turn();
    expect(frames).toEqual([[1, 1], [1, 6], [6], [50], [2]]);
  });

  it('reports a frame it could not write with its items, and still writes the others', async () => {
    const { batch, frames, failures } = batcher({ maxItems: 2, fail: (items) => items.includes(3) });
    for (const n of [1, 2, 3, 4, 5]) batch.push(n);
    await turn();
    await turn();
    expect(frames).toEqual([[1, 2], [5]]);
    expect(failures).toEqual([{ err: 'frame of 2 refused', items: [3, 4] }]);
  });
});
