/**
 * BackupDriver: DR backups on this daemon (the rules are backup-plan.ts).
 *
 * As the region a protected VM runs in, every second it backs up each VM
 * whose backup is due: a crash-consistent snapshot of the running copy (the
 * provider's: qemu copies the guest's disk without stopping it, local
 * writes a stand-in, clouds refuse), stored in this node's blob store under
 * the backup's key and sent to the DR region's daemon as a delta against
 * the previous backup there (the baseline cache, keyed by the previous
 * backup's key). The send returns once the DR region's store committed it
 * (packs fsync'd, index synced, then acknowledged): only then is the backup
 * "committed at the DR region", recorded in the federation log (`backup`,
 * the manifest: VM, generation, taken-at, key, version, size).
 *
 * As the DR region of protected VMs, it exports their RPO (now minus the
 * newest backup committed in this node's store) and restores a failover's
 * backup into a disk file for the reconciler's create.
 *
 * On both sides retention drops backups older than the VM's retention,
 * never the newest committed one.
 *
 * Invariants: one backup per VM at a time, at most MAX_PARALLEL at once;
 * a failed backup leaves nothing in the log and its key is removed here; a
 * snapshot file lives only until its ingest; passes run one at a time
 * (PassLoop) and stop with stop().
 */
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobService } from '../blob/service.ts';
import { PassLoop } from '../driver/pass-loop.ts';
import { DwcpError } from '../errors.ts';
import type { FleetCommandInput, FleetResult } from '../fleet/commands.ts';
import { DR_DEFAULTS, isFailedOver, type BackupRecord } from '../fleet/protection.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import type { Logger } from '../log.ts';
import { backupDue, backupKey, BACKUP_KEY_PREFIX, NO_BACKUP_MEMORY, parseBackupKey, retentionDrops, rpoSeconds, type BackupMemory } from './backup-plan.ts';
import type { DrMetrics } from './metrics.ts';

const TICK_MS = 1_000;
const MAX_PARALLEL = 2;
/** Retention runs this often (and after each backup of the VM). */
const RETENTION_EVERY_MS = 30_000;

export interface BackupDriverOptions {
  readonly region: string;
  readonly state: () => FleetState;
  readonly commit: (command: FleetCommandInput, timeoutMs: number) => Promise<FleetResult>;
  /** This region's running copy of `vm` at `generation` (provider name, instance id), if any. */
  readonly copy: (vm: string, generation: number) => Promise<{ readonly provider: string; readonly id: string } | undefined>;
  /** The provider's backup of one instance into a new file (CloudInventory.backupDisk). */
  readonly backupDisk: (provider: string, id: string, target: string) => Promise<void>;
  readonly blob: Pick<BlobService, 'put' | 'remove' | 'store'>;
  /** Snapshots wait here for their ingest, restores for their create (0700). */
  readonly dir: string;
  readonly commitTimeoutMs: number;
  readonly metrics: DrMetrics;
  readonly log: Logger;
  readonly now?: () => number;
}

export class BackupDriver {
  readonly #o: BackupDriverOptions;
  readonly #now: () => number;
  readonly #memory = new Map<string, BackupMemory>();
  readonly #running = new Set<string>();
  readonly #exported = new Set<string>();
  #retentionAt = 0;
  readonly #loop: PassLoop;

  constructor(options: BackupDriverOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#loop = new PassLoop({
      pass: () => this.#tick(),
      intervalMs: TICK_MS,
      onError: (err) => options.log.warn({ err: errorText(err) }, 'DR backup pass failed; retrying at the next'),
      ...(options.now === undefined ? {} : { now: options.now }),
    });
  }

  async start(): Promise<void> {
    await mkdir(this.#o.dir, { recursive: true, mode: 0o700 });
    this.#loop.start();
  }

  /** Resolves after the next pass that starts after this call has finished (tests). */
  nextPass(): Promise<void> {
    return this.#loop.nextPass();
  }

  /** Stops taking backups (one under way runs to its end or fails with the blob service's stop). */
  stop(): Promise<void> {
    return this.#loop.stop();
  }

  /** The backups of `vm` this node's store holds, oldest first. */
  stored(vm: string): { key: string; takenAt: number; version: string; size: number }[] {
    const out: { key: string; takenAt: number; version: string; size: number }[] = [];
    for (const v of this.#o.blob.store.list(`${BACKUP_KEY_PREFIX}${vm}/`)) {
      const parts = parseBackupKey(v.key);
      if (parts !== null) out.push({ key: v.key, takenAt: parts.takenAt, version: v.version, size: v.size });
    }
    return out.sort((a, b) => a.takenAt - b.takenAt);
  }

  /** When the newest backup of `vm` committed at its DR region was taken, as this node knows (the log's record, and its own store when it is the DR region). */
  lastBackupAt(vm: string): number | null {
    const record = this.#o.state().vm(vm);
    const logged = record?.protection?.lastBackup?.takenAt ?? null;
    if (record?.protection?.drRegion !== this.#o.region) return logged;
    const here = this.stored(vm).at(-1)?.takenAt ?? null;
    return here === null ? logged : Math.max(here, logged ?? 0);
  }

  async #tick(): Promise<void> {
    const now = this.#now();
    const state = this.#o.state();
    for (const vm of state.protectedVms()) {
      const a = vm.assignment;
      const p = vm.protection;
      if (a === null || p === null || a.region !== this.#o.region || a.region === p.drRegion || this.#running.has(vm.name) || this.#running.size >= MAX_PARALLEL) continue;
      const memory = this.#memoryOf(vm.name, p.lastBackup, a.generation);
      if (!backupDue(memory, p.rpoMs, now)) continue;
      const copy = await this.#o.copy(vm.name, a.generation).catch(() => undefined);
      if (copy === undefined) continue;
      this.#running.add(vm.name);
      void this.#backup(vm.name, a.generation, p.drRegion, copy).finally(() => this.#running.delete(vm.name));
    }
    this.#exportRpo(state, now);
    if (now >= this.#retentionAt) {
      this.#retentionAt = now + RETENTION_EVERY_MS;
      await this.#retention(state, now).catch((err: unknown) => this.#o.log.warn({ err: errorText(err) }, 'DR backup retention failed; retried later'));
    }
  }

  /** What this node remembers of the VM's backups; after a restart, the log's record of the newest committed one. */
  #memoryOf(vm: string, logged: BackupRecord | undefined, generation: number): BackupMemory {
    const known = this.#memory.get(vm);
    if (known !== undefined) return known;
    const fresh = logged !== undefined && logged.region === this.#o.region && logged.generation === generation ? { ...NO_BACKUP_MEMORY, committedTakenAt: logged.takenAt } : NO_BACKUP_MEMORY;
    this.#memory.set(vm, fresh);
    return fresh;
  }

  async #backup(vm: string, generation: number, drRegion: string, copy: { provider: string; id: string }): Promise<void> {
    const takenAt = this.#now();
    const started = performance.now();
    const before = this.#memory.get(vm) ?? NO_BACKUP_MEMORY;
    this.#memory.set(vm, { ...before, attemptAt: takenAt });
    const key = backupKey(vm, takenAt, generation);
    const file = join(this.#o.dir, `${vm}-${takenAt}.snapshot`);
    const previous = this.stored(vm).at(-1)?.key;
    let stored = false;
    try {
      await this.#o.backupDisk(copy.provider, copy.id, file);
      const put = await this.#o.blob.put(file, key, { to: drRegion, ...(previous === undefined ? {} : { baselineKey: previous }) });
      stored = true;
      const sent = put.sent;
      if (sent === null) throw new DwcpError('internal', `backup ${key} was stored but not sent to ${drRegion}`);
      // Committed at the DR region: its store fsync'd the value and acknowledged it.
      const record: BackupRecord = { region: this.#o.region, generation, takenAt, key, version: put.stored.version, size: put.stored.size };
      this.#memory.set(vm, { committedTakenAt: takenAt, attemptAt: takenAt, lastFailed: false });
      this.#o.metrics.backups.inc({ result: 'ok' });
      this.#o.metrics.backupDuration.observe((performance.now() - started) / 1000);
      this.#o.metrics.backupWireBytes.inc(sent.wireBytesSent);
      this.#o.log.info({ vm, generation, drRegion, backup: key, size: put.stored.size, kind: sent.kind, wireBytes: sent.wireBytesSent, seconds: (performance.now() - started) / 1000 }, 'DR backup committed at the DR region');
      const result = await this.#o.commit({ kind: 'backup', vm, backup: record }, this.#o.commitTimeoutMs);
      if (!result.ok) this.#o.log.warn({ vm, backup: key, code: result.code, err: result.message }, 'DR backup not recorded in the log');
    } catch (err) {
      this.#memory.set(vm, { ...before, attemptAt: takenAt, lastFailed: true });
      this.#o.metrics.backups.inc({ result: 'failed' });
      this.#o.log.warn({ vm, generation, drRegion, backup: key, err: errorText(err) }, 'DR backup failed; retried shortly');
      // Not committed at the DR region: not a backup anyone may count on here either.
      if (stored && this.#memory.get(vm)?.committedTakenAt !== takenAt) await this.#o.blob.remove(key).catch(() => undefined);
    } finally {
      await rm(file, { force: true });
    }
  }

  /** dwcp_dr_rpo_seconds for the protected VMs this region is the DR region of (not while failed over: they run here). */
  #exportRpo(state: FleetState, now: number): void {
    const seen = new Set<string>();
    for (const vm of state.protectedVms()) {
      const p = vm.protection;
      if (p === null || p.drRegion !== this.#o.region || isFailedOver(p, vm.assignment)) continue;
      seen.add(vm.name);
      const newest = this.stored(vm.name).at(-1)?.takenAt ?? null;
      this.#o.metrics.rpo.set({ vm: vm.name }, rpoSeconds(now, newest));
      this.#o.metrics.rpoTarget.set({ vm: vm.name }, p.rpoMs / 1000);
    }
    for (const vm of this.#exported) {
      if (seen.has(vm)) continue;
      this.#o.metrics.rpo.remove({ vm });
      this.#o.metrics.rpoTarget.remove({ vm });
    }
    this.#exported.clear();
    for (const vm of seen) this.#exported.add(vm);
  }

  /** Drops backups past their VM's retention from this node's store, keeping the newest committed one (backup-plan.ts). */
  async #retention(state: FleetState, now: number): Promise<void> {
    const byVm = new Map<string, { key: string; takenAt: number }[]>();
    for (const v of this.#o.blob.store.list(BACKUP_KEY_PREFIX)) {
      const parts = parseBackupKey(v.key);
      if (parts === null) continue;
      const list = byVm.get(parts.vm) ?? [];
      list.push({ key: v.key, takenAt: parts.takenAt });
      byVm.set(parts.vm, list);
    }
    // A backup under way is safe: its own key is the newest (kept), and a send pins the baseline it reads.
    for (const [vm, backups] of byVm) {
      const record = state.vm(vm);
      const p = record?.protection ?? null;
      // The newest committed: the log's (what a failover restores), else this node's own commit; a DR region holds only committed backups.
      const committed = p?.failedOver?.restore?.takenAt ?? p?.lastBackup?.takenAt ?? this.#memory.get(vm)?.committedTakenAt ?? null;
      const drops = retentionDrops(backups, now, p?.retentionMs ?? DR_DEFAULTS.retentionMs, committed);
      for (const key of drops) {
        await this.#o.blob.remove(key);
        this.#o.log.info({ vm, backup: key }, 'DR backup dropped (retention)');
      }
    }
  }

  /**
   * Writes the backup a failover restores into a disk file for the create
   * (verified chunk by chunk as it is read back, fsync'd). Throws a
   * DwcpError naming the VM when this region's store does not hold it.
   */
  async restore(vm: string, generation: number, backup: BackupRecord): Promise<string> {
    const held = this.#o.blob.store.current(backup.key);
    if (held === undefined || held.version !== backup.version) throw new DwcpError('not_found', `the backup ${backup.key} of ${vm} (version ${backup.version}) is not in this region's blob store`);
    const manifest = this.#o.blob.store.manifest(held.version, backup.key);
    if (manifest === undefined) throw new DwcpError('not_found', `the backup ${backup.key} of ${vm}: its manifest is missing`);
    const path = join(this.#o.dir, `${vm}-g${generation}.restore`);
    const unpin = this.#o.blob.store.pinManifest(manifest);
    const fh = await open(path, 'w', 0o600);
    try {
      for await (const bytes of this.#o.blob.store.readValue(manifest)) await fh.write(bytes);
      await fh.sync();
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    } finally {
      await fh.close();
      unpin();
    }
    this.#o.log.info({ vm, generation, backup: backup.key, takenAt: new Date(backup.takenAt).toISOString(), size: backup.size }, 'DR backup restored for the failed-over copy');
    return path;
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
