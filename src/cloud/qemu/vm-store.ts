/**
 * Where the qemu provider keeps its guests: one directory per VM under
 * `<dataDir>/qemu/vms/<id>/` (mode 0700) holding the record (`vm.json`), the
 * qcow2 overlay, the QMP socket, the serial log, QEMU's own log, its pid file
 * and the exit status its shell writes. Everything the provider knows about
 * a guest survives a dwcpd restart in that directory, which is what lets a
 * new dwcpd re-adopt guests that went on running.
 *
 * Invariants:
 * - The record is rewritten whole, atomically and fsynced (state-file.ts) on
 *   every change, writes to one record queued in order; a record that does
 *   not parse is moved aside and reported, never overwritten.
 * - A VM directory and everything in it is created 0700/0600: the QMP socket
 *   inside is only reachable by the daemon's user.
 * - Records are checked by one zod schema on the way in (the edge: a file
 *   another version or a person may have written).
 */
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { readStateFile, writeStateFile, WriteQueue } from '../state-file.ts';
import type { GuestPaths } from './qemu-command.ts';

const ImageRefSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('kernel'), name: z.string(), sha256: z.string(), kernel: z.string(), initrd: z.string(), cmdline: z.string() }),
  z.object({ kind: z.literal('disk'), name: z.string(), sha256: z.string(), path: z.string(), format: z.enum(['qcow2', 'raw']) }),
]);

export const POWER_STATES = ['running', 'stopped', 'terminated'] as const;

export const VmRecordSchema = z.object({
  version: z.literal(1),
  id: z.string().regex(/^qemu-[0-9a-f]{12}$/),
  name: z.string(),
  zone: z.string(),
  type: z.string(),
  vcpus: z.number().int().positive(),
  memoryMiB: z.number().int().positive(),
  diskBytes: z.number().int().positive(),
  /** The image as it was materialised at create (its files and hash). */
  image: ImageRefSchema,
  tags: z.record(z.string(), z.string()),
  userData: z.string().nullable(),
  idempotencyToken: z.string().nullable(),
  /** What dwcp last asked of the guest; the process is brought to it (a stop or terminate dwcpd did not finish is finished). */
  power: z.enum(POWER_STATES),
  createdAt: z.number(),
  /** When its QEMU last started (epoch ms). */
  launchTime: z.number().nullable(),
  /** The QEMU started last: pid and start time (clock ticks since boot) name it; the shell's pid too. */
  process: z.object({ pid: z.number().int().positive(), startTicks: z.number().int().nonnegative(), shimPid: z.number().int().positive(), startedAt: z.number() }).nullable(),
  /** How the guest last stopped running, for people ("guest powered off", "killed by SIGKILL (signal 9)"). */
  lastExit: z.object({ at: z.number(), reason: z.string() }).nullable(),
  terminatedAt: z.number().nullable(),
  /** Where the disk went when a terminate kept it. */
  keptDisk: z.string().nullable(),
  /**
   * A migration this guest receives and has not yet run: its id and mode
   * (live: a QEMU waiting for the stream; cold, warm: a disk the transfer
   * writes). Cleared once the guest runs (the stream completed, or it was
   * started after the cutover).
   */
  incoming: z.object({ migration: z.string(), mode: z.enum(['live', 'warm', 'cold']) }).nullable().default(null),
});
export type QemuVmRecord = z.infer<typeof VmRecordSchema>;
export type ImageRef = z.infer<typeof ImageRefSchema>;

export interface VmFiles extends GuestPaths {
  readonly dir: string;
  readonly record: string;
  /** QEMU's stdout and stderr (its error messages). */
  readonly log: string;
  /** A live migration's destination QEMU listens here for the state stream (migrate-incoming unix:…). */
  readonly migrateIn: string;
  /** …and exports its disk here (NBD) for the source's mirror. */
  readonly nbd: string;
  /** A live migration's source: the daemon listens here for its QEMU's state stream (migrate unix:…), and its disk mirror (NBD client). */
  readonly migrateOut: string;
  readonly nbdOut: string;
}

export function vmFiles(root: string, id: string): VmFiles {
  const dir = join(root, 'vms', id);
  return {
    dir,
    record: join(dir, 'vm.json'),
    disk: join(dir, 'disk.qcow2'),
    qmp: join(dir, 'qmp.sock'),
    serial: join(dir, 'serial.log'),
    pid: join(dir, 'qemu.pid'),
    exit: join(dir, 'exit-status'),
    log: join(dir, 'qemu.log'),
    migrateIn: join(dir, 'migrate-in.sock'),
    nbd: join(dir, 'nbd.sock'),
    migrateOut: join(dir, 'migrate-out.sock'),
    nbdOut: join(dir, 'nbd-out.sock'),
  };
}

export interface LoadedVms {
  records: QemuVmRecord[];
  /** Directories whose record could not be read, and why (a corrupt one was moved aside). */
  problems: { dir: string; problem: string }[];
}

export class VmStore {
  readonly root: string;
  readonly #queues = new Map<string, WriteQueue>();

  constructor(root: string) {
    this.root = root;
  }

  files(id: string): VmFiles {
    return vmFiles(this.root, id);
  }

  async load(): Promise<LoadedVms> {
    const vmsDir = join(this.root, 'vms');
    await mkdir(vmsDir, { recursive: true, mode: 0o700 });
    const out: LoadedVms = { records: [], problems: [] };
    for (const entry of (await readdir(vmsDir, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
      if (!entry.isDirectory()) continue;
      const files = vmFiles(this.root, entry.name);
      const read = await readStateFile(files.record, VmRecordSchema);
      if (read.state === 'ok' && read.value.id === entry.name) out.records.push(read.value);
      else if (read.state === 'ok') out.problems.push({ dir: files.dir, problem: `vm.json names ${read.value.id}, not ${entry.name}` });
      else if (read.state === 'missing') out.problems.push({ dir: files.dir, problem: 'no vm.json' });
      else out.problems.push({ dir: files.dir, problem: `vm.json unreadable (${read.reason}); moved to ${read.movedTo}` });
    }
    return out;
  }

  /** Creates the VM's directory (0700). */
  async create(id: string): Promise<VmFiles> {
    const files = this.files(id);
    await mkdir(files.dir, { recursive: true, mode: 0o700 });
    return files;
  }

  save(record: QemuVmRecord): Promise<void> {
    let queue = this.#queues.get(record.id);
    if (queue === undefined) {
      queue = new WriteQueue();
      this.#queues.set(record.id, queue);
    }
    const copy = structuredClone(record);
    return queue.run(() => writeStateFile(this.files(record.id).record, copy));
  }

  /** Removes the VM's directory and everything in it (after its retention as terminated). */
  async remove(id: string): Promise<void> {
    await this.#queues.get(id)?.drain();
    this.#queues.delete(id);
    await rm(this.files(id).dir, { recursive: true, force: true });
  }

  async flush(): Promise<void> {
    await Promise.all([...this.#queues.values()].map((q) => q.drain()));
  }
}
