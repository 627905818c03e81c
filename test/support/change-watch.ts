/**
 * Event-driven waiting for in-process tests: the fakes around the code under
 * test call changed() whenever something observable happened (a call, a
 * delivery, a write), and until() resolves as soon as a condition holds after
 * one, or fails at its deadline naming what did not happen. No polling, no
 * sleeps.
 */
export class ChangeWatch {
  readonly #checks = new Set<() => void>();

  changed(): void {
    for (const check of [...this.#checks]) check();
  }

  until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const { promise, resolve, reject } = Promise.withResolvers<void>();
    const check = () => {
      let holds: boolean;
      try {
        holds = condition();
      } catch (err) {
        finish();
        reject(err instanceof Error ? err : new Error(String(err)));
        return;
      }
      if (!holds) return;
      finish();
      resolve();
    };
    const timer = setTimeout(() => {
      finish();
      reject(new Error(`within ${timeoutMs} ms: ${what} did not happen`));
    }, timeoutMs);
    const finish = () => {
      clearTimeout(timer);
      this.#checks.delete(check);
    };
    this.#checks.add(check);
    check();
    return promise;
  }
}

/** Lets promise chains and setImmediate work queued so far run: to show that something did NOT happen. */
export async function settle(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) await new Promise<void>((resolve) => setImmediate(resolve));
}
