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

export const fleetRecordsBench = defineBench({
  flags: { records: { default: '100000', description: 'VM records to put (and reference values)' } },
  parse: (flags) => ({ records: intFlag(flags, 'records', 1_000) }),
  async run({ records }) {
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
