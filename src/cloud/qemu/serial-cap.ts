/**
 * A cap on a guest's serial log. QEMU writes the console to a file it keeps
 * open for the guest's life (opened O_APPEND: `-chardev file,append=on`), and
 * a chatty guest fills a disk over months: the test guest alone writes ~14
 * MB a day. Past `maxBytes` the log is rotated the way logrotate's
 * copytruncate does it: the file is copied to `<log>.1` (replacing the older
 * one) and truncated in place, so QEMU's descriptor stays valid and its next
 * write lands at the new end (O_APPEND).
 *
 * Invariants:
 * - At most `maxBytes` in the live file after a rotation, and at most two
 *   files per guest: on disk a guest's console takes at most about
 *   2 × maxBytes plus what it writes between two checks.
 * - What the guest writes between the copy and the truncate is lost (the
 *   price of not stopping QEMU; copytruncate has the same window). Nothing
 *   else is: the copy is complete before the truncate.
 * - A missing log (a guest that never started) is not an error.
 */
import { copyFile, stat, truncate } from 'node:fs/promises';

export const SERIAL_LOG_ROTATED_SUFFIX = '.1';

/** Rotates `path` if it is larger than `maxBytes`; returns the bytes moved to `<path>.1`, 0 when nothing was done. */
export async function capSerialLog(path: string, maxBytes: number): Promise<number> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  if (size <= maxBytes) return 0;
  await copyFile(path, path + SERIAL_LOG_ROTATED_SUFFIX);
  await truncate(path, 0);
  return size;
}
