/**
 * The fleet-records bench: what one VM record of the observed fleet state
 * (src/fleet/observed.ts) costs in memory on a geo store member, against the
 * issue's reference value (a 174-byte JSON object, the one that measured
 * ≈ 4.7 KB per entry per member), in the same run.
 *
 * How: a writer replica (the publishing region) puts N records at eventual
 * into a real StateReplica core with one peer; its Readies are handed to a
 * receiver replica (the member that holds another region's records) exactly
 * as the driver would, through step(). The writer is then dropped, the heap
 * collected, and the receiver's retained heap (plus V8's external memory,
 * ArrayBuffer backing stores) over the empty baseline, divided by N, is the
 * figure. Each measurement runs in a fresh process, so its RSS delta (which
 * includes heap growth and allocator slack, what a daemon pays) means
 * something too. Durable storage (LMDB, mmapped) is not
 * counted: it lives in the page cache, not in the heap.
 *
 * Invariants: one JSON document on stdout; the floor (≤ 1 024 bytes per VM
 * record per member) is reported as pass/fail, not asserted.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import v8 from 'node:v8';
import vm from 'node:vm';
import { defineBench, intFlag } from './run.ts';
import { StateReplica, type ReplicaLimits } from '../src/state/replica.ts';
import { encodeVmRecord, vmKey, type VmRecord } from '../src/fleet/observed.ts';
import type { JsonValue } from '../src/state/crdt/types.ts';

v8.setFlagsFromString('--expose-gc');
const gc = vm.runInNewContext('gc') as () => void;

const LIMITS: ReplicaLimits = {
  maxBatchEntries: 1_000,
  maxBatchBytes: 1 << 20,
  maxInFlightBytes: 1 << 30,
  maxRoundBytes: 1 << 22,
  pushTimeoutMs: 10_000,
  sessionTimeoutMs: 15_000,
  gcGraceMs: 60_000,
  maxClockOffsetMs: 60_000,
};

export const FLOOR_BYTES = 1024;

function vmRecord(i: number): VmRecord {
  return {
    region: 'dc-eu-1',
    provider: 'local',
    id: `local-${(0x10000000 + i).toString(16)}`,
    name: `web-${i}`,
    type: 'standard-2',
    zone: 'dc-eu-1a',
    vcpus: 2,
    memoryMiB: 4096,
    state: 'running',
    tags: { 'managed-by': 'dwcp', role: 'web', 'dwcp-vm': `web-${i}` },
    spot: false,
    launchedAtMs: 1_765_000_000_000 + i,
    image: 'debian-12',
    desiredVm: `web-${i}`,
    pricePerHour: 0.0523,
    cpu: 0.35,
    memory: 0.6,
  };
}

/** The reference: a 174-byte JSON object value. */
function referenceValue(i: number): JsonValue {
  const v = { id: `vm-${i.toString().padStart(8, '0')}`, region: 'dc-eu-1', state: 'running', vcpus: 2, memoryMiB: 4096, owner: 'team-a', pad: '' };
  v.pad = 'x'.repeat(Math.max(0, 174 - JSON.stringify(v).length));
  return v;
}

interface Measure {
  entries: number;
  valueBytes: number;
  heapBytesPerEntry: number;
  /** Memory V8 holds outside its heap (ArrayBuffer backing stores), per entry. */
  externalBytesPerEntry: number;
  rssBytesPerEntry: number;
}

function settle(): void {
  for (let i = 0; i < 4; i++) gc();
}

/** Puts n values (from `make`) through writer → receiver and measures the receiver's retained memory per entry. */
function measure(n: number, name: (i: number) => string, make: (i: number) => JsonValue): Measure {
  settle();
  const receiver = new StateReplica({ self: 'b', peers: ['a'], limits: LIMITS });
  receiver.peerUp('a');
  settle();
  const before = process.memoryUsage();
  let now = 1_765_000_000_000;
  let valueBytes = 0;
  {
    let writer: StateReplica | null = new StateReplica({ self: 'a', peers: ['b'], limits: LIMITS });
    writer.peerUp('b');
    const pump = (w: StateReplica) => {
      while (w.hasReady()) {
        const ready = w.ready(now);
        for (const { message } of ready.messages) receiver.step('a', message, now);
        w.advance(ready);
        // Acknowledgements go back so the writer's in-flight window frees.
        while (receiver.hasReady()) {
          const back = receiver.ready(now);
          for (const { message } of back.messages) w.step('b', message, now);
          receiver.advance(back);
        }
      }
    };
    for (let i = 0; i < n; i++) {
      const value = make(i);
      if (i === 0) valueBytes = Buffer.byteLength(JSON.stringify(value));
      writer.update(name(i), 'lww-register', { op: 'put', value }, 'eventual', now, { ttlMs: null, timeoutMs: 1_000 });
      if (i % 500 === 499) pump(writer);
      now += 1;
    }
    pump(writer);
    writer = null;
  }
  settle();
  if (receiver.size !== n) throw new Error(`the receiver holds ${receiver.size} entries, expected ${n}`);
  const after = process.memoryUsage();
  // Keep the receiver alive until after the measurement.
  if (receiver.size < 0) console.error('unreachable');
  return { entries: n, valueBytes, heapBytesPerEntry: Math.round((after.heapUsed - before.heapUsed) / n),
    externalBytesPerEntry: Math.round((after.external - before.external) / n),
    rssBytesPerEntry: Math.round((after.rss - before.rss) / n),
  };
}

type Kind = 'reference' | 'fleet';

function measureKind(kind: Kind, records: number): Measure {
  return kind === 'reference'
    ? measure(records, (i) => `bench/ref/${i}`, referenceValue)
    : measure(records, (i) => vmKey('dc-eu-1', 'local', `local-${(0x10000000 + i).toString(16)}`), (i) => encodeVmRecord(vmRecord(i)));
}

/** Each measurement in a fresh process, so RSS deltas are not hidden by a heap an earlier run already grew. */
function inChild(kind: Kind, records: number): Measure {
  const run = spawnSync(process.execPath, [fileURLToPath(import.meta.url), CHILD_FLAG, kind, String(records)], { encoding: 'utf8', maxBuffer: 1 << 20 });
  if (run.status !== 0) throw new Error(`measurement of ${kind} failed: ${run.stderr}`);
  return JSON.parse(run.stdout) as Measure;
}

const CHILD_FLAG = '--fleet-records-child';
if (process.argv[2] === CHILD_FLAG) {
  const kind = process.argv[3] === 'fleet' ? 'fleet' : 'reference';
  process.stdout.write(JSON.stringify(measureKind(kind, Number(process.argv[4]))));
}

/** Bytes of the geo store's LMDB files (the data file is mmapped: the pages a member touched count in its RSS). */
function stateFileBytes(dataDir: string): number {
  const dir = join(dataDir, 'state');
  return readdirSync(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (m === null) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

const MEMORY_METRICS = ['nodejs_heap_size_used_bytes', 'nodejs_heap_size_total_bytes', 'nodejs_external_memory_bytes', 'process_resident_memory_bytes'] as const;

async function memoryOf(metricsUrl: string): Promise<Record<string, number>> {
  const text = await (await fetch(metricsUrl)).text();
  const out: Record<string, number> = {};
  for (const name of MEMORY_METRICS) {
    const m = new RegExp(`^${name} (\\S+)`, 'm').exec(text);
    out[name] = m === null ? NaN : Number(m[1]);
  }
  return out;
}

async function entriesOf(metricsUrl: string): Promise<number> {
  const text = await (await fetch(metricsUrl)).text();
  const m = /^dwcp_state_entries (\d+)/m.exec(text);
  return m === null ? 0 : Number(m[1]);
}

/**
 * The setup: 3 real dwcpd members; VM records put at eventual through
 * one member's admin socket (`kv put --consistency eventual`, which stores
 * the bytes as a base64 string in an LWW register); each member's RSS before
 * and once every member holds every record, after SETTLE_MS for the heap to
 * shrink back from the burst (V8 collects when it wants; a daemon cannot be
 * asked to). RSS includes LMDB's touched mmapped pages.
 */
async function daemons(records: number): Promise<({ member: string; rssBytesPerEntry: number } & Record<string, number | string>)[]> {
  const { startDwcpCluster } = await import('./dwcp-cluster.ts');
  const { connectAdmin } = await import('../src/admin/client.ts');
  const cluster = await startDwcpCluster({ members: 3 });
  try {
    const before = cluster.members.map((m) => rssOf(m.pid));
    const memBefore = await Promise.all(cluster.members.map((m) => memoryOf(m.metricsUrl)));
    const base = await Promise.all(cluster.members.map((m) => entriesOf(m.metricsUrl)));
    const client = connectAdmin(cluster.members[0]!.adminSocket, { timeoutMs: 10_000 });
    let next = 0;
    const worker = async () => {
      for (let i = next++; i < records; i = next++) {
        const value = Buffer.from(encodeVmRecord(vmRecord(i)));
        await client.kv.put(vmKey('dc-eu-1', 'local', `local-${(0x10000000 + i).toString(16)}`), value, { scope: 'datacenter', client_id: 'bench', seq: i + 1, timeout_ms: 10_000, consistency: 'eventual' });
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    client.close();
    const deadline = Date.now() + 120_000;
    for (;;) {
      const now = await Promise.all(cluster.members.map((m) => entriesOf(m.metricsUrl)));
      if (now.every((n, i) => n - (base[i] ?? 0) >= records)) break;
      if (Date.now() > deadline) throw new Error(`members hold ${now.join(', ')} entries, not ${records} more each, after 120 s`);
      await new Promise((r) => setTimeout(r, 200));
    }
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const memAfter = await Promise.all(cluster.members.map((m) => memoryOf(m.metricsUrl)));
    return cluster.members.map((m, i) => ({
      member: m.name,
      lmdbFileBytesPerEntry: Math.round(stateFileBytes(m.dataDir) / records),
      rssBytesPerEntry: Math.round((rssOf(m.pid) - (before[i] ?? 0)) / records),
      ...Object.fromEntries(MEMORY_METRICS.map((name) => [`${name}_per_entry`, Math.round(((memAfter[i]?.[name] ?? NaN) - (memBefore[i]?.[name] ?? NaN)) / records)])),
    }));
  } finally {
    await cluster.stop();
  }
}

const SETTLE_MS = 10_000;

export const fleetRecordsBench = defineBench({
  flags: {
    records: { default: '100000', description: 'VM records to put (and reference values)' },
    daemons: { default: '0', description: 'also put this many VM records into 3 real dwcpd members and report their RSS per record (0: skip)' },
  },
  parse: (flags) => ({ records: intFlag(flags, 'records', 1_000), daemonRecords: intFlag(flags, 'daemons', 0) }),
  async run({ records, daemonRecords }) {
    if (daemonRecords > 0) {
      const rows = await daemons(daemonRecords);
      for (const r of rows) console.error(`dwcpd ${r.member}: per VM record ${JSON.stringify(r)} (${daemonRecords} records, eventual, 3 members)`);
      return { bench: 'fleet-records', daemonRecords, daemons: rows };
    }
    const reference = inChild('reference', records);
    const fleet = inChild('fleet', records);
    const rows = [
      ['reference (174-byte JSON object)', reference],
      ['fleet VM record', fleet],
    ] as const;
    for (const [label, m] of rows) {
      console.error(
        `${label.padEnd(34)} value ${String(m.valueBytes).padStart(4)} B   heap ${String(m.heapBytesPerEntry).padStart(5)} B/entry   ` +
          `external ${String(m.externalBytesPerEntry).padStart(4)} B/entry   rss ${String(m.rssBytesPerEntry).padStart(5)} B/entry`,
      );
    }
    const pass = fleet.heapBytesPerEntry + fleet.externalBytesPerEntry <= FLOOR_BYTES;
    console.error(`floor ≤ ${FLOOR_BYTES} B per VM record per member (heap + external): ${pass ? 'met' : 'NOT met'}`);
    return { bench: 'fleet-records', records, reference, fleet, floorBytes: FLOOR_BYTES, floorMet: pass };
  },
});
