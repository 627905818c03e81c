/**
 * A guest's lease (the sanlock/oVirt VM-lease pattern): a file in the
 * guest's directory holding a deadline its daemon keeps pushing forward, and
 * the watchdog started with QEMU (a loop in the guest's own shell, see
 * qemu-command.ts shimArgs) that SIGKILLs QEMU once the deadline passes. So a
 * dead or wedged dwcpd cannot leave a protected guest running past its
 * lease, while the guest still outlives a dwcpd restart inside the lease (the
 * new daemon renews it once it hears the federation log).
 *
 * The deadline is on the boot clock (/proc/uptime, CLOCK_BOOTTIME, in
 * centiseconds): monotonic, so a wall-clock step neither lapses nor extends
 * a lease, and readable from a shell without spawning anything.
 *
 * Invariants:
 * - No lease file (or an empty one): the guest is not leased (an unprotected VM); the watchdog
 *   idles. A lease file that does not parse counts as lapsed (fail safe: it
 *   is only ever written whole, by rename, so garbage means tampering).
 * - Writes are atomic and fsynced (temporary file, fsync, rename, fsync of
 *   the directory): a watchdog never reads half a deadline, and a renewal
 *   the daemon counted on survives a host crash.
 * - `leaseState` is the same rule as the shell's, so the unit tests of one
 *   are the specification of the other.
 */
import { open, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';

/** The lease file and the note the watchdog leaves when it kills QEMU, in the guest's directory. */
export interface LeaseFiles {
  readonly lease: string;
  readonly lapsed: string;
}

export function leaseFilesOf(dir: string): LeaseFiles {
  return { lease: `${dir}/lease`, lapsed: `${dir}/lease.lapsed` };
}

/** How often the watchdog reads the lease: a tenth of it, between 100 ms and 1 s. */
export function watchdogPollMs(leaseMs: number): number {
  return Math.min(1_000, Math.max(100, Math.floor(leaseMs / 10)));
}

/** "12345.67 890.12" (/proc/uptime) → 1234567 centiseconds of boot clock. */
export function parseUptimeCs(text: string): number {
  const m = /^(\d+)\.(\d{2})\s/.exec(text);
  if (m === null) throw new Error(`/proc/uptime: unexpected content ${JSON.stringify(text.slice(0, 40))}`);
  return Number(m[1]) * 100 + Number(m[2]);
}

export async function bootClockCs(): Promise<number> {
  return parseUptimeCs(await readFile('/proc/uptime', 'utf8'));
}

/** The lease file's text: the deadline (boot clock, centiseconds) first, what a person needs after. */
export function leaseText(deadlineCs: number, untilEpochMs: number, vm: string): string {
  return `${deadlineCs} until ${new Date(untilEpochMs).toISOString()} vm ${vm}\n`;
}

export type LeaseState = 'none' | 'valid' | 'lapsed';

/** The watchdog's rule: absent or empty is not leased; a deadline at or after now is valid; anything else is lapsed. */
export function leaseState(text: string | null, nowCs: number): LeaseState {
  const first = text?.trim().split(/\s/, 1)[0] ?? '';
  if (first === '') return 'none';
  if (!/^\d+$/.test(first)) return 'lapsed';
  return nowCs > Number(first) ? 'lapsed' : 'valid';
}

export async function readLease(files: LeaseFiles): Promise<string | null> {
  try {
    return await readFile(files.lease, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Writes the lease atomically and durably (see the invariants). */
export async function writeLease(files: LeaseFiles, text: string): Promise<void> {
  const temporary = `${files.lease}.tmp`;
  const file = await open(temporary, 'w', 0o600);
  try {
    await file.writeFile(text, 'utf8');
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, files.lease);
  const directory = await open(dirname(files.lease), 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

export async function dropLease(files: LeaseFiles): Promise<void> {
  await rm(files.lease, { force: true });
}

/** What the watchdog wrote when it killed QEMU, or null when it did not. */
export async function readLapsedNote(files: LeaseFiles): Promise<string | null> {
  try {
    return (await readFile(files.lapsed, 'utf8')).trim();
  } catch {
    return null;
  }
}

/**
 * Before a launch: a valid lease is kept (the daemon is renewing it), a
 * lapsed one dropped (else the new QEMU would be killed at once; the next
 * renewal leases it), and the previous kill's note cleared.
 */
export async function prepareLeaseForLaunch(files: LeaseFiles): Promise<void> {
  await rm(files.lapsed, { force: true });
  if (leaseState(await readLease(files), await bootClockCs()) === 'lapsed') await dropLease(files);
}
