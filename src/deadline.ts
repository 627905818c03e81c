/**
 * A request's deadline as an AbortSignal that its owner clears when the
 * request ends: a plain timer and an AbortController, not AbortSignal.timeout.
 *
 * Why not AbortSignal.timeout: it cannot be cancelled. Its timer, the
 * signal, the listeners on it and everything they hold stay alive until the
 * timeout would have fired (10 s for a bench put) however early the request
 * ended, so on a request path (a KV write, a forwarded write) every request's
 * objects outlive the young generation and are promoted, to be found only by
 * a full collection: at ~1 000 writes/s, ~10 000 requests' worth of live
 * objects per member, which V8's heap growth then multiplies (see
 * bench/RESULTS.md, raft, "Memory: what a member's RSS is made of"). Also, an
 * AbortSignal.timeout that only an AbortSignal.any refers to may be collected
 * before it fires, and a transfer must never wait forever.
 *
 * Invariants: the signal aborts with a TimeoutError DOMException after `ms`
 * (as AbortSignal.timeout's does), or with `parent`'s reason when the parent
 * aborts first; after done() it never aborts, and nothing of it stays
 * referenced by the timer list or the parent.
 */
export interface Deadline {
  readonly signal: AbortSignal;
  /** The request ended: clears the timer and the parent's listener. Call it once the signal is no longer needed, whatever the outcome. */
  done(): void;
}

export function deadline(ms: number, parent?: AbortSignal): Deadline {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(new DOMException(`no answer within ${ms} ms`, 'TimeoutError')), ms);
  if (parent === undefined) return { signal: ctl.signal, done: () => clearTimeout(timer) };
  const onParent = (): void => ctl.abort(parent.reason);
  if (parent.aborted) onParent();
  else parent.addEventListener('abort', onParent, { once: true });
  return {
    signal: ctl.signal,
    done: () => {
      clearTimeout(timer);
      parent.removeEventListener('abort', onParent);
    },
  };
}
