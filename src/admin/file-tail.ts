/**
 * Reads a file another process appends to (a guest's serial log, which QEMU
 * writes): what it holds, whole or its last bytes, then, when following,
 * what is appended next, woken by the file's change events (inotify), with
 * a slow re-check besides for filesystems that do not send them.
 *
 * Invariants:
 * - Pieces come in file order, each at most `chunkBytes`, and nothing is
 *   read twice or skipped while the file only grows; a file that shrinks
 *   (truncated, replaced) is read again from its start.
 * - Following ends when the signal fires or the file is deleted; a file
 *   missing at the start is `not_found`.
 */
import { watch, type FSWatcher } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { DwcpError } from '../errors.ts';

export interface TailOptions {
  /** Start this many bytes before the end; 0: from the start. */
  readonly tailBytes: number;
  readonly follow: boolean;
  readonly signal: AbortSignal;
  readonly chunkBytes?: number;
  /** The re-check when no change event comes; default 1 s. */
  readonly pollMs?: number;
}

export async function* tailFile(path: string, o: TailOptions): AsyncGenerator<Buffer> {
  const chunkBytes = o.chunkBytes ?? 64 * 1024;
  let handle;
  try {
    handle = await open(path, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DwcpError('not_found', `${path} does not exist (yet)`);
    throw err;
  }
  let watcher: FSWatcher | null = null;
  let wake: (() => void) | null = null;
  // Set by every change event, so one that arrives while a piece is being read or handed out is not lost.
  let changed = false;
  const onChange = (): void => {
    changed = true;
    wake?.();
  };
  try {
    let offset = Math.max(0, (await handle.stat()).size - (o.tailBytes > 0 ? o.tailBytes : Number.MAX_SAFE_INTEGER));
    if (o.follow) {
      watcher = watch(path, onChange);
      watcher.on('error', onChange);
    }
    for (;;) {
      changed = false;
      const { size } = await handle.stat();
      if (size < offset) offset = 0;
      while (offset < size && !o.signal.aborted) {
        const buffer = Buffer.alloc(Math.min(chunkBytes, size - offset));
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, offset);
        if (bytesRead === 0) break;
        offset += bytesRead;
        yield buffer.subarray(0, bytesRead);
      }
      if (!o.follow || o.signal.aborted) return;
      try {
        await stat(path);
      } catch {
        return;
      }
      if (changed) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, o.pollMs ?? 1_000);
        o.signal.addEventListener('abort', done, { once: true });
        wake = done;
        function done(): void {
          clearTimeout(timer);
          o.signal.removeEventListener('abort', done);
          wake = null;
          resolve();
        }
      });
    }
  } finally {
    watcher?.close();
    await handle.close();
  }
}
