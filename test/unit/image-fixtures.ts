/**
 * In-process stand-ins for what the image catalog talks to, real where it
 * matters: the federation log is a real KvStateMachine (compare-and-swap,
 * revisions, ranges exactly as replicas apply them), each node's blob store a
 * real BlobStore on disk; the geo store is a map (last write wins, which is
 * all the catalog asks of it) and a "fetch" copies a blob from one node's
 * store to another's, counting calls, as a holder's push would.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlobService } from '../../src/blob/service.ts';
import { chunkingForAverage } from '../../src/blob/chunker.ts';
import { BlobStore } from '../../src/blob/store.ts';
import type { MemberConfig } from '../../src/config/schema.ts';
import { DwcpError } from '../../src/errors.ts';
import { ImageCatalog } from '../../src/image/catalog.ts';
import type { FetchOutcome, ImageFetch } from '../../src/image/fetch.ts';
import { createImageMetrics, type ImageMetrics } from '../../src/image/metrics.ts';
import { BlobImageSource, type MemberLink } from '../../src/image/source.ts';
import { encodeKvCommand } from '../../src/kv/command.ts';
import { readMachine } from '../../src/kv/read.ts';
import type { KvReadAnswer, KvReadRequest, KvRouter, KvWriteAnswer, KvWriteRequest } from '../../src/kv/router.ts';
import { KvStateMachine } from '../../src/kv/state-machine.ts';
import { createLogger, type Logger } from '../../src/log.ts';
import { Registry } from 'prom-client';

export const log: Logger = createLogger('silent');

/** The federation log and the geo store every node of a test federation shares. */
export class SharedState implements Pick<KvRouter, 'read' | 'write'> {
  readonly machine = new KvStateMachine();
  readonly geo = new Map<string, Uint8Array>();
  #index = 0;
  #seq = 0;
  /** When set, strong log reads fail with this (a leader that cannot be reached); serializable reads still answer. */
  strongFailure: DwcpError | null = null;

  async write(req: KvWriteRequest): Promise<KvWriteAnswer> {
    const { op } = req;
    if (req.level !== 'strong') {
      if (op.op === 'put') this.geo.set(op.key, op.value);
      else if (op.op === 'delete') this.geo.delete(op.key);
      else throw new Error(`geo ${op.op}`);
      return { keyspace: 'geo', level: req.level, acked: 1, total: 1 };
    }
    const result = this.machine.apply(++this.#index, encodeKvCommand({ clientId: 'test', seq: ++this.#seq, ...op }));
    return { keyspace: 'log', result, leader: 'n1' };
  }

  async read(req: KvReadRequest): Promise<KvReadAnswer> {
    if (req.level === 'strong' || req.level === 'serializable') {
      if (req.level === 'strong' && this.strongFailure !== null) throw this.strongFailure;
      return { keyspace: 'log', ...readMachine(this.machine, { key: req.key, prefix: req.prefix, limit: req.limit || 10_000 }, this.#index) };
    }
    const items = [...this.geo]
      .filter(([k]) => (req.prefix ? k.startsWith(req.key) : k === req.key))
      .map(([key, value]) => ({ key, value, written: null }));
    return { keyspace: 'geo', items, answered: 1, total: 1 };
  }

  /** Writes raw bytes under a log key, as an operator could through the KV API. */
  async putRaw(key: string, value: string): Promise<void> {
    await this.write({ op: { op: 'put', key, value: Buffer.from(value) }, level: 'strong', scope: 'federation', clientId: '', seq: 0, ttlMs: 0, timeoutMs: 1000 });
  }
}

/** The BlobService slice the catalog uses, over a real store. */
function blobOver(store: BlobStore): Pick<BlobService, 'put' | 'remove' | 'store'> {
  return {
    store,
    put: async (path, key, opts = {}) => {
      const stored = await store.ingestFile(key, path, { ...(opts.onRead ? { onRead: opts.onRead } : {}), ...(opts.signal ? { signal: opts.signal } : {}) });
      return { stored, ingestSeconds: 0, sent: null };
    },
    remove: (key) => store.remove(key),
  };
}

export interface TestNode {
  name: string;
  member: MemberConfig;
  dir: string;
  store: BlobStore;
  catalog: ImageCatalog;
  source: BlobImageSource;
  metrics: ImageMetrics;
  /** Fetches this node asked for: holder, key. */
  fetches: { holder: string; key: string }[];
  /** While set, fetches from this node wait for it (a slow link). */
  gate: Promise<void> | null;
}

/** A federation of `names` over one SharedState, each node with its own directory, store, catalog and image source. */
export class TestFederation {
  readonly state = new SharedState();
  readonly nodes = new Map<string, TestNode>();
  /** Nodes the others see as connected. */
  readonly connected = new Set<string>();
  readonly #root: string;

  private constructor(root: string) {
    this.#root = root;
  }

  static async open(names: readonly string[]): Promise<TestFederation> {
    const fed = new TestFederation(await mkdtemp(join(tmpdir(), 'dwcp-images-')));
    for (const name of names) await fed.#add(name);
    return fed;
  }

  get root(): string {
    return this.#root;
  }

  node(name: string): TestNode {
    const n = this.nodes.get(name);
    if (n === undefined) throw new Error(`no node ${name}`);
    return n;
  }

  async #add(name: string): Promise<void> {
    const dir = join(this.#root, name);
    const store = await BlobStore.open({ dir: join(dir, 'blobs'), chunking: chunkingForAverage(4096), maxValueBytes: 1 << 30, noSync: true });
    const catalog = new ImageCatalog({ node: name, kv: this.state, blob: blobOver(store), timeoutMs: 1000, log });
    const metrics = createImageMetrics([new Registry()]);
    const member: MemberConfig = { name, peerId: `peer-${name}`, region: name, provider: 'onprem', trust: 'trusted', addrs: [] } as MemberConfig;
    const node: TestNode = { name, member, dir, store, catalog, metrics, fetches: [], gate: null, source: undefined as unknown as BlobImageSource };
    const fetch: Pick<ImageFetch, 'fetch'> = { fetch: (holder, key, version) => this.#fetch(node, holder, key, version) };
    node.source = await BlobImageSource.open({
      catalog,
      store,
      fetch,
      members: () => [...this.nodes.values()].filter((n) => n.name !== name).map((n): MemberLink => ({ member: n.member, connected: this.connected.has(n.name), rttMs: 1 })),
      dir: join(dir, 'qemu', 'images'),
      metrics,
      log,
      noSync: true,
    });
    this.nodes.set(name, node);
    this.connected.add(name);
  }

  /** What a holder's push does: refuse a version it does not hold, else copy the blob into the asker's store. */
  async #fetch(asker: TestNode, holder: MemberConfig, key: string, version: string): Promise<FetchOutcome> {
    asker.fetches.push({ holder: holder.name, key });
    const from = this.node(holder.name);
    await from.gate;
    const held = from.store.current(key);
    if (held === undefined || held.version !== version) throw new DwcpError('not_found', `${holder.name}: holds no copy of ${key}`);
    const manifest = from.store.manifest(held.version, key);
    if (manifest === undefined) throw new Error('no manifest');
    const parts: Uint8Array[] = [];
    for await (const p of from.store.readValue(manifest)) parts.push(p);
    await asker.store.ingestBytes(key, Buffer.concat(parts));
    return { kind: 'full', wireBytes: manifest.size };
  }

  async close(): Promise<void> {
    for (const n of this.nodes.values()) {
      n.source.stop();
      await n.store.close();
    }
    await rm(this.#root, { recursive: true, force: true });
  }
}

/** A qcow2 header as qemu-img writes it (v3, 64 KiB clusters), with the fields a base image is judged by. */
export function qcow2Header(opts: { version?: number; virtualSize?: number; backing?: boolean; encrypted?: boolean; incompatible?: number; bytes?: number } = {}): Buffer {
  const b = Buffer.alloc(Math.max(opts.bytes ?? 0, 512 * 1024));
  b.writeUInt32BE(0x514649fb, 0);
  b.writeUInt32BE(opts.version ?? 3, 4);
  b.writeBigUInt64BE(opts.backing === true ? 0x200n : 0n, 8);
  b.writeUInt32BE(16, 20);
  b.writeBigUInt64BE(BigInt(opts.virtualSize ?? 2 ** 30), 24);
  b.writeUInt32BE(opts.encrypted === true ? 2 : 0, 32);
  b.writeBigUInt64BE(BigInt(opts.incompatible ?? 0), 72);
  b.writeUInt32BE(104, 100);
  // Something past the header, so the file is more than its header.
  for (let i = 4096; i < b.byteLength; i += 4096) b.writeUInt32BE(i, i);
  return b.subarray(0, opts.bytes ?? b.byteLength);
}

/** An x86 bzImage as far as its boot header goes. */
export function kernelImage(bytes = 256 * 1024): Buffer {
  const b = Buffer.alloc(bytes, 7);
  b.write('HdrS', 0x202, 'latin1');
  return b;
}

/** A gzip'd initramfs as far as its magic goes. */
export function initrdImage(bytes = 64 * 1024): Buffer {
  const b = Buffer.alloc(bytes, 3);
  b[0] = 0x1f;
  b[1] = 0x8b;
  return b;
}
