import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { deadline } from '../../src/deadline.ts';

describe('deadline', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('aborts with a TimeoutError once its time is up, not before', () => {
    const limit = deadline(1000);
    vi.advanceTimersByTime(999);
    expect(limit.signal.aborted).toBe(false);
    vi.advanceTimersByTime(1);
    expect(limit.signal.aborted).toBe(true);
    expect((limit.signal.reason as DOMException).name).toBe('TimeoutError');
  });

  it('never aborts after done(), and leaves no timer behind', () => {
    const limit = deadline(1000);
    limit.done();
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(5000);
    expect(limit.signal.aborted).toBe(false);
  });

  it("aborts with the parent's reason when the parent aborts first, and stops listening to it after done()", () => {
    const parent = new AbortController();
    const limit = deadline(1000, parent.signal);
    parent.abort(new Error('caller gone'));
    expect(limit.signal.reason).toEqual(new Error('caller gone'));
    limit.done();

    const other = new AbortController();
    const ended = deadline(1000, other.signal);
    ended.done();
    other.abort(new Error('late'));
    expect(ended.signal.aborted).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('is aborted at once under a parent that already is', () => {
    const limit = deadline(1000, AbortSignal.abort(new Error('before')));
    expect(limit.signal.reason).toEqual(new Error('before'));
    limit.done();
  });
});
