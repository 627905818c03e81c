/**
 * The group-commit queue the LMDB stores and the WAL share: grouping by
 * event-loop turn and by the commit in flight, order, barriers, refusal
 * after a failure, and close draining what was queued.
 */
import { describe, expect, it } from 'vitest';
import { CommitQueue } from '../../src/storage/commit-queue.ts';

/** A queue whose commits wait until the test lets them land. */
function manual(): { queue: CommitQueue<number>; groups: number[][]; land(error?: Error): void; waiting(): number } {
  const groups: number[][] = [];
  const landers: ((error?: Error) => void)[] = [];
  const queue = new CommitQueue<number>({
    label: 'test store',
    commit: (items) => {
      groups.push([...items]);
      return new Promise<void>((resolve, reject) => landers.push((error) => (error === undefined ? resolve() : reject(error))));
    },
  });
  return { queue, groups, land: (error) => landers.shift()?.(error), waiting: () => landers.length };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('CommitQueue', () => {
  it('commits one turn as one group, and what arrives during a commit as the next, in order', async () => {
    const q = manual();
    const settled: number[] = [];
    const push = (n: number) => q.queue.push(n).then(() => settled.push(n));
    const first = [push(1), push(2), push(3)];
    await turn();
    expect(q.groups).toEqual([[1, 2, 3]]);
    const second = [push(4), push(5)];
    await turn();
    // One commit in flight at most: 4 and 5 wait for it.
    expect(q.groups).toHaveLength(1);
    q.land();
    await Promise.all(first);
    await turn();
    expect(q.groups).toEqual([[1, 2, 3], [4, 5]]);
    q.land();
    await Promise.all(second);
    expect(settled).toEqual([1, 2, 3, 4, 5]);
  });

  it('a barrier resolves after what was queued before it, at once when nothing is, and alone needs no commit', async () => {
    const q = manual();
    await q.queue.barrier();
    expect(q.groups).toEqual([]);
    let barrierDone = false;
    const write = q.queue.push(1);
    const barrier = q.queue.barrier().then(() => (barrierDone = true));
    await turn();
    expect(barrierDone).toBe(false);
    q.land();
    await write;
    await barrier;
    expect(q.groups).toEqual([[1]]);
  });

  it('after a failed commit, the group, what queued behind it and every later item are refused, naming the store and the cause', async () => {
    const q = manual();
    const a = q.queue.push(1);
    await turn();
    const b = q.queue.push(2);
    q.land(new Error('EIO: disk gone'));
    await expect(a).rejects.toThrow('EIO: disk gone');
    await expect(b).rejects.toThrow('EIO: disk gone');
    await expect(q.queue.push(3)).rejects.toThrow('test store refuses writes after a failed commit: EIO: disk gone');
    expect(q.queue.refusal()?.message).toMatch(/refuses writes/);
    expect(q.groups).toEqual([[1]]);
  });

  it('close waits for what was queued, then refuses', async () => {
    const q = manual();
    const write = q.queue.push(1);
    let closed = false;
    const closing = q.queue.close().then(() => (closed = true));
    await turn();
    expect(closed).toBe(false);
    await expect(q.queue.push(2)).rejects.toThrow('test store is closed');
    q.land();
    await write;
    await closing;
    expect(q.queue.busy).toBe(false);
    expect(q.groups).toEqual([[1]]);
  });
});
