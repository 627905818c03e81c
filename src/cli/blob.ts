/**
 * dwcpctl's `blob` and `cache` commands: large values on the local daemon.
 *
 *   dwcpctl blob put FILE --key K [--to MEMBER] [--streams N]
 *   dwcpctl blob get KEY --out FILE
 *   dwcpctl blob status
 *   dwcpctl cache stats
 *
 * `put` passes the file's absolute path to the daemon, which reads it
 * itself (the admin socket is the daemon user's alone, docs/blob.md);
 * dwcpctl first checks that its own caller can read the file, so the daemon
 * never reads on someone's behalf what they could not read themselves.
 * `get` streams the value here and writes FILE as the caller, through a
 * temporary file renamed into place once every byte arrived and checked out.
 *
 * On a terminal, put and get draw a progress bar on stderr (bytes, rate,
 * ETA); `--json` prints the result as JSON on stdout (snake_case, as the
 * admin API), whatever stderr is. --timeout bounds the wait between two
 * messages of a put or get, not the whole transfer.
 */
import { constants as fsConstants } from 'node:fs';
import { access, open, rename, rm, stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { ParseArgsOptionsConfig } from 'node:util';
import type { BlobCacheStatsResponse, BlobProgress, BlobPutResult, BlobStatusResponse, BlobTransfer } from '../admin/schema.ts';
import { formatJson, renderFields, renderTable } from './format.ts';
import type { CliIo, Command, CommandContext } from './command.ts';
import { UsageError, notForThis, positional, subcommandError } from './command.ts';

const BLOB_OPTIONS = {
  key: { type: 'string' },
  to: { type: 'string' },
  out: { type: 'string' },
  streams: { type: 'string' },
} as const satisfies ParseArgsOptionsConfig;

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** `1.5 GiB`, `12.0 MiB`, `512 B`. */
export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${UNITS[unit]}`;
}

export function formatRate(bytesPerS: number | null): string {
  return bytesPerS === null ? '-' : `${formatBytes(bytesPerS)}/s`;
}

export function formatEta(seconds: number | null): string {
  if (seconds === null) return '-';
  if (seconds < 60) return `${Math.ceil(seconds)}s`;
  const m = Math.floor(seconds / 60);
  return m < 60 ? `${m}m${String(Math.ceil(seconds % 60)).padStart(2, '0')}s` : `${Math.floor(m / 60)}h${String(m % 60).padStart(2, '0')}m`;
}

/** `[#########...........]  45%` for `done` of `total` in `width` cells. */
export function renderBar(done: number, total: number, width = 20): string {
  const share = total <= 0 ? 1 : Math.min(1, done / total);
  const filled = Math.round(share * width);
  return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${String(Math.floor(share * 100)).padStart(3)}%`;
}

/** One progress line: phase, bar, bytes, rate, ETA. */
export function renderProgress(p: Pick<BlobProgress, 'phase' | 'bytes_done' | 'bytes_total' | 'rate_bytes_per_s' | 'eta_seconds'>): string {
  return `${p.phase.padEnd(8)} ${renderBar(p.bytes_done, p.bytes_total)}  ${formatBytes(p.bytes_done)} / ${formatBytes(p.bytes_total)}  ${formatRate(p.rate_bytes_per_s)}  ETA ${formatEta(p.eta_seconds)}`;
}

/** Redraws one stderr line in place, at most 10 times a second; nothing at all when stderr is not a terminal. */
export class ProgressLine {
  readonly #io: CliIo;
  readonly #enabled: boolean;
  #last = 0;
  #drawn = false;
  constructor(io: CliIo, enabled: boolean) {
    this.#io = io;
    this.#enabled = enabled;
  }
  show(line: string, force = false): void {
    if (!this.#enabled) return;
    const now = Date.now();
    if (!force && now - this.#last < 100) return;
    this.#last = now;
    this.#io.stderr(`\r\x1b[K${line}`);
    this.#drawn = true;
  }
  end(): void {
    if (this.#drawn) this.#io.stderr('\n');
    this.#drawn = false;
  }
}

export function progressLine(ctx: CommandContext): ProgressLine {
  return new ProgressLine(ctx.io, process.stderr.isTTY === true);
}

function stringFlag(ctx: CommandContext, flag: string, sub: string): string {
  const value = ctx.flags[flag];
  if (typeof value !== 'string' || value === '') throw new UsageError(`${sub} needs --${flag}`);
  return value;
}

export function describePut(r: BlobPutResult): string {
  const s = r.stored;
  const lines = [`stored ${s.key}: version ${s.version.slice(0, 16)}, ${formatBytes(s.size)} in ${s.chunks} chunks (${r.ingest_seconds.toFixed(2)} s)`];
  const t = r.sent;
  if (t !== null) {
    const wireShare = s.size === 0 ? 0 : (100 * (t.wire_bytes_sent + t.manifest_bytes_sent)) / s.size;
    const rate = t.seconds > 0 ? t.raw_bytes_sent / t.seconds : null;
    const codecs = Object.entries(t.codecs)
      .map(([c, b]) => `${c} ${formatBytes(b)}`)
      .join(', ');
    lines.push(
      `sent to ${t.member}: ${t.kind}${t.baseline_refuted ? ' (the cached baseline was refuted)' : ''}, ${formatBytes(t.raw_bytes_sent)} of chunks, ${formatBytes(t.wire_bytes_sent + t.manifest_bytes_sent)} on the wire (${wireShare.toFixed(2)} % of the value), ${formatBytes(t.reused_bytes)} reused from the baseline, ${t.seconds.toFixed(2)} s, ${formatRate(rate)}${t.resumed > 0 ? `, resumed ${t.resumed}×` : ''}${codecs ? `; codecs: ${codecs}` : ''}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/**
 * FILE as the absolute path the daemon is given, once this caller has shown
 * it can read it: the daemon reads with its own privileges, so it is never
 * asked to read what its caller could not.
 */
export async function readableFile(file: string): Promise<string> {
  const path = resolve(file);
  try {
    await access(path, fsConstants.R_OK);
    if (!(await stat(path)).isFile()) throw new Error('not a regular file');
  } catch (err) {
    throw new Error(`${path}: ${(err as NodeJS.ErrnoException).code === 'EACCES' ? 'permission denied' : (err as Error).message.replace(/^\w+: /, '')}`);
  }
  return path;
}

async function put(ctx: CommandContext): Promise<void> {
  const [file = ''] = positional(ctx, 'blob put', ['FILE']);
  notForThis(ctx, 'blob put', ['out']);
  const key = stringFlag(ctx, 'key', 'blob put');
  const to = typeof ctx.flags.to === 'string' ? ctx.flags.to : '';
  let streams = 0;
  if (ctx.flags.streams !== undefined) {
    const raw = ctx.flags.streams;
    streams = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : NaN;
    if (!(streams >= 1 && streams <= 16)) throw new UsageError(`--streams: ${JSON.stringify(raw)} is not a whole number from 1 to 16`);
  }
  const path = await readableFile(file);
  const bar = progressLine(ctx);
  let result: BlobPutResult;
  try {
    result = await (await ctx.admin()).blob.put({ path, key, to, streams }, (p) => bar.show(renderProgress(p), p.bytes_done === p.bytes_total));
  } finally {
    bar.end();
  }
  ctx.io.stdout(ctx.json ? formatJson(result) : describePut(result));
}

async function get(ctx: CommandContext): Promise<void> {
  const [key = ''] = positional(ctx, 'blob get', ['KEY']);
  notForThis(ctx, 'blob get', ['to', 'key', 'streams']);
  const out = resolve(stringFlag(ctx, 'out', 'blob get'));
  const partial = `${out}.dwcp-partial`;
  const fh = await open(partial, 'w', 0o644);
  const bar = progressLine(ctx);
  let done = 0;
  let total = 0;
  const started = Date.now();
  try {
    const value = await (await ctx.admin()).blob.get(
      key,
      async (bytes) => {
        await fh.write(bytes);
        done += bytes.byteLength;
        const seconds = (Date.now() - started) / 1000;
        const rate = seconds > 0 ? done / seconds : null;
        bar.show(renderProgress({ phase: 'get', bytes_done: done, bytes_total: total, rate_bytes_per_s: rate, eta_seconds: rate === null ? null : (total - done) / rate }), done === total);
      },
      (v) => {
        total = v.size;
      },
    );
    if (done !== value.size) throw new Error(`received ${done} bytes of the ${value.size}-byte value ${key}`);
    await fh.sync();
    await fh.close();
    await rename(partial, out);
    bar.end();
    ctx.io.stdout(ctx.json ? formatJson({ ...value, path: out }) : `wrote ${key} (version ${value.version.slice(0, 16)}, ${formatBytes(value.size)}) to ${out}\n`);
  } catch (err) {
    bar.end();
    await fh.close().catch(() => {});
    await rm(partial, { force: true });
    throw err;
  }
}

function transferRow(t: BlobTransfer): string[] {
  const progress = t.state === 'running' ? renderBar(t.bytes_done, t.bytes_total, 10) : t.state === 'done' ? 'done' : `failed: ${t.error ?? ''}`;
  return [
    t.transfer_id.slice(0, 8),
    t.direction,
    t.member,
    t.key,
    t.kind,
    progress,
    `${formatBytes(t.bytes_done)}/${formatBytes(t.bytes_total)}`,
    t.state === 'running' ? formatRate(t.rate_bytes_per_s) : formatRate(t.elapsed_seconds > 0 ? t.bytes_done / t.elapsed_seconds : null),
    t.state === 'running' ? formatEta(t.eta_seconds) : `${t.elapsed_seconds.toFixed(1)}s`,
    t.resumed > 0 ? String(t.resumed) : '',
  ];
}

export function formatBlobStatus(s: BlobStatusResponse): string {
  const transfers =
    s.transfers.length === 0
      ? '(no transfers)\n'
      : renderTable(['ID', 'DIR', 'MEMBER', 'KEY', 'KIND', 'PROGRESS', 'BYTES', 'RATE', 'ETA/TIME', 'RESUMED'], s.transfers.map(transferRow));
  const values =
    s.values.length === 0
      ? '(no values stored)\n'
      : renderTable(
          ['KEY', 'VERSION', 'SIZE', 'CHUNKS', 'SOURCE', 'STORED'],
          s.values.map((v) => [v.key, v.version.slice(0, 16), formatBytes(v.size), String(v.chunks), v.source, v.stored_at]),
        );
  return `${transfers}\n${values}\nstore: ${formatBytes(s.pack_bytes)} in ${s.packs} pack files, ${s.chunks} chunks\n`;
}

export function formatCacheStats(c: BlobCacheStatsResponse): string {
  return renderFields([
    ['Hit ratio', c.hit_ratio === null ? '- (no lookups yet)' : `${renderBar(c.hits, c.hits + c.misses, 20)} (${c.hits} hits, ${c.misses} misses)`],
    ['Refuted', String(c.refuted)],
    ['Evictions', String(c.evictions)],
    ['Expiries', String(c.expiries)],
    ['Bytes saved', formatBytes(c.bytes_saved)],
    ['Entries', `${c.entries} (capacity ${c.capacity} keys per region)`],
    ['TTL', `${c.ttl_ms / 1000} s`],
    ['Persisted', c.persist ? 'yes' : 'no'],
  ]);
}

async function blob(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  switch (sub) {
    case 'put':
      return put(ctx);
    case 'get':
      return get(ctx);
    case 'status': {
      positional(ctx, 'blob status', []);
      notForThis(ctx, 'blob status', ['key', 'to', 'out', 'streams']);
      const s = await (await ctx.admin()).blob.status();
      ctx.io.stdout(ctx.json ? formatJson(s) : formatBlobStatus(s));
      return;
    }
    default:
      throw subcommandError('blob', 'put, get or status', sub);
  }
}

async function cache(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  if (sub !== 'stats') throw subcommandError('cache', 'stats', sub);
  positional(ctx, 'cache stats', []);
  const c = await (await ctx.admin()).blob.cacheStats();
  ctx.io.stdout(ctx.json ? formatJson(c) : formatCacheStats(c));
}

export const BLOB_COMMAND: Command = {
  name: 'blob',
  args: 'put FILE --key K [--to MEMBER] [--streams N] | get KEY --out FILE | status',
  summary: 'large values: store a file and send it to a member (delta when possible), read one back, transfers',
  options: BLOB_OPTIONS,
  run: blob,
};

export const CACHE_COMMAND: Command = {
  name: 'cache',
  args: 'stats',
  summary: 'the regional baseline cache behind delta transfers: hits, misses, evictions, bytes saved',
  run: cache,
};
