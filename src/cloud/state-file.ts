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
