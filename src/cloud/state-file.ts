/**
 * The cloud layer's small state files under the daemon's data directory (the
 * local provider's VM records, the pending-create journal, the last
 * inventory of each provider), until the geo-replicated state layer takes
 * them over.
 *
 * Invariants:
 * - A write replaces the whole file through a temporary file that is fsynced
 *   and renamed over the old one (then the directory is fsynced), so a crash
 *   leaves the old content or the new, never a torn file.
 * - A file that exists but does not parse or validate is moved aside
 *   (`<name>.corrupt-<time>`) and reported to the caller, never silently
 *   overwritten: it may hold the only record of a VM.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { z } from 'zod';

export type StateFileRead<T> = { state: 'missing' } | { state: 'ok'; value: T } | { state: 'corrupt'; movedTo: string; reason: string };

export async function readStateFile<T>(path: string, schema: z.ZodType<T>): Promise<StateFileRead<T>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'missing' };
    throw err;
  }
  let reason: string;
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    if (parsed.success) return { state: 'ok', value: parsed.data };
    const first = parsed.error.issues[0];
    reason = first ? `${first.path.join('.') || '(top level)'}: ${first.message}` : 'does not match its schema';
  } catch (err) {
    reason = `not JSON: ${(err as Error).message}`;
  }
  const movedTo = `${path}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  await rename(path, movedTo);
  return { state: 'corrupt', movedTo, reason };
}

export async function writeStateFile(path: string, value: unknown): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const temporary = `${path}.tmp-${process.pid}`;
  const file = await open(temporary, 'w', 0o600);
  try {
    await file.writeFile(`${JSON.stringify(value)}\n`, 'utf8');
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  const directory = await open(dir, 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

/**
 * Group commit for a whole-file state: `save()` asks for a write of the
 * state as it is now, and saves asked while a write is queued and not yet
 * started share that one write (it reads the state when it starts, so it
 * carries every change made before it). So N concurrent changes cost one or
 * two writes (and fsyncs), not N, and still none resolves before a write
 * that holds it is on disk. Writes never overlap; a failed write rejects the
 * saves that shared it and does not stop the next one.
 */
export class CoalescedWrites {
  readonly #write: () => Promise<void>;
  #tail: Promise<void> = Promise.resolve();
  /** The write queued and not yet started, which a new save joins. */
  #queued: Promise<void> | null = null;

  /** `write` must read the state synchronously when it is called (it is called when the write starts). */
  constructor(write: () => Promise<void>) {
    this.#write = write;
  }

  save(): Promise<void> {
    if (this.#queued !== null) return this.#queued;
    const run: Promise<void> = this.#tail.then(() => {
      // Started: a change from now on may come after this write read the state, so it needs the next write.
      this.#queued = null;
      return this.#write();
    });
    this.#queued = run;
    this.#tail = run.catch(() => undefined);
    return run;
  }

  /** Resolves once every write asked for so far has finished (failed ones included). */
  drain(): Promise<void> {
    return this.#tail;
  }
}

/**
 * Runs writes to one file one after another, so an older write never lands
 * after a newer one; a failed write does not stop the ones queued behind it.
 */
export class WriteQueue {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(work: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(work);
    this.#tail = result.catch(() => undefined);
    return result;
  }

  /** Resolves once every write queued so far has finished. */
  async drain(): Promise<void> {
    await this.#tail;
  }
}
