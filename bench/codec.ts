/**
 * The codec bench: our LZ4 and zstd codecs (src/codec/codecs.ts) against the
 * `lz4` and `zstd` command-line tools (Debian packages) on the same bytes in
 * the same run, as compress and decompress MiB/s and compression ratio, with
 * ours/CLI ratios against the floor (ours ≥ 0.8 × the CLI).
 *
 * Invariants:
 * - The data is generated from a fixed seed (`vmImageLike`) and looks like a
 *   VM image: 4 KiB-aligned runs of zeros, log-like text, compressible binary
 *   records and random (already compressed or encrypted) bytes. Same seed and
 *   size, same bytes, on every machine.
 * - Both sides do the same work, single-threaded, at the same level: the CLIs
 *   run with `-T1` (zstd) and without content checksums (`--no-check`,
 *   `--no-frame-crc`) because our codec payloads carry none (the frame's
 *   CRC-32 is outside the codec and outside this bench). LZ4 is level 1 on both.
 * - CLI times are wall time of the whole process on files in a tmpdir (page
 *   cache), process start included and reported separately as
 *   `cli_startup_ms` (an empty-input run); nothing is subtracted, the input is
 *   large enough (64 MiB by default) that start-up is a small share.
 * - Ours compresses the data as consecutive blocks of `--block-mb` (4 MiB by
 *   default), each its own payload, one after another on one thread: that is
 *   how the daemon frames a large value, and it is what the lz4 CLI does too
 *   (independent 4 MiB blocks by default). One 64 MiB call would instead
 *   spend a large share of its time page-faulting a fresh 64 MiB output
 *   buffer (glibc mmaps allocations that large), which the CLIs never do.
 *   zstd's CLI streams with its level's window across the whole file; the
 *   printed compression ratios show what the blocks cost (nothing measurable
 *   at levels ≤ 9, whose windows are ≤ 8 MiB).
 * - Each case runs once as a discarded warm-up, then `repeat` times with ours
 *   and the CLI interleaved; medians are reported. Every round trip is checked
 *   byte for byte, so a fast wrong codec cannot pass.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { codecFor, codecLabel, type CodecSpec } from '../src/codec/codecs.ts';
import { defineBench, FlagError, intFlag, machineFacts, median, positiveFlag, progress, renderTable, significant } from './run.ts';

const run = promisify(execFile);
const MIB = 1024 ** 2;
const FLOOR = 0.8;

/** mulberry32: a tiny fixed-seed PRNG; quality is ample for test data. */
export class Prng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed | 0;
  }
  /** A uniform 32-bit unsigned integer. */
  next(): number {
    this.#state = (this.#state + 0x6d2b79f5) | 0;
    let t = this.#state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** Uniform in [0, n). */
  below(n: number): number {
    return Math.floor((this.next() / 2 ** 32) * n);
  }
}

const WORDS = (
  'kernel systemd started stopped service network interface link up down eth0 disk sda1 mounted ext4 ' +
  'filesystem journal audit user root session opened closed for pid uid gid cron daemon warning error ' +
  'info debug request response status ok failed retry timeout connection accepted from port http GET ' +
  'POST /api/v1/vm /var/lib/docker /usr/lib/x86_64-linux-gnu libc.so.6 config value true false null'
).split(' ');

const BLOCK = 4096;
type SegmentKind = 'zeros' | 'text' | 'records' | 'random';

function segmentKind(rng: Prng): SegmentKind {
  const r = rng.below(100);
  return r < 35 ? 'zeros' : r < 55 ? 'text' : r < 80 ? 'records' : 'random';
}

function fillText(out: Uint8Array, rng: Prng): void {
  const encoder = new TextEncoder();
  let line = 0;
  let pos = 0;
  while (pos < out.byteLength) {
    const words: string[] = [];
    for (let i = 3 + rng.below(10); i > 0; i--) words.push(WORDS[rng.below(WORDS.length)] as string);
    const text = `2026-11-23T10:${String(line % 60).padStart(2, '0')}:${String(rng.below(60)).padStart(2, '0')}Z node-${rng.below(8)} ${words.join(' ')}\n`;
    pos += encoder.encodeInto(text, out.subarray(pos)).written;
    line++;
  }
}

/** Binary that compresses like executables and databases: fixed-layout records with counters, small fields and padding. */
function fillRecords(out: Uint8Array, rng: Prng): void {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const base = rng.next();
  for (let pos = 0, n = 0; pos + 32 <= out.byteLength; pos += 32, n++) {
    view.setUint32(pos, base + n, true);
    view.setUint32(pos + 4, rng.below(256), true);
    view.setUint16(pos + 8, rng.below(16), true);
    view.setUint32(pos + 12, rng.next() & 0x0f0f, true);
    view.setUint32(pos + 16, 0xdeadbeef, true);
  }
}

function fillRandom(out: Uint8Array, rng: Prng): void {
  for (let pos = 0; pos < out.byteLength; pos += 4) {
    const v = rng.next();
    out[pos] = v;
    out[pos + 1] = v >>> 8;
    out[pos + 2] = v >>> 16;
    out[pos + 3] = v >>> 24;
  }
}

const FILL: Record<SegmentKind, (out: Uint8Array, rng: Prng) => void> = {
  zeros: () => {},
  text: fillText,
  records: fillRecords,
  random: fillRandom,
};

/** `bytes` of deterministic VM-image-like data: segments of 1–64 blocks of 4 KiB, each zeros, text, records or random. */
export function vmImageLike(bytes: number, seed = 1): Uint8Array {
  const out = new Uint8Array(bytes);
  const rng = new Prng(seed);
  for (let pos = 0; pos < bytes; ) {
    const length = Math.min(bytes - pos, (1 + rng.below(64)) * BLOCK);
    FILL[segmentKind(rng)](out.subarray(pos, pos + length), rng);
    pos += length;
  }
  return out;
}

export interface CodecBenchOptions {
  sizeBytes: number;
  /** Ours compresses the data as consecutive blocks of this size (one frame each in the daemon). */
  blockBytes: number;
  zstdLevels: number[];
  repeat: number;
  seed: number;
}

export interface CodecCase {
  codec: string;
  level: number;
  ours_compress_mib_s: number;
  cli_compress_mib_s: number;
  ours_decompress_mib_s: number;
  cli_decompress_mib_s: number;
  /** raw / compressed bytes. */
  ours_compression_ratio: number;
  cli_compression_ratio: number;
  /** ours_compress_mib_s / cli_compress_mib_s; the floor is 0.8. */
  speed_ratio_compress: number;
  /** ours_decompress_mib_s / cli_decompress_mib_s; the floor is 0.8. */
  speed_ratio_decompress: number;
  meets_floor: boolean;
}

export interface CodecResult extends ReturnType<typeof machineFacts> {
  bench: 'codec';
  options: { size_bytes: number; block_bytes: number; zstd_levels: number[]; repeat: number; seed: number };
  tools: { lz4: string; zstd: string };
  cli_startup_ms: { lz4: number; zstd: number };
  ratios: string;
  cases: CodecCase[];
  loadavg_after: number[];
}

/** How one codec at one level is run by a CLI; file paths are appended. */
interface CliCommand {
  tool: 'lz4' | 'zstd';
  compress: (input: string, output: string) => string[];
  decompress: (input: string, output: string) => string[];
}

function cliFor(spec: CodecSpec): CliCommand {
  if (spec.name === 'lz4') {
    return {
      tool: 'lz4',
      compress: (i, o) => ['-1', '-q', '-f', '--no-frame-crc', i, o],
      decompress: (i, o) => ['-d', '-q', '-f', i, o],
    };
  }
  return {
    tool: 'zstd',
    compress: (i, o) => [`-${spec.level}`, '-T1', '-q', '-f', '--no-check', i, '-o', o],
    decompress: (i, o) => ['-d', '-q', '-f', i, '-o', o],
  };
}

async function timed<T>(work: () => Promise<T>): Promise<{ seconds: number; result: T }> {
  const start = performance.now();
  const result = await work();
  return { seconds: (performance.now() - start) / 1000, result };
}

/** The tool's version line, or an error naming the missing Debian package. */
export async function cliVersion(tool: 'lz4' | 'zstd'): Promise<string> {
  try {
    const { stdout, stderr } = await run(tool, ['-V']);
    return `${stdout}${stderr}`.trim().split('\n')[0] ?? tool;
  } catch (err) {
    throw new Error(`codec bench: the "${tool}" command is not available (apt-get install ${tool}): ${err instanceof Error ? err.message : String(err)}`);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

interface Sample {
  compress: number;
  decompress: number;
  wireBytes: number;
}

/** `data` cut into consecutive blocks of at most `blockBytes`. */
function blocksOf(data: Uint8Array, blockBytes: number): Uint8Array[] {
  const blocks: Uint8Array[] = [];
  for (let pos = 0; pos < data.byteLength; pos += blockBytes) blocks.push(data.subarray(pos, pos + blockBytes));
  return blocks;
}

/** Ours, one block after another on one thread, as the daemon frames a large value. */
async function oursOnce(spec: CodecSpec, blocks: readonly Uint8Array[]): Promise<Sample> {
  const codec = codecFor(spec);
  const packed = await timed(async () => {
    const out: Uint8Array[] = [];
    for (const block of blocks) out.push(await codec.compress(block));
    return out;
  });
  const unpacked = await timed(async () => {
    const out: Uint8Array[] = [];
    for (const [i, payload] of packed.result.entries()) out.push(await codec.decompress(payload, (blocks[i] as Uint8Array).byteLength));
    return out;
  });
  if (!unpacked.result.every((block, i) => sameBytes(block, blocks[i] as Uint8Array))) {
    throw new Error(`codec bench: ${codecLabel(spec)} round trip changed the data`);
  }
  return { compress: packed.seconds, decompress: unpacked.seconds, wireBytes: packed.result.reduce((sum, p) => sum + p.byteLength, 0) };
}

async function cliOnce(spec: CodecSpec, dir: string, input: string, data: Uint8Array): Promise<Sample> {
  const cli = cliFor(spec);
  const packedPath = path.join(dir, `${codecLabel(spec)}.packed`);
  const unpackedPath = path.join(dir, `${codecLabel(spec)}.unpacked`);
  const packed = await timed(() => run(cli.tool, cli.compress(input, packedPath)));
  const unpacked = await timed(() => run(cli.tool, cli.decompress(packedPath, unpackedPath)));
  if (!sameBytes(await fs.readFile(unpackedPath), data)) throw new Error(`codec bench: the ${cli.tool} CLI round trip changed the data`);
  const wireBytes = (await fs.stat(packedPath)).size;
  await fs.rm(unpackedPath);
  return { compress: packed.seconds, decompress: unpacked.seconds, wireBytes };
}

async function measureCase(spec: CodecSpec, dir: string, input: string, data: Uint8Array, opts: CodecBenchOptions): Promise<CodecCase> {
  const { repeat } = opts;
  const blocks = blocksOf(data, opts.blockBytes);
  await oursOnce(spec, blocks);
  await cliOnce(spec, dir, input, data);
  const ours: Sample[] = [];
  const cli: Sample[] = [];
  for (let i = 0; i < repeat; i++) {
    ours.push(await oursOnce(spec, blocks));
    cli.push(await cliOnce(spec, dir, input, data));
  }
  const mibS = (samples: Sample[], phase: 'compress' | 'decompress'): number => data.byteLength / MIB / median(samples.map((s) => s[phase]));
  const ratio = (samples: Sample[]): number => data.byteLength / median(samples.map((s) => s.wireBytes));
  const c: CodecCase = {
    codec: spec.name,
    level: spec.name === 'zstd' ? (spec.level ?? 0) : 1,
    ours_compress_mib_s: significant(mibS(ours, 'compress')),
    cli_compress_mib_s: significant(mibS(cli, 'compress')),
    ours_decompress_mib_s: significant(mibS(ours, 'decompress')),
    cli_decompress_mib_s: significant(mibS(cli, 'decompress')),
    ours_compression_ratio: significant(ratio(ours)),
    cli_compression_ratio: significant(ratio(cli)),
    speed_ratio_compress: significant(mibS(ours, 'compress') / mibS(cli, 'compress'), 3),
    speed_ratio_decompress: significant(mibS(ours, 'decompress') / mibS(cli, 'decompress'), 3),
    meets_floor: false,
  };
  c.meets_floor = c.speed_ratio_compress >= FLOOR && c.speed_ratio_decompress >= FLOOR;
  progress(`  ${codecLabel(spec)}: compress ours/cli ${c.speed_ratio_compress}, decompress ours/cli ${c.speed_ratio_decompress}, ratio ${c.ours_compression_ratio} vs ${c.cli_compression_ratio}`);
  return c;
}

/** Wall time of compressing an empty file: what every CLI measurement pays for starting a process. */
async function startupMs(tool: 'lz4' | 'zstd', dir: string): Promise<number> {
  const empty = path.join(dir, 'empty');
  await fs.writeFile(empty, new Uint8Array(0));
  const cli = cliFor(tool === 'lz4' ? { name: 'lz4' } : { name: 'zstd', level: 1 });
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) samples.push((await timed(() => run(tool, cli.compress(empty, `${empty}.out`)))).seconds * 1000);
  return significant(median(samples), 3);
}

function report(r: CodecResult): string {
  const table = renderTable(
    ['codec', 'ours c MiB/s', 'cli c MiB/s', 'c ours/cli', 'ours d MiB/s', 'cli d MiB/s', 'd ours/cli', 'ratio ours', 'ratio cli', `≥ ${FLOOR}`],
    r.cases.map((c) => [
      c.codec === 'zstd' ? `zstd-${c.level}` : c.codec,
      String(c.ours_compress_mib_s),
      String(c.cli_compress_mib_s),
      String(c.speed_ratio_compress),
      String(c.ours_decompress_mib_s),
      String(c.cli_decompress_mib_s),
      String(c.speed_ratio_decompress),
      String(c.ours_compression_ratio),
      String(c.cli_compression_ratio),
      c.meets_floor ? 'yes' : 'NO',
    ]),
  );
  return [
    `codec: ours vs CLI on ${significant(r.options.size_bytes / MIB)} MiB of VM-image-like data (seed ${r.options.seed}), ${r.node}, ${r.cpus} cpus, load ${r.loadavg.join(' ')} -> ${r.loadavg_after.join(' ')}`,
    `tools: ${r.tools.lz4}; ${r.tools.zstd}; process start ${r.cli_startup_ms.lz4} ms (lz4), ${r.cli_startup_ms.zstd} ms (zstd), included in CLI times`,
    `ours in blocks of ${significant(r.options.block_bytes / MIB)} MiB, CLI on the whole file (lz4 cuts 4 MiB blocks itself); median of ${r.options.repeat} after a warm-up; c = compress, d = decompress; ratio = raw / compressed`,
    table,
  ].join('\n');
}

export async function runCodecBench(opts: CodecBenchOptions): Promise<CodecResult> {
  const facts = machineFacts();
  const tools = { lz4: await cliVersion('lz4'), zstd: await cliVersion('zstd') };
  progress(`codec: generating ${significant(opts.sizeBytes / MIB)} MiB of VM-image-like data`);
  const data = vmImageLike(opts.sizeBytes, opts.seed);
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dwcp-codec-bench-'));
  try {
    const input = path.join(dir, 'input.img');
    await fs.writeFile(input, data);
    const cli_startup_ms = { lz4: await startupMs('lz4', dir), zstd: await startupMs('zstd', dir) };
    const specs: CodecSpec[] = [{ name: 'lz4' }, ...opts.zstdLevels.map((level): CodecSpec => ({ name: 'zstd', level }))];
    const cases: CodecCase[] = [];
    for (const spec of specs) cases.push(await measureCase(spec, dir, input, data, opts));
    const result: CodecResult = {
      bench: 'codec',
      ...facts,
      options: { size_bytes: opts.sizeBytes, block_bytes: opts.blockBytes, zstd_levels: opts.zstdLevels, repeat: opts.repeat, seed: opts.seed },
      tools,
      cli_startup_ms,
      ratios: `speed_ratio_* = ours MiB/s / CLI MiB/s, below 1 means ours is slower, the floor is ${FLOOR}; *_compression_ratio = raw / compressed bytes`,
      cases,
      loadavg_after: machineFacts().loadavg,
    };
    progress(`\n${report(result)}`);
    return result;
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

export const codecBench = defineBench<CodecBenchOptions>({
  flags: {
    'size-mb': { default: '64', description: 'MiB of generated data per case' },
    'block-mb': { default: '4', description: 'MiB per block (frame) on our side; 4 = the lz4 CLI default block size' },
    'zstd-levels': { default: '1,3,9', description: 'zstd levels, comma-separated' },
    repeat: { default: '5', description: 'measured runs per case after one warm-up; the median is reported' },
    seed: { default: '1', description: 'seed of the generated data' },
  },
  parse: (flags) => {
    const levels = (flags['zstd-levels'] ?? '').split(',').map((t) => Number(t.trim()));
    for (const level of levels) {
      if (!Number.isInteger(level) || level < 1 || level > 19) throw new FlagError('zstd-levels', `levels must be whole numbers from 1 to 19, got "${flags['zstd-levels']}"`);
    }
    return {
      sizeBytes: Math.max(BLOCK, Math.floor(positiveFlag(flags, 'size-mb') * MIB)),
      blockBytes: Math.max(BLOCK, Math.floor(positiveFlag(flags, 'block-mb') * MIB)),
      zstdLevels: levels,
      repeat: intFlag(flags, 'repeat'),
      seed: intFlag(flags, 'seed', 0),
    };
  },
  run: runCodecBench,
});
