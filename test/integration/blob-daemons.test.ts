/**
 * Large values between two real dwcpd processes, driven by the real dwcpctl:
 * `blob put FILE --key K --to MEMBER` stores a VM-image-like file and sends
 * it in full, a second version with 1 % of its blocks rewritten goes as a
 * delta against the baseline the cache remembers, `blob get` on the other
 * daemon writes the exact bytes back, and `blob status`, `cache stats` and
 * /metrics say what happened. Operator mistakes get one clear line and exit 1
 * (or 2 for usage).
 */
import { createHash } from 'node:crypto';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Prng, vmImageLike } from '../../bench/codec.ts';
import { lintMetrics } from '../support/promtool.ts';
import { baseConfig, metricValue, prepareNode, runCtl, startDaemon, tempRoot, type CtlResult, type DaemonProcess, type NodeFiles } from './harness.ts';

const MIB = 1024 * 1024;
const BLOCK = 4096;
const SIZE = 8 * MIB;

let root: { path: string; remove: () => Promise<void> };
let a: NodeFiles;
let b: NodeFiles;
let da: DaemonProcess;
let db: DaemonProcess;
let v1: Uint8Array;
let v2: Uint8Array;

function member(n: NodeFiles, addrs: string[] = []): Record<string, unknown> {
  return { name: n.name, peerId: n.peerId, region: `r-${n.name}`, provider: 'onprem', trust: 'trusted', addrs };
}

function ctl(node: NodeFiles, ...args: string[]): Promise<CtlResult> {
  return runCtl(['--socket', node.socket, '--timeout', '20000', ...args]);
}

function json<T>(r: CtlResult): T {
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as T;
}

function rewriteBlocks(image: Uint8Array, fraction: number, seed: number): Uint8Array {
  const rng = new Prng(seed);
  const out = image.slice();
  const blocks = image.byteLength / BLOCK;
  for (let n = Math.round(blocks * fraction); n > 0; n--) {
    const at = rng.below(blocks) * BLOCK;
    for (let i = 0; i < BLOCK; i++) out[at + i] = rng.below(256);
  }
  return out;
}

const sha = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

beforeAll(async () => {
  root = await tempRoot('blob');
  a = await prepareNode(root.path, 'a');
  b = await prepareNode(root.path, 'b');
  da = await startDaemon(a, baseConfig(a, { logLevel: 'info', members: [member(b)] }));
  const { listen } = await da.serving();
  db = await startDaemon(b, baseConfig(b, { logLevel: 'info', members: [member(a, listen)] }));
  await db.serving();
  await da.waitForLog((l) => l.msg === 'member connected' && l.member === 'b', 'b connected');
  v1 = vmImageLike(SIZE, 41);
  v2 = rewriteBlocks(v1, 0.01, 42);
  await writeFile(join(root.path, 'v1.img'), v1);
  await writeFile(join(root.path, 'v2.img'), v2);
}, 60_000);

afterAll(async () => {
  await Promise.all([da?.stop(), db?.stop()]);
  await root?.remove();
});

interface PutJson {
  stored: { key: string; version: string; size: number; source: string };
  sent: { kind: string; member: string; raw_bytes_sent: number; wire_bytes_sent: number; manifest_bytes_sent: number; reused_bytes: number; codecs: Record<string, number> } | null;
}

describe('blob between two daemons', () => {
  it('put --to sends the first version in full, LZ4 on a datacenter link; get on the receiver writes the same bytes', async () => {
    const put = json<PutJson>(await ctl(a, 'blob', 'put', join(root.path, 'v1.img'), '--key', 'vm/disk0', '--to', 'b', '--json'));
    expect(put.stored).toMatchObject({ key: 'vm/disk0', size: SIZE, source: 'local' });
    expect(put.sent).toMatchObject({ kind: 'full', member: 'b', reused_bytes: 0 });
    expect(Object.keys(put.sent?.codecs ?? {})).toContain('lz4');
    expect(put.sent?.wire_bytes_sent).toBeLessThan(SIZE * 0.6);
    const out = join(root.path, 'got-v1.img');
    const got = json<{ version: string; size: number; path: string }>(await ctl(b, 'blob', 'get', 'vm/disk0', '--out', out, '--json'));
    expect(got).toMatchObject({ version: put.stored.version, size: SIZE, path: out });
    expect(sha(await readFile(out))).toBe(sha(v1));
  });

  it('the second version, 1 % of blocks rewritten, goes as a delta: a few % of the value on the wire', async () => {
    const r = await ctl(a, 'blob', 'put', join(root.path, 'v2.img'), '--key', 'vm/disk0', '--to', 'b');
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^stored vm\/disk0: version [0-9a-f]{16}, 8\.0 MiB/);
    expect(r.stdout).toMatch(/sent to b: delta, .* reused from the baseline/);
    const out = join(root.path, 'got-v2.img');
    expect((await ctl(b, 'blob', 'get', 'vm/disk0', '--out', out)).code).toBe(0);
    expect(sha(await readFile(out))).toBe(sha(v2));
    const stats = json<{ hits: number; misses: number; hit_ratio: number; bytes_saved: number }>(await ctl(a, 'cache', 'stats', '--json'));
    expect(stats).toMatchObject({ hits: 1, misses: 1 });
    expect(stats.bytes_saved).toBeGreaterThan(SIZE * 0.5);
    const status = json<{ transfers: { direction: string; kind: string; state: string }[]; values: { key: string }[] }>(await ctl(b, 'blob', 'status', '--json'));
    expect(status.transfers.filter((t) => t.direction === 'received').map((t) => `${t.kind}:${t.state}`)).toEqual(['delta:done', 'full:done']);
    expect(status.values.map((v) => v.key)).toEqual(['vm/disk0']);
    const table = await ctl(a, 'blob', 'status');
    expect(table.stdout).toMatch(/ID\s+DIR\s+MEMBER\s+KEY\s+KIND/);
  });

  it('metrics count the transfers, the cache and the bytes by codec and link mode, in valid exposition format', async (ctx) => {
    const text = await da.scrape();
    expect(metricValue(text, 'dwcp_blob_transfers_total', { direction: 'sent', kind: 'delta', result: 'ok' })).toBe(1);
    expect(metricValue(text, 'dwcp_blob_transfers_total', { direction: 'sent', kind: 'full', result: 'ok' })).toBe(1);
    expect(metricValue(text, 'dwcp_baseline_cache_hits_total')).toBe(1);
    expect(metricValue(text, 'dwcp_blob_raw_bytes_total', { codec: 'lz4', link_mode: 'datacenter', direction: 'sent' })).toBeGreaterThan(0);
    expect(metricValue(text, 'dwcp_codec_compress_duration_seconds_count', { codec: 'lz4' })).toBeGreaterThan(0);
    const received = await db.scrape();
    expect(metricValue(received, 'dwcp_blob_transfers_total', { direction: 'received', kind: 'delta', result: 'ok' })).toBe(1);
    expect(metricValue(received, 'dwcp_blob_rejected_total', { reason: 'bad-checksum' })).toBe(0);
    const verdict = lintMetrics(text, ctx);
    if (verdict) expect(verdict.status, verdict.output).toBe(0);
  });

  it('mistakes get one line and a non-zero exit', async () => {
    const missing = await ctl(b, 'blob', 'get', 'no/such', '--out', join(root.path, 'x'));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no value stored under key "no\/such"/);
    const stranger = await ctl(a, 'blob', 'put', join(root.path, 'v1.img'), '--key', 'k', '--to', 'nobody');
    expect(stranger.code).toBe(1);
    expect(stranger.stderr).toMatch(/no member named "nobody"/);
    const unreadable = join(root.path, 'secret.img');
    await writeFile(unreadable, 'x');
    await chmod(unreadable, 0o000);
    const denied = await ctl(a, 'blob', 'put', unreadable, '--key', 'k');
    // Root reads anything, so only the daemon-side checks apply then.
    if (process.getuid?.() !== 0) {
      expect(denied.code).toBe(1);
      expect(denied.stderr).toMatch(/permission denied/);
    }
    const usage = await ctl(a, 'blob', 'put', join(root.path, 'v1.img'));
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/blob put needs --key/);
  });
});
