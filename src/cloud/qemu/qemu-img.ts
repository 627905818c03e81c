/**
 * The guests' disks through `qemu-img`: a qcow2 overlay on a base image (the
 * base is only ever read: every write of the guest lands in its overlay), a
 * blank qcow2 disk for guests booted from a kernel, and the virtual size of
 * a base image.
 *
 * Invariants: every run has a deadline; a failure is an Error carrying
 * qemu-img's own message (its stderr), never a bare exit code.
 */
import { execFile } from 'node:child_process';
import { z } from 'zod';

const TIMEOUT_MS = 60_000;

function run(qemuImg: string, args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(qemuImg, [...args], { timeout: TIMEOUT_MS, maxBuffer: 4 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) {
        const said = stderr.trim().split('\n').at(-1) ?? '';
        reject(new Error(`${qemuImg} ${args[0] ?? ''} failed: ${said !== '' ? said : err.message}`, { cause: err }));
      } else {
        resolve(stdout);
      }
    });
  });
}

/** A qcow2 disk of `sizeBytes` at `path`: blank, or an overlay on `base` (which it never writes). */
export async function createDisk(qemuImg: string, path: string, sizeBytes: number, base: { path: string; format: 'qcow2' | 'raw' } | null): Promise<void> {
  const backing = base === null ? [] : ['-b', base.path, '-F', base.format];
  await run(qemuImg, ['create', '-q', '-f', 'qcow2', ...backing, path, String(sizeBytes)]);
}

const InfoSchema = z.object({ 'virtual-size': z.number().int().nonnegative() });

/** The size the guest sees of an image file. */
export async function virtualSize(qemuImg: string, path: string, format: 'qcow2' | 'raw'): Promise<number> {
  const parsed = InfoSchema.safeParse(JSON.parse(await run(qemuImg, ['info', '--output=json', '-f', format, path])));
  if (!parsed.success) throw new Error(`${qemuImg} info ${path}: no virtual-size in its answer`);
  return parsed.data['virtual-size'];
}

/** Points a qcow2 overlay at `base` without reading either (the same image, found at another path on this host). */
export async function rebaseUnsafe(qemuImg: string, path: string, base: { path: string; format: 'qcow2' | 'raw' }): Promise<void> {
  await run(qemuImg, ['rebase', '-q', '-u', '-f', 'qcow2', '-b', base.path, '-F', base.format, path]);
}
