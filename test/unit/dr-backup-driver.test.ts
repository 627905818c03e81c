/**
 * The backup driver (src/dr/backup-driver.ts) against a real blob store and
 * the real fleet state machine, with the provider, the DR region's
 * acknowledgement and the clock faked: a protected VM running here is backed
 * up at once, then every half RPO, each backup after the first sent against
 * the one before (baselineKey) and recorded in the log only after its send
 * returned (committed at the DR region); a failed snapshot is counted and
 * retried after 5 s; retention drops old backups here but keeps the newest
 * committed one; as the DR region, the driver exports the RPO from its own
 * store.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { chunkingForAverage } from '../../src/blob/chunker.ts';
import type { PutOutcome, SendOutcome } from '../../src/blob/service.ts';
import { BlobStore } from '../../src/blob/store.ts';
import { BackupDriver } from '../../src/dr/backup-driver.ts';
import { backupKey } from '../../src/dr/backup-plan.ts';
import { createDrMetrics } from '../../src/dr/metrics.ts';
import { DwcpError } from '../../src/errors.ts';
import { parseFleetCommand, type FleetCommandInput } from '../../src/fleet/commands.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { createLogger } from '../../src/log.ts';
import { metricValue } from '../integration/harness.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

const HOUR = 3_600_000;
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** Resolves once `check` holds, polling; fails naming `what` after a generous deadline. */
async function until<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, ms = 20_000): Promise<T> {
  const deadline = performance.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (performance.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function rig(region: 'dc1' | 'dc2') {
  const dir = await mkdtemp(join(tmpdir(), 'dwcp-drbd-'));
  const store = await BlobStore.open({ dir: join(dir, 'blobs'), chunking: chunkingForAverage(4096), maxValueBytes: 1 << 30, noSync: true });
  const m: FleetStateMachine = machineWith(registerRegion('dc1', [localProvider(8, 16)]), registerRegion('dc2', [localProvider(8, 16)]));
  for (const c of [create(spec('web1')), assign('web1', 'dc1', 1), parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2', rpoMs: 10_000, retentionMs: HOUR })]) expect(m.apply(c)).toMatchObject({ ok: true });
  const clock = { ms: 1_800_000_000_000 };
  const registry = new Registry();
  const puts: { key: string; baselineKey: string | undefined }[] = [];
  const committed: FleetCommandInput[] = [];
  let snapshots = 0;
  let failNext = false;
  const driver = new BackupDriver({
    region,
    state: () => m,
    commit: async (command) => {
      committed.push(command);
      return m.apply(parseFleetCommand(command));
    },
    copy: async () => ({ provider: 'local', id: 'local-1' }),
    backupDisk: async (_provider, _id, target) => {
      if (failNext) {
        failNext = false;
        throw new DwcpError('unsupported', 'provider aws (aws) cannot take DR backups yet (local, qemu can)');
      }
      snapshots++;
      await writeFile(target, `disk ${'x'.repeat(20_000)} ${snapshots}\n`);
    },
    blob: {
      store,
      remove: (key) => store.remove(key),
      put: async (path, key, opts) => {
        const stored = await store.ingestFile(key as string, path);
        puts.push({ key: stored.key, baselineKey: opts?.baselineKey });
        // The DR region's store committed it and answered (the real send returns only then).
        return { stored, ingestSeconds: 0, sent: { kind: opts?.baselineKey === undefined ? 'full' : 'delta', wireBytesSent: 100 } as SendOutcome } satisfies PutOutcome;
      },
    },
    dir: join(dir, 'dr'),
    commitTimeoutMs: 1_000,
    metrics: createDrMetrics([registry]),
    log: createLogger('silent'),
    now: () => clock.ms,
  });
  cleanups.push(async () => {
    await driver.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });
  return { driver, store, m, clock, registry, puts, committed, failOnce: () => (failNext = true) };
}

describe('the backup driver', () => {
  it('backs up at once, then every half RPO as deltas; records each once committed; retries a failure after 5 s; retention keeps the newest committed', async () => {
    const r = await rig('dc1');
    await r.driver.start();
    await until('the first backup recorded', () => r.committed.length === 1);
    const first = backupKey('web1', r.clock.ms, 1);
    expect(r.puts).toEqual([{ key: first, baselineKey: undefined }]);
    expect(r.m.vm('web1')?.protection?.lastBackup).toMatchObject({ key: first, region: 'dc1', generation: 1, takenAt: r.clock.ms });
    expect(r.store.current(first)).toBeDefined();

    // Not before half the RPO; then against the one before.
    r.clock.ms += 4_000;
    await r.driver.nextPass();
    await r.driver.nextPass();
    expect(r.puts).toHaveLength(1);
    r.clock.ms += 1_000;
    await until('the second backup recorded', () => r.committed.length === 2);
    expect(r.puts[1]).toEqual({ key: backupKey('web1', r.clock.ms, 1), baselineKey: first });

    // A failed snapshot: counted, nothing recorded, retried 5 s later.
    r.failOnce();
    r.clock.ms += 5_000;
    await until('the failure counted', async () => metricValue(await r.registry.metrics(), 'dwcp_dr_backups_total', { result: 'failed' }) === 1);
    expect(r.committed).toHaveLength(2);
    expect(r.puts).toHaveLength(2);
    r.clock.ms += 4_000;
    await r.driver.nextPass();
    await r.driver.nextPass();
    expect(r.committed).toHaveLength(2);
    r.clock.ms += 1_000;
    await until('the retry recorded', () => r.committed.length === 3);

    // Two hours on: every backup is past the 1 h retention; the newest committed one stays, the rest go.
    r.clock.ms += 2 * HOUR;
    await until('a backup after the gap', () => r.committed.length >= 4);
    const newest = r.m.vm('web1')?.protection?.lastBackup?.key;
    r.clock.ms += 31_000;
    await until('old backups dropped', () => r.store.list('dr/backup/web1/').length <= 2);
    const left = r.store.list('dr/backup/web1/').map((v) => v.key);
    expect(left).toContain(newest);
    expect(left).not.toContain(first);
  }, 60_000);

  it('as the DR region: exports the RPO from its own store (+Inf before the first backup) and the target', async () => {
    const r = await rig('dc2');
    await r.driver.start();
    await r.driver.nextPass();
    expect(await r.registry.metrics()).toMatch(/^dwcp_dr_rpo_seconds\{vm="web1"\} \+Inf$/m);
    expect(metricValue(await r.registry.metrics(), 'dwcp_dr_rpo_target_seconds', { vm: 'web1' })).toBe(10);
    // A backup arrives (the blob service's receive commits it under its key).
    await r.store.ingestBytes(backupKey('web1', r.clock.ms - 3_000, 1), new Uint8Array(4096));
    await r.driver.nextPass();
    await r.driver.nextPass();
    expect(metricValue(await r.registry.metrics(), 'dwcp_dr_rpo_seconds', { vm: 'web1' })).toBe(3);
    expect(r.driver.lastBackupAt('web1')).toBe(r.clock.ms - 3_000);
    // No backups taken here: the VM does not run here.
    expect(r.puts).toEqual([]);
    // Unprotected: the series go.
    r.m.apply(parseFleetCommand({ kind: 'unprotect', vm: 'web1' }));
    await r.driver.nextPass();
    await r.driver.nextPass();
    expect(await r.registry.metrics()).not.toMatch(/^dwcp_dr_rpo_seconds\{/m);
  }, 60_000);
});
