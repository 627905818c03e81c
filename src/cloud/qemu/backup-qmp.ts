/**
 * A crash-consistent copy of a running guest's disk, taken through QMP
 * without stopping the guest: `blockdev-backup` with `sync: top` from the
 * guest's qcow2 node to a fresh qcow2 file.
 *
 * Why blockdev-backup (and not blockdev-snapshot + qemu-img convert of the
 * chain): the backup job's copy-before-write filter makes the copy the disk
 * exactly as it was when the job started, whatever the guest writes
 * meanwhile (a crash-consistent point in time), and it leaves the guest's
 * own block graph untouched: no new overlay on the live disk that would
 * have to be committed back and removed afterwards, so a dwcpd killed in
 * the middle leaves nothing but a stray target file. `sync: top` copies
 * only what the guest's overlay holds (the base image is the same file by
 * hash in every region), in offset order, so consecutive backups of a disk
 * lay out alike and the blob store sends them as small deltas.
 *
 * Invariants: the target node is removed whatever happens; a job that does
 * not finish within the deadline is cancelled and the call throws; the
 * target file is complete only when this resolves.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import { DISK_NODE } from './migration-qmp.ts';
import type { QmpClient } from './qmp.ts';

const BACKUP_NODE = 'dwcp-dr-backup';
const BACKUP_JOB = 'dwcp-dr-backup-job';
const JobsSchema = z.array(z.object({ id: z.string(), status: z.string(), error: z.string().optional() }).passthrough());

/**
 * Copies the guest's disk as of now into `target` (a qcow2 file the caller
 * created, empty, the disk's size, with the disk's base as its backing file
 * if it has one). Resolves once the copy is complete.
 */
export async function backupDisk(qmp: QmpClient, target: string, opts: { timeoutMs: number; pollMs?: number }): Promise<void> {
  // The target's backing file is not opened: sync top writes only what the guest's overlay holds.
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': BACKUP_NODE, file: { driver: 'file', filename: target }, backing: null });
  try {
    await qmp.execute('blockdev-backup', { 'job-id': BACKUP_JOB, device: DISK_NODE, target: BACKUP_NODE, sync: 'top', 'auto-dismiss': false });
    const deadline = performance.now() + opts.timeoutMs;
    for (;;) {
      const job = JobsSchema.parse(await qmp.execute('query-jobs')).find((j) => j.id === BACKUP_JOB);
      if (job === undefined) throw new Error('the backup job vanished');
      if (job.status === 'concluded') {
        await qmp.execute('job-dismiss', { id: BACKUP_JOB });
        if (job.error !== undefined) throw new Error(`the backup job failed: ${job.error}`);
        return;
      }
      if (performance.now() > deadline) {
        await qmp.execute('job-cancel', { id: BACKUP_JOB }).catch(() => undefined);
        await waitConcluded(qmp);
        throw new Error(`the backup did not finish within ${opts.timeoutMs} ms`);
      }
      await delay(opts.pollMs ?? 100);
    }
  } finally {
    await qmp.execute('blockdev-del', { 'node-name': BACKUP_NODE }).catch(() => undefined);
  }
}

/** After a cancel: waits (briefly) for the job to conclude and dismisses it, so the target node can go. */
async function waitConcluded(qmp: QmpClient): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const job = JobsSchema.parse(await qmp.execute('query-jobs').catch(() => [])).find((j) => j.id === BACKUP_JOB);
    if (job === undefined) return;
    if (job.status === 'concluded') {
      await qmp.execute('job-dismiss', { id: BACKUP_JOB }).catch(() => undefined);
      return;
    }
    await delay(100);
  }
}
