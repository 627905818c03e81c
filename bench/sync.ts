/**
 * The sync bench: the geo-distributed store on five local dwcpd daemons (one
 * region each, fsync on, loopback links, so datacenter mode and LZ4), through
 * their admin sockets. Measures:
 *
 * - eventual propagation: a put at `eventual` on one region, then every other
 *   region polled (a local read every POLL_MS) until all four have it; p50
 *   and p99 of put-to-everywhere, so the figure includes the writer's fsync
 *   (nothing leaves a region before it is durable there) and the receivers'
 *   merge, and overstates by up to one poll interval;
 * - quorum write latency: sequential puts at `quorum`, p50 and p99, next to
 *   `local` puts measured the same way (the reference: one fsync, no network);
 * - convergence after a partition: 2 | 3 (the test-only fault hook,
 *   DWCP_TEST_FAULTS), K distinct keys written at `local` on each side, then
 *   the heal, and the time until every region reports the same digest;
 * - bytes on the wire per update: a stream of small Yjs record updates
 *   (`crdt set` at eventual) from one region; the sync protocol's `push`
 *   payload bytes (codec frames as sent, header included, before
 *   Noise/Yamux framing) per update per receiving region, against the raw
 *   Yjs update size of the same edits made in process.
 *
 * Invariants: one JSON document on stdout, progress and a table on stderr
 * (bench/run.ts); the cluster is always destroyed, also after a failure.
 */
import { connectAdmin, type AdminClient } from '../src/admin/client.ts';
import { YjsRecord } from '../src/state/crdt/yjs-record.ts';
import { RaftCluster } from '../test/integration/raft-cluster.ts';
import { metricValue } from '../test/integration/harness.ts';
import { defineBench, intFlag, machineFacts, progress, quantile, renderTable, significant } from './run.ts';

const REGIONS = 5;
const POLL_MS = 10;
const CALL_TIMEOUT_MS = 10_000;
const CONVERGENCE_LIMIT_MS = 120_000;

interface SyncBenchOptions {
  writes: number;
  updates: number;
  keys: number;
}

interface Latencies {
  p50_ms: number;
  p99_ms: number;
  n: number;
}

function latencies(samples: readonly number[]): Latencies {
  return { p50_ms: significant(quantile(samples, 0.5)), p99_ms: significant(quantile(samples, 0.99)), n: samples.length };
}

const encoder = new TextEncoder();
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function geoPut(client: AdminClient, key: string, value: string, consistency: 'quorum' | 'local' | 'eventual') {
  return client.kv.put(key, encoder.encode(value), { scope: '', client_id: '', seq: 0, timeout_ms: CALL_TIMEOUT_MS, consistency });
}

async function hasKey(client: AdminClient, key: string): Promise<boolean> {
  const res = await client.kv.get({ key, consistency: 'local', scope: '', prefix: false, limit: 0, timeout_ms: CALL_TIMEOUT_MS });
  return res.items.length > 0;
}

/** Polls until `check` holds, up to `limitMs`; the elapsed ms. */
async function until(what: string, limitMs: number, check: () => Promise<boolean>, pollMs = POLL_MS): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (await check()) return performance.now() - started;
    if (performance.now() - started > limitMs) throw new Error(`${what} did not happen within ${limitMs} ms`);
    await delay(pollMs);
  }
}

async function allAlive(clients: readonly AdminClient[]): Promise<boolean> {
  const views = await Promise.all(clients.map((c) => c.members()));
  return views.every((v) => v.members.every((m) => m.health === 'alive'));
}

async function converged(client: AdminClient): Promise<boolean> {
  return (await client.state.digest(5_000)).converged;
}

async function measurePropagation(clients: readonly AdminClient[], writes: number): Promise<Latencies> {
  const samples: number[] = [];
  for (let i = 0; i < writes; i++) {
    const writer = i % clients.length;
    const key = `bench/propagate/${i}`;
    const started = performance.now();
    await geoPut(clients[writer] as AdminClient, key, `v${i}`, 'eventual');
    const others = clients.filter((_, j) => j !== writer);
    await Promise.all(others.map((c) => until(`${key} everywhere`, CALL_TIMEOUT_MS, () => hasKey(c, key))));
    samples.push(performance.now() - started);
  }
  return latencies(samples);
}

async function measureWrites(clients: readonly AdminClient[], writes: number, level: 'quorum' | 'local'): Promise<Latencies> {
  const samples: number[] = [];
  for (let i = 0; i < writes; i++) {
    const started = performance.now();
    const res = await geoPut(clients[i % clients.length] as AdminClient, `bench/${level}/${i}`, `v${i}`, level);
    samples.push(performance.now() - started);
    if (level === 'quorum' && res.regions_acked < 3) throw new Error(`quorum put acknowledged by ${res.regions_acked} regions`);
  }
  return latencies(samples);
}

interface WireResult {
  updates: number;
  raw_yjs_bytes_per_update: number;
  push_wire_bytes_per_update_per_region: number;
  push_raw_bytes_per_update_per_region: number;
  ratio_wire_to_yjs: number;
}

async function measureWire(cluster: RaftCluster, clients: readonly AdminClient[], updates: number): Promise<WireResult> {
  const writer = clients[0] as AdminClient;
  const pushBytes = async (kind: 'wire' | 'raw') =>
    metricValue(await cluster.daemon(0).scrape(), `dwcp_state_sync_${kind}_bytes_total`, { direction: 'sent', kind: 'push' }) ?? 0;
  const [wireBefore, rawBefore] = [await pushBytes('wire'), await pushBytes('raw')];
  // The same edits in process, from the same region id (Yjs client ids derive from it), for the raw update sizes.
  let state = YjsRecord.empty();
  let rawYjs = 0;
  for (let i = 0; i < updates; i++) {
    const field = `f${i % 16}`;
    const value = i;
    const delta = YjsRecord.set(state, cluster.nodes[0]?.name ?? 'n1', field, value);
    rawYjs += delta.byteLength;
    state = YjsRecord.merge(state, delta);
    await writer.state.update({ key: 'bench/record', op: 'set', type: 'yjs-record', amount: 0, element: '', field, value_json: JSON.stringify(value), consistency: 'eventual', timeout_ms: CALL_TIMEOUT_MS, ttl_ms: 0 });
  }
  await until('every region holding the record', CONVERGENCE_LIMIT_MS, () => converged(writer), 50);
  const wire = (await pushBytes('wire')) - wireBefore;
  const raw = (await pushBytes('raw')) - rawBefore;
  const receivers = clients.length - 1;
  const perUpdate = (bytes: number) => significant(bytes / updates / receivers);
  return {
    updates,
    raw_yjs_bytes_per_update: significant(rawYjs / updates),
    push_wire_bytes_per_update_per_region: perUpdate(wire),
    push_raw_bytes_per_update_per_region: perUpdate(raw),
    ratio_wire_to_yjs: significant(wire / receivers / rawYjs),
  };
}

async function partition(cluster: RaftCluster, groups: readonly (readonly number[])[]): Promise<void> {
  await Promise.all(
    groups.flatMap((group) =>
      group.map((i) => cluster.admin(i, (c) => c.state.setTestPartition(cluster.nodes.flatMap((n, j) => (group.includes(j) ? [] : [n.name]))))),
    ),
  );
}

async function measureConvergence(cluster: RaftCluster, clients: readonly AdminClient[], keys: number): Promise<{ divergent_keys: number; convergence_ms: number }> {
  await partition(cluster, [[0, 1], [2, 3, 4]]);
  // Each side writes its own keys (with a few in-flight at once, as independent clients would).
  const write = async (writer: number, side: string) => {
    const client = clients[writer] as AdminClient;
    for (let i = 0; i < keys; i += 16) {
      await Promise.all(Array.from({ length: Math.min(16, keys - i) }, (_, j) => geoPut(client, `bench/diverge/${side}/${i + j}`, `${side}-${i + j}`, 'local')));
    }
  };
  await Promise.all([write(0, 'minority'), write(2, 'majority')]);
  const healed = performance.now();
  await partition(cluster, [[0, 1, 2, 3, 4]]);
  await until('every region holding the same entries', CONVERGENCE_LIMIT_MS, () => converged(clients[0] as AdminClient), 50);
  return { divergent_keys: 2 * keys, convergence_ms: significant(performance.now() - healed) };
}

async function runSyncBench(opts: SyncBenchOptions): Promise<object> {
  progress(`sync: starting ${REGIONS} daemons`);
  const cluster = await RaftCluster.start('bench-sync', REGIONS, { env: () => ({ DWCP_TEST_FAULTS: '1' }) });
  const clients = cluster.nodes.map((n) => connectAdmin(n.socket, { timeoutMs: CALL_TIMEOUT_MS + 2_000 }));
  try {
    await until('every region hearing every other', 60_000, () => allAlive(clients), 100);
    progress(`sync: eventual propagation, ${opts.writes} puts`);
    const propagation = await measurePropagation(clients, opts.writes);
    progress(`sync: quorum and local put latency, ${opts.writes} puts each`);
    const quorum = await measureWrites(clients, opts.writes, 'quorum');
    const local = await measureWrites(clients, opts.writes, 'local');
    progress(`sync: bytes per update, ${opts.updates} record updates`);
    const wire = await measureWire(cluster, clients, opts.updates);
    progress(`sync: convergence after a 2 | 3 partition with ${opts.keys} keys written on each side`);
    const convergence = await measureConvergence(cluster, clients, opts.keys);
    const rows = [
      ['eventual propagation to all 4 others', `${propagation.p50_ms} ms`, `${propagation.p99_ms} ms`],
      ['quorum put (3 of 5 durable)', `${quorum.p50_ms} ms`, `${quorum.p99_ms} ms`],
      ['local put (reference: one fsync)', `${local.p50_ms} ms`, `${local.p99_ms} ms`],
    ];
    progress(`\n${renderTable(['measure', 'p50', 'p99'], rows)}`);
    progress(
      `\nconvergence after the heal, ${convergence.divergent_keys} divergent keys: ${convergence.convergence_ms} ms\n` +
        `bytes per record update per region: ${wire.push_wire_bytes_per_update_per_region} on the wire (push frames) vs ${wire.raw_yjs_bytes_per_update} raw Yjs update (x${wire.ratio_wire_to_yjs})\n`,
    );
    return { bench: 'sync', machine: machineFacts(), regions: REGIONS, propagation_eventual: propagation, put_quorum: quorum, put_local: local, convergence, wire };
  } finally {
    for (const c of clients) c.close();
    await cluster.destroy();
  }
}

export const syncBench = defineBench<SyncBenchOptions>({
  flags: {
    writes: { default: '200', description: 'puts measured for propagation, and for each of quorum and local latency' },
    updates: { default: '500', description: 'small Yjs record updates measured for bytes on the wire' },
    keys: { default: '1000', description: 'keys written on each side of the partition before the heal' },
  },
  parse: (flags) => ({ writes: intFlag(flags, 'writes'), updates: intFlag(flags, 'updates'), keys: intFlag(flags, 'keys') }),
  run: runSyncBench,
});
