/**
 * Entry point of the benchmarks, `npm run bench -- <name> [options]`, and the
 * few pieces every bench shares: flag parsing, order statistics, machine facts
 * and the stderr table.
 *
 * Invariants:
 * - A bench writes exactly one JSON document to stdout and everything meant
 *   for people (progress, tables, errors) to stderr, so `> out.json` keeps
 *   only the machine-readable result.
 * - A bench measures its subject side by side with a reference in the same
 *   process and run, and reports ratios: absolute numbers from one machine
 *   say little about another, ratios from the same run do.
 * - Bench modules are imported only when chosen, so one bench's dependencies
 *   (libp2p, codecs, ...) never slow down or break another.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';

// A bench stopped by a signal (a test's timeout, ^C) must not leave its clusters running: Node's default for these
// ends the process without 'exit' handlers, and the member groups kill their processes and remove their data there.
process.once('SIGTERM', () => process.exit(143));
process.once('SIGINT', () => process.exit(130));

export interface FlagSpec {
  /** Default value, as it would be typed on the command line. */
  default: string;
  description: string;
}

export interface BenchDefinition<Options> {
  flags: Record<string, FlagSpec>;
  /** Turns parsed flag strings into the bench's options; throws a FlagError for bad input. */
  parse(flags: Record<string, string>): Options;
  /** Runs the bench, reporting progress and a table on stderr; resolves to the JSON document for stdout. */
  run(options: Options): Promise<object>;
}

/** A bench with its option type erased, so the dispatch table can hold benches of every kind. */
export interface RunnableBench {
  flags: Record<string, FlagSpec>;
  /** Parses flags (throwing a FlagError for bad input) and returns the run, not yet started. */
  prepare(flags: Record<string, string>): () => Promise<object>;
}

export function defineBench<Options>(def: BenchDefinition<Options>): RunnableBench {
  return {
    flags: def.flags,
    prepare(flags) {
      const options = def.parse(flags);
      return () => def.run(options);
    },
  };
}

interface BenchEntry {
  summary: string;
  load(): Promise<RunnableBench>;
}

/** The dispatch table: a new bench adds one entry here and its own module under bench/. */
const BENCHES: Record<string, BenchEntry> = {
  transport: {
    summary: 'framed libp2p stream (TCP + Noise + Yamux + FramedStream) vs raw TCP on loopback: throughput and ping-pong latency',
    load: async () => (await import('./transport.ts')).transportBench,
  },
  raft: {
    summary: '3-member dwcp vs 3-member etcd on this machine: closed-loop 256-byte puts at 1, 16 and 64 clients, ops/s and p50/p99 latency',
    load: async () => (await import('./raft.ts')).raftBench,
  },
  pbft: {
    summary: 'federation scope on PBFT (4 untrusted dwcpd) vs datacenter scope on Raft (3 trusted) on this machine: closed-loop puts at 1, 16, 64 clients, PBFT/Raft ratio, Ed25519 verifications/s per core',
    load: async () => (await import('./pbft.ts')).pbftBench,
  },
  'pbft-storage': {
    summary: "one PBFT replica's slot writes at the 64-client bench's rate (3 writes per batch, 4 batches in flight) on the real PbftStorage: process CPU per batch and put, bytes per batch, fsync ms",
    load: async () => (await import('./pbft-storage.ts')).pbftStorageBench,
  },
  codec: { summary: 'our LZ4 and zstd (levels 1, 3, 9) vs the lz4 and zstd CLIs on VM-image-like data: MiB/s and ratio', load: async () => (await import('./codec.ts')).codecBench },
  'blob-stage': {
    summary: "the blob store's per-chunk bookkeeping on the receive path alone (staged writes of 64-byte chunks in batches of 128, commit, release): CPU µs per chunk per step; --src compares another checkout",
    load: async () => (await import('./blob-stage.ts')).blobStageBench,
  },
  delta: { summary: 'delta sync of a VM image between two daemons (wire and time vs a full sync), baseline cache hit ratio, bulk MiB/s vs raw TCP', load: async () => (await import('./delta.ts')).deltaBench },
  'fleet-records': {
    summary: 'memory per VM record of the observed fleet state on a geo store member (heap and RSS per entry) vs a 174-byte reference value; floor ≤ 1 KB',
    load: async () => (await import('./fleet-records.ts')).fleetRecordsBench,
  },
  sync: {
    summary: 'geo state on 5 local daemons: eventual propagation p50/p99, quorum put latency, convergence after a 2|3 partition, wire bytes per Yjs update',
    load: async () => (await import('./sync.ts')).syncBench,
  },
  placement: {
    summary: 'the pure placement function on 20, 200 and 1 000 regions with 100 000 existing VMs and 5 constraints, binpack and spread: decisions/s and p50/p99',
    load: async () => (await import('./placement.ts')).placementBench,
  },
  policy: {
    summary: 'one policy evaluation per (VM, candidate) with 50 rules that all apply: p50/p99 as the state machine (evaluate) and placement (scope) run it, vs every rule afresh; floor p99 < 0.1 ms',
    load: async () => (await import('./policy.ts')).policyBench,
  },
  migrate: {
    summary: 'live migration of a TCG guest dirtying 0/10/50 MiB/s through the qemu transport (libp2p relay) vs QEMU direct between the same QEMUs: downtime (QEMU, tick gap), total time, converged',
    load: async () => (await import('./migrate.ts')).migrateBench,
  },
  cost: {
    summary: 'the optimiser (rightsizing, idle, spot, reserved, arbitrage) over 10 000 VMs × 14 days of 5-minute samples (40 M points) vs a bare scan of the same points: seconds, RSS and heap; floor < 60 s',
    load: async () => (await import('./cost.ts')).costBench,
  },
  dr: {
    summary: 'disaster recovery on 3 real dwcpd: N protected VMs (local provider) in a region that is lost (kill -9): detection, all assigned and running at the DR region, p50/p99 RTO; a 2-check blip fails nothing over; no double-running copy',
    load: async () => (await import('./dr.ts')).drBench,
  },
  'placement-e2e': {
    summary: 'vm create --placement auto to running on 3 real daemons (local providers, different prices) vs unmanaged vm create --provider on the same daemons: p50/p99 placed and running, creates/s',
    load: async () => (await import('./placement-e2e.ts')).placementE2eBench,
  },
};

export class FlagError extends Error {
  constructor(flag: string, problem: string) {
    super(`--${flag}: ${problem}`);
    this.name = 'FlagError';
  }
}

function flagValue(flags: Record<string, string>, flag: string): string {
  const value = flags[flag];
  if (value === undefined) throw new FlagError(flag, 'is missing');
  return value;
}

/** One of `allowed`, e.g. `--only both`. */
export function oneOf<T extends string>(flags: Record<string, string>, flag: string, allowed: readonly T[]): T {
  const value = flags[flag];
  const match = allowed.find((a) => a === value);
  if (match === undefined) throw new FlagError(flag, `must be one of ${allowed.join(', ')}, got "${value ?? ''}"`);
  return match;
}

/** A whole number from `min` up, e.g. `--repeat 3`. */
export function intFlag(flags: Record<string, string>, flag: string, min = 1): number {
  const text = flagValue(flags, flag);
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min) {
    throw new FlagError(flag, `must be a whole number of at least ${min}, got "${text}"`);
  }
  return value;
}

/** A positive number, fractions allowed, e.g. `--total-mb 0.5`. */
export function positiveFlag(flags: Record<string, string>, flag: string): number {
  const text = flagValue(flags, flag);
  const value = Number(text);
  if (text.trim() === '' || !Number.isFinite(value) || value <= 0) throw new FlagError(flag, `must be a positive number, got "${text}"`);
  return value;
}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };

/** A comma-separated list of byte sizes with optional binary suffixes: `1k,64k,1m` (k = KiB, m = MiB). */
export function sizesFlag(flags: Record<string, string>, flag: string): number[] {
  const text = flagValue(flags, flag);
  return text.split(',').map((item) => {
    const match = /^(\d+)([kmg]?)i?b?$/i.exec(item.trim());
    const unit = SIZE_UNITS[match?.[2]?.toLowerCase() ?? ''];
    const bytes = match === null || unit === undefined ? NaN : Number(match[1]) * unit;
    if (!Number.isSafeInteger(bytes) || bytes < 1) throw new FlagError(flag, `"${item}" is not a byte size of at least 1 (e.g. 512, 64k, 1m)`);
    return bytes;
  });
}

/** `1024` → `1 KiB`; sizes that are not whole KiB/MiB stay in bytes. */
export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 2 && bytes % 1024 ** 2 === 0) return `${bytes / 1024 ** 2} MiB`;
  if (bytes >= 1024 && bytes % 1024 === 0) return `${bytes / 1024} KiB`;
  return `${bytes} B`;
}

export function median(values: readonly number[]): number {
  return quantile(values, 0.5);
}

/** Linear-interpolated quantile (q in 0..1) of unsorted values. */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) throw new RangeError('quantile of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const below = sorted[lo] as number;
  const above = sorted[Math.min(lo + 1, sorted.length - 1)] as number;
  return below + (above - below) * (pos - lo);
}

/** Keeps `digits` significant digits, so JSON results stay readable without losing meaningful precision. */
export function significant(value: number, digits = 4): number {
  return Number(value.toPrecision(digits));
}

/** The facts that every result carries, so numbers from different runs can be told apart. */
export function machineFacts(): { node: string; cpus: number; cpu_model: string; platform: string; date: string; loadavg: number[] } {
  return {
    node: process.version,
    cpus: os.availableParallelism(),
    cpu_model: os.cpus()[0]?.model ?? 'unknown',
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    date: new Date().toISOString(),
    loadavg: os.loadavg().map((l) => significant(l, 3)),
  };
}

/** Left-aligned first column, right-aligned numbers; for stderr. */
export function renderTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  ');
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** Runs `work` for each item with at most `limit` in flight. */
export async function pool<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await work(items[next++] as T);
    }),
  );
}

export function progress(message: string): void {
  process.stderr.write(`${message}\n`);
}

function usage(): string {
  const names = Object.entries(BENCHES).map(([name, b]) => `  ${name.padEnd(12)} ${b.summary}`);
  return ['usage: npm run bench -- <name> [--flag value ...]   (--help after a name lists its flags)', '', 'benches:', ...names].join('\n');
}

function flagHelp(name: string, def: RunnableBench): string {
  const lines = Object.entries(def.flags).map(([flag, spec]) => `  --${flag.padEnd(10)} ${spec.description} (default ${spec.default})`);
  return [`usage: npm run bench -- ${name} [--flag value ...]`, '', ...lines].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h') {
    progress(usage());
    return name === undefined ? 2 : 0;
  }
  const entry = BENCHES[name];
  if (entry === undefined) {
    progress(`unknown bench "${name}"\n\n${usage()}`);
    return 2;
  }
  const def = await entry.load();
  if (rest.includes('--help') || rest.includes('-h')) {
    progress(flagHelp(name, def));
    return 0;
  }
  let run: () => Promise<object>;
  try {
    const { values } = parseArgs({
      args: rest,
      strict: true,
      allowPositionals: false,
      options: Object.fromEntries(Object.entries(def.flags).map(([flag, spec]) => [flag, { type: 'string', default: spec.default }])),
    });
    run = def.prepare(values as Record<string, string>);
  } catch (err) {
    progress(`${name}: ${err instanceof Error ? err.message : String(err)}\n\n${flagHelp(name, def)}`);
    return 2;
  }
  const result = await run();
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  return 0;
}

if (import.meta.main) {
  main(process.argv.slice(2)).then(
    // Exit once stdout is flushed rather than when the event loop empties:
    // libp2p 3.3 leaves a 1 s address-manager debounce timer armed after stop().
    (code) => process.stdout.write('', () => process.exit(code)),
    (err: unknown) => {
      progress(err instanceof Error ? (err.stack ?? err.message) : String(err));
      process.exitCode = 1;
    },
  );
}
