/**
 * Keeps the raft bench working: the closed-loop harness against in-process
 * fake targets (result shape, counting, errors); a real 3-member dwcp cluster:
 * a bench put through a follower read back through another member, a short
 * 1-client run, and nothing left behind after close; and, where etcd is
 * installed, a real 3-member etcd cluster: values read back through another
 * member (so the proto subset really speaks etcd's wire), a short 1-client
 * run, and nothing left behind after close. Says nothing about performance.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { dwcpKvTarget, startDwcpCluster } from '../../bench/dwcp-cluster.ts';
import { connectEtcd, etcdKvTarget, findEtcd, startEtcdCluster } from '../../bench/etcd.ts';
import { floorVerdict, ratioRows, runClosedLoop, type KvTarget } from '../../bench/raft.ts';
import { connectAdmin } from '../../src/admin/client.ts';

/** A store that acknowledges each put on the next turn of the event loop, recording which keys it saw. */
function fakeTarget(fail?: (n: number) => boolean): KvTarget & { keys: string[]; inFlight: number; maxInFlight: number } {
  let calls = 0;
  const target = {
    name: 'fake',
    keys: [] as string[],
    inFlight: 0,
    maxInFlight: 0,
    put(key: string, value: Uint8Array): Promise<void> {
      const n = calls++;
      target.inFlight++;
      target.maxInFlight = Math.max(target.maxInFlight, target.inFlight);
      return new Promise((resolve, reject) =>
        setImmediate(() => {
          target.inFlight--;
          if (value.byteLength !== 256) reject(new Error(`value of ${value.byteLength} bytes`));
          else if (fail?.(n) === true) reject(new Error(`put ${n} refused`));
          else {
            target.keys.push(key);
            resolve();
          }
        }),
      );
    },
    close: async () => {},
  };
  return target;
}

describe('runClosedLoop', () => {
  it('keeps exactly `clients` puts in flight and reports ops, rate and percentiles', async () => {
    const target = fakeTarget();
    const started = performance.now();
    const result = await runClosedLoop(target, { clients: 4, durationMs: 200, valueBytes: 256, keyspace: 1000 });
    const elapsedS = (performance.now() - started) / 1000;
    expect(result).toEqual({
      system: 'fake',
      clients: 4,
      ops_per_s: expect.any(Number),
      p50_ms: expect.any(Number),
      p99_ms: expect.any(Number),
      ops: target.keys.length,
      errors: 0,
      first_error: null,
    });
    expect(result.ops).toBeGreaterThan(0);
    expect(target.maxInFlight).toBe(4);
    // The rate is ops over the run's own wall time, which the caller's clock brackets.
    expect(result.ops_per_s).toBeGreaterThanOrEqual(result.ops / elapsedS / 1.01);
    expect(result.ops_per_s).toBeLessThanOrEqual((result.ops / 0.2) * 1.001);
    expect(result.p50_ms as number).toBeLessThanOrEqual(result.p99_ms as number);
    // Clients write disjoint keys: the first round is four distinct keys.
    expect(new Set(target.keys.slice(0, 4)).size).toBe(4);
    expect(target.keys.every((k) => /^dwcp-bench\/\d{8}$/.test(k))).toBe(true);
  });

  it('counts failed puts as errors, not as ops or latencies', async () => {
    // The first put fails: a CPU starved for the whole 100 ms still issues that one.
    const target = fakeTarget((n) => n % 2 === 0);
    const result = await runClosedLoop(target, { clients: 1, durationMs: 100, valueBytes: 256 });
    expect(result.errors).toBeGreaterThan(0);
    expect(result.ops).toBe(target.keys.length);
    expect(Math.abs(result.ops - result.errors)).toBeLessThanOrEqual(1);
    expect(result.first_error).toBe('put 0 refused');
  });

  it('reports null percentiles when nothing succeeded', async () => {
    const result = await runClosedLoop(fakeTarget(() => true), { clients: 2, durationMs: 50, valueBytes: 256 });
    expect(result).toMatchObject({ ops: 0, ops_per_s: 0, p50_ms: null, p99_ms: null });
    expect(result.errors).toBeGreaterThan(0);
  });

  it('refuses a bad option, naming it', async () => {
    await expect(runClosedLoop(fakeTarget(), { clients: 0, durationMs: 100, valueBytes: 256 })).rejects.toThrow(/clients must be a whole number of at least 1, got 0/);
  });
});

describe('dwcp target', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it('starts 3 dwcpd members with one leader, replicates a forwarded put, runs 1 client for 1 s, and leaves nothing behind', async () => {
    const workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-raft-test-'));
    cleanups.push(() => fs.rm(workDir, { recursive: true, force: true }));
    const cluster = await startDwcpCluster({ members: 3, workDir });
    cleanups.push(() => cluster.stop());
    expect(cluster.members.map((m) => m.name)).toEqual(['dc1', 'dc2', 'dc3']);
    const leader = await cluster.leader();
    const [follower, other] = cluster.members.filter((m) => m.name !== leader);

    // Only the follower's socket: the put must be forwarded to the leader to succeed.
    const target = await dwcpKvTarget({ ...cluster, members: [follower!] });
    expect(target.version).toEqual(expect.any(String));
    const value = new Uint8Array([0, 1, 2, 253, 254, 255]);
    await target.put('bench-raft-test/roundtrip', value);
    const reader = connectAdmin(other!.adminSocket, { timeoutMs: 5000 });
    cleanups.push(async () => reader.close());
    const read = await reader.kv.get({ key: 'bench-raft-test/roundtrip', consistency: 'strong', scope: 'datacenter', prefix: false, limit: 0, timeout_ms: 5000 });
    expect(read.items.map((i) => Buffer.from(i.value))).toEqual([Buffer.from(value)]);

    const result = await runClosedLoop(target, { clients: 1, durationMs: 1000, valueBytes: 256 });
    expect(result).toMatchObject({ system: 'dwcp', clients: 1, errors: 0 });
    expect(result.ops).toBeGreaterThan(0);
    await target.close();
    // close() stopped the cluster it owns: its processes are gone and its data dir with them.
    for (const m of cluster.members) expect(() => process.kill(m.pid, 0)).toThrow();
    expect(await fs.readdir(workDir)).toEqual([]);
  });
});

const etcdBinary = await findEtcd();

describe('etcd target', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  it.skipIf(etcdBinary === null)('starts 3 members that replicate a put, runs 1 client for 1 s, and leaves nothing behind (needs etcd installed)', async () => {
    const workDir = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-raft-test-'));
    cleanups.push(() => fs.rm(workDir, { recursive: true, force: true }));
    const cluster = await startEtcdCluster({ binary: etcdBinary as string, members: 3, workDir });
    cleanups.push(() => cluster.stop());
    expect(cluster.endpoints).toHaveLength(3);
    expect(cluster.endpoints).toContain(await cluster.leaderEndpoint());

    const key = new TextEncoder().encode('bench-raft-test/roundtrip');
    const value = new Uint8Array([0, 1, 2, 253, 254, 255]);
    const writer = connectEtcd(cluster.endpoints[0] as string);
    const reader = connectEtcd(cluster.endpoints[2] as string);
    cleanups.push(async () => {
      writer.close();
      reader.close();
    });
    await writer.put(key, value, 5000);
    expect(await reader.get(key, 5000)).toEqual(Buffer.from(value));
    expect(await reader.get(new TextEncoder().encode('bench-raft-test/absent'), 5000)).toBeNull();

    const target = await etcdKvTarget(cluster, 'all');
    expect(target.version).toMatch(/^3\./);
    const result = await runClosedLoop(target, { clients: 1, durationMs: 1000, valueBytes: 256 });
    await target.close();
    expect(result).toMatchObject({ system: 'etcd', clients: 1, errors: 0 });
    expect(result.ops).toBeGreaterThan(0);
    expect(result.p99_ms).toBeGreaterThan(0);
    // close() stopped the cluster it owns: its data dir is gone.
    expect(await fs.readdir(workDir)).toEqual([]);
  });
});

describe('raft bench floors', () => {
  const level = (system: string, clients: number, ops: number, p50: number, p99: number, peak: number[] | null = null) => ({
    system,
    clients,
    ops_per_s: ops,
    p50_ms: p50,
    p99_ms: p99,
    ops: 1,
    errors: 0,
    first_error: null,
    memory: peak === null ? null : { peak_rss_mb: peak, end_rss_mb: peak },
    cpu_ms_per_put: null,
  });

  it('judges each floor on its own: throughput and p99 at 16 and 64 clients, p50 at 1, memory only in a 150 s run at 16', () => {
    const results = [
      level('dwcp', 1, 300, 2.9, 10),
      level('etcd', 1, 500, 1, 5),
      level('dwcp', 16, 1000, 10, 30, [240, 251, 230]),
      level('etcd', 16, 1000, 10, 20, [100, 100, 100]),
      level('dwcp', 64, 4000, 10, 40),
      level('etcd', 64, 3900, 10, 30),
    ];
    const rows = ratioRows(results);
    expect(rows.map((r) => [r.clients, r.throughput, r.p50, r.p99])).toEqual([
      [1, 0.6, 2.9, 2],
      [16, 1, 1, 1.5],
      [64, 1.03, 1, 1.33],
    ]);
    const short = floorVerdict(rows, results, 10_000);
    expect(short.checks.map((c) => c.met)).toEqual([true, true, true, null]);
    expect(short.met).toBeNull();
    const long = floorVerdict(rows, results, 150_000);
    expect(long.checks.map((c) => c.met)).toEqual([true, true, true, false]);
    expect(long.checks[3]?.reason).toBe('peak 240, 251, 230 MiB');
    expect(long.met).toBe(false);
  });
});
