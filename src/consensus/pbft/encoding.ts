/**
 * Canonical bytes for what PBFT signs and hashes. A signature or digest is
 * only meaningful if every replica derives the same bytes from the same
 * content, whatever order the fields were built in, so objects are encoded
 * with sorted keys into a small tag-length-value format (not JSON: bytes stay
 * bytes, and there is no escaping to get subtly different).
 *
 * Invariants: encode(a) equals encode(b) iff a and b are structurally equal
 * values; signing bytes carry a domain prefix so a PBFT signature can never
 * be replayed as some other protocol's. Results are memoised per object,
 * which is sound because messages are immutable once built (types.ts).
 *
 * SHA-256 comes from node:crypto's one-shot hash(), a pure function of its input.
 */
import { hash } from 'node:crypto';
import type { CheckpointState, ClientRequest, Digest, SignedMessage } from './types.ts';

export type Canonical =
  | null
  | boolean
  | number
  | string
  | Uint8Array
  | readonly Canonical[]
  | { readonly [key: string]: Canonical | undefined };

const TAG_NULL = 0;
const TAG_FALSE = 1;
const TAG_TRUE = 2;
const TAG_NUMBER = 3;
const TAG_STRING = 4;
const TAG_BYTES = 5;
const TAG_ARRAY = 6;
const TAG_OBJECT = 7;

/** One growable scratch buffer, reused by every encoding (encoding never re-enters itself). */
class Writer {
  #buf = Buffer.allocUnsafe(4096);
  #len = 0;

  reset(): void {
    this.#len = 0;
  }

  #reserve(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    const next = Buffer.allocUnsafe(Math.max(this.#buf.length * 2, this.#len + n));
    this.#buf.copy(next, 0, 0, this.#len);
    this.#buf = next;
  }

  tag(t: number): void {
    this.#reserve(1);
    this.#buf[this.#len++] = t;
  }

  /** A tag and a 32-bit big-endian count or length. */
  head(t: number, n: number): void {
    this.#reserve(5);
    const b = this.#buf;
    const at = this.#len;
    b[at] = t;
    b[at + 1] = n >>> 24;
    b[at + 2] = (n >>> 16) & 0xff;
    b[at + 3] = (n >>> 8) & 0xff;
    b[at + 4] = n & 0xff;
    this.#len = at + 5;
  }

  number(v: number): void {
    this.#reserve(9);
    this.#buf[this.#len] = TAG_NUMBER;
    this.#buf.writeDoubleBE(v, this.#len + 1);
    this.#len += 9;
  }

  /** A length-prefixed UTF-8 string, optionally tagged. */
  string(s: string, tagged: boolean): void {
    // Worst case 3 bytes per UTF-16 unit: reserve that, write, then fill in the real length.
    const lead = tagged ? 5 : 4;
    this.#reserve(lead + 3 * s.length);
    const b = this.#buf;
    const at = this.#len;
    let n = -1;
    if (s.length <= 64) {
      // Short ASCII (keys, ids, digests) is most of what is encoded: copy it by hand, skipping Buffer.write's setup.
      n = s.length;
      for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) {
          n = -1;
          break;
        }
        b[at + lead + i] = c;
      }
    }
    if (n < 0) n = b.write(s, at + lead, 'utf8');
    if (tagged) b[at] = TAG_STRING;
    b.writeUInt32BE(n, at + lead - 4);
    this.#len = at + lead + n;
  }

  bytes(bytes: Uint8Array): void {
    this.head(TAG_BYTES, bytes.length);
    this.#reserve(bytes.length);
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
  }

  /** A copy of what was written: the scratch buffer is reused. */
  result(): Uint8Array {
    return new Uint8Array(this.#buf.subarray(0, this.#len));
  }

  get length(): number {
    return this.#len;
  }

  /** A copy of what was written from `start` on. */
  since(start: number): Uint8Array {
    return new Uint8Array(this.#buf.subarray(start, this.#len));
  }

  raw(bytes: Uint8Array): void {
    this.#reserve(bytes.length);
    this.#buf.set(bytes, this.#len);
    this.#len += bytes.length;
  }
}

/**
 * Encodings of pre-prepares, by object. A pre-prepare carries its whole
 * batch and is encoded again and again: once per peer frame at the primary
 * and up to three times per slot record on every replica (pre-prepared,
 * prepared, committed). An encoding depends on the value alone, never on
 * where it is nested, and messages are immutable once built, so the bytes
 * of the first encoding serve every later one.
 */
const prePrepareBytes = new WeakMap<object, Uint8Array>();

function write(w: Writer, value: Canonical): void {
  if (value === null) return w.tag(TAG_NULL);
  switch (typeof value) {
    case 'boolean':
      return w.tag(value ? TAG_TRUE : TAG_FALSE);
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`canonical encoding: ${value} is not a finite number`);
      return w.number(value === 0 ? 0 : value); // -0 encodes as 0
    case 'string':
      return w.string(value, true);
  }
  if (value instanceof Uint8Array) return w.bytes(value);
  if (Array.isArray(value)) {
    const items = value as readonly Canonical[];
    w.head(TAG_ARRAY, items.length);
    for (const item of items) write(w, item);
    return;
  }
  const record = value as { readonly [key: string]: Canonical | undefined };
  if (record['type'] !== 'pre_prepare') return writeObject(w, record);
  const known = prePrepareBytes.get(record);
  if (known !== undefined) return w.raw(known);
  const start = w.length;
  writeObject(w, record);
  prePrepareBytes.set(record, w.since(start));
}

function writeObject(w: Writer, record: { readonly [key: string]: Canonical | undefined }): void {
  const keys = Object.keys(record).sort();
  let present = 0;
  for (const key of keys) if (record[key] !== undefined) present++;
  w.head(TAG_OBJECT, present);
  for (const key of keys) {
    const item = record[key];
    if (item === undefined) continue;
    w.string(key, false);
    write(w, item);
  }
}

const scratch = new Writer();

export function encodeCanonical(value: Canonical): Uint8Array {
  scratch.reset();
  write(scratch, value);
  return scratch.result();
}

// ignoreBOM: a TextDecoder otherwise drops a leading U+FEFF, decoding a string as another one.
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The inverse of encodeCanonical, for a transport that wants this format on
 * the wire. Input is hostile: it is refused (RangeError naming the byte
 * offset) unless it is exactly the canonical encoding of some value (object
 * keys strictly ascending, no trailing bytes, nesting within `maxDepth`), so
 * decode(encode(v)) is v and re-encoding a decoded message gives the bytes
 * its signature covers. Check the result's shape with messageProblem().
 * `maxValues` bounds the values decoded (every null, number, string, byte
 * string, list and object counts one): a frame of a hundred million one-byte
 * nulls would otherwise cost gigabytes of heap before any check ran.
 */
export function decodeCanonical(bytes: Uint8Array, maxDepth = 16, maxValues = Number.MAX_SAFE_INTEGER): Canonical {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const fail = (problem: string): never => {
    throw new RangeError(`canonical decoding: ${problem} at byte ${at}`);
  };
  const need = (n: number): void => {
    if (n > bytes.length - at) fail(`${n} bytes needed, ${bytes.length - at} left`);
  };
  const u32 = (): number => {
    need(4);
    const n = view.getUint32(at);
    at += 4;
    return n;
  };
  const text = (): string => {
    const n = u32();
    need(n);
    let s = '';
    try {
      s = strictUtf8.decode(bytes.subarray(at, at + n));
    } catch {
      fail('invalid UTF-8');
    }
    at += n;
    return s;
  };
  let values = 0;
  const read = (depth: number): Canonical => {
    if (depth > maxDepth) fail(`nesting deeper than ${maxDepth}`);
    if (++values > maxValues) fail(`more than ${maxValues} values`);
    need(1);
    const tag = bytes[at++];
    switch (tag) {
      case TAG_NULL:
        return null;
      case TAG_FALSE:
        return false;
      case TAG_TRUE:
        return true;
      case TAG_NUMBER: {
        need(8);
        const v = view.getFloat64(at);
        if (!Number.isFinite(v) || Object.is(v, -0)) fail('non-canonical number');
        at += 8;
        return v;
      }
      case TAG_STRING:
        return text();
      case TAG_BYTES: {
        const n = u32();
        need(n);
        at += n;
        // A plain copy: a Buffer's slice() would alias the input.
        return new Uint8Array(bytes.subarray(at - n, at));
      }
      case TAG_ARRAY: {
        const n = u32();
        // Every item takes at least one byte: a count beyond what is left is a lie.
        need(n);
        const items: Canonical[] = [];
        for (let i = 0; i < n; i++) items.push(read(depth + 1));
        return items;
      }
      case TAG_OBJECT: {
        const n = u32();
        need(n);
        const entries: [string, Canonical][] = [];
        for (let i = 0; i < n; i++) {
          const key = text();
          const previous = entries.at(-1)?.[0];
          if (previous !== undefined && !(previous < key)) fail(`object key ${JSON.stringify(key)} out of order`);
          entries.push([key, read(depth + 1)]);
        }
        // fromEntries defines own properties, so a "__proto__" key cannot reach the prototype.
        return Object.fromEntries(entries) as { readonly [key: string]: Canonical };
      }
      default:
        return fail(`unknown tag ${String(tag)}`);
    }
  };
  const value = read(0);
  if (at !== bytes.length) fail(`${bytes.length - at} trailing bytes`);
  return value;
}

export function sha256(bytes: Uint8Array): Digest {
  return hash('sha256', bytes, 'hex');
}

const SIGNING_DOMAIN = 'dwcp/pbft/v1';
const signingCache = new WeakMap<object, Uint8Array>();

type Signable = SignedMessage | ClientRequest;

function bodyBytes(kind: string, body: object): Uint8Array {
  return encodeCanonical({ domain: SIGNING_DOMAIN, kind, body: body as unknown as Canonical });
}

function kindOf(message: object): string {
  return 'type' in message && typeof message.type === 'string' ? message.type : 'client_request';
}

/** The bytes a signature covers: the message minus its own signature, under a domain prefix. */
export function signingBytes(message: Signable): Uint8Array {
  let bytes = signingCache.get(message);
  if (bytes === undefined) {
    const { signature: _signature, ...body } = message;
    bytes = bodyBytes(kindOf(message), body);
    signingCache.set(message, bytes);
  }
  return bytes;
}

/** Sign `body` and return the finished message (its signing bytes memoised for whoever verifies it). */
export function seal<M extends Signable>(body: Omit<M, 'signature'>, sign: (bytes: Uint8Array) => Uint8Array): M {
  const bytes = bodyBytes(kindOf(body), body);
  const message = { ...body, signature: sign(bytes) } as M;
  signingCache.set(message, bytes);
  return message;
}

const batchCache = new WeakMap<readonly ClientRequest[], Digest>();

/** The digest a pre-prepare names: the whole batch, client signatures included. */
export function batchDigest(batch: readonly ClientRequest[]): Digest {
  let digest = batchCache.get(batch);
  if (digest === undefined) {
    digest = sha256(encodeCanonical(batch as unknown as Canonical));
    batchCache.set(batch, digest);
  }
  return digest;
}

export const NULL_BATCH_DIGEST: Digest = batchDigest([]);

/** The checkpoint digest: the state machine's snapshot and the reply cache together. */
export function stateDigest(state: CheckpointState): Digest {
  return sha256(
    encodeCanonical({
      snapshot: sha256(state.snapshot),
      clients: state.clients.map((c) => [c.client, c.timestamp, c.seq, sha256(c.result)]),
    }),
  );
}

/** Approximate wire size of a request, for the batch and request byte limits (a path entry: 32 bytes and its 5-byte head). */
export function requestBytes(request: ClientRequest): number {
  const path = request.path === undefined ? 0 : 9 + 37 * request.path.length;
  return 64 + request.client.length + request.operation.length + request.signature.length + path;
}

// ------------------------------------------------------------ client batches

/**
 * A client batch: the daemon, as PBFT client, signs the requests it sends in
 * one turn with one signature, over the root of a Merkle tree whose leaves
 * are the requests' contents; each request carries the signature and its
 * path (the sibling hashes from its leaf to the root), so every replica
 * checks any one request on its own, and one Ed25519 verification per batch
 * and replica covers them all (docs/consensus.md has the safety argument).
 *
 * Leaves and inner nodes hash under different one-byte prefixes (an inner
 * node can never pass as a leaf, nor a leaf as a node), and an inner node
 * hashes its two children in byte order, so a path needs no left/right bits:
 * a request proves it is in the batch by the root it folds up to, whatever
 * its position. A batch of one is its leaf; its path is empty.
 */
export const MAX_CLIENT_BATCH_DEPTH = 16;

const LEAF_PREFIX = Buffer.from([0]);
const NODE_PREFIX = Buffer.from([1]);

/** A client request before it is signed: what sealClientBatch takes. */
export type RequestBody = Pick<ClientRequest, 'client' | 'timestamp' | 'operation' | 'readOnly'>;

/**
 * The leaf of a request: every field but its signature and path, as a lone
 * request's signing bytes cover every field but its signature. Naming the
 * four fields instead would leave any other field a relay added uncovered
 * (and outside requestBytes' limit).
 */
function requestLeaf(r: RequestBody | ClientRequest): Buffer {
  const { signature: _signature, path: _path, ...body } = r as Partial<ClientRequest>;
  return hash('sha256', Buffer.concat([LEAF_PREFIX, bodyBytes('client_request', body)]), 'buffer');
}

function merkleParent(a: Uint8Array, b: Uint8Array): Buffer {
  const [low, high] = Buffer.compare(a, b) <= 0 ? [a, b] : [b, a];
  return hash('sha256', Buffer.concat([NODE_PREFIX, low, high]), 'buffer');
}

const rootCache = new WeakMap<ClientRequest, Buffer>();

/** The root a batched request's path folds up to from its own leaf (memoised: requests are immutable). */
export function clientBatchRoot(r: ClientRequest): Buffer {
  let root = rootCache.get(r);
  if (root === undefined) {
    root = requestLeaf(r);
    for (const sibling of r.path ?? []) root = merkleParent(root, sibling);
    rootCache.set(r, root);
  }
  return root;
}

/** The bytes a client batch's signature covers: its root, under the PBFT domain. */
export function clientBatchSigningBytes(root: Uint8Array): Uint8Array {
  return bodyBytes('client_batch', { root });
}

/**
 * Signs `bodies` (requests of one signer: its lanes share its key) with one
 * signature, returning each request with that signature and its path, in
 * the order given. Odd nodes move up a level unpaired, so a batch of k has
 * paths of at most ceil(log2 k) entries.
 */
export function sealClientBatch(bodies: readonly RequestBody[], sign: (bytes: Uint8Array) => Uint8Array): ClientRequest[] {
  if (bodies.length === 0) return [];
  if (bodies.length > 2 ** MAX_CLIENT_BATCH_DEPTH) throw new RangeError(`a client batch holds at most ${2 ** MAX_CLIENT_BATCH_DEPTH} requests, got ${bodies.length}`);
  const paths: Uint8Array[][] = bodies.map(() => []);
  // Each level's nodes, with the requests under each.
  let level = bodies.map((body, i) => ({ hash: requestLeaf(body), under: [i] }));
  while (level.length > 1) {
    const next: typeof level = [];
    for (let i = 0; i < level.length; i += 2) {
      const left = level[i] as (typeof level)[number];
      const right = level[i + 1];
      if (right === undefined) {
        next.push(left);
        continue;
      }
      for (const j of left.under) paths[j]?.push(right.hash);
      for (const j of right.under) paths[j]?.push(left.hash);
      next.push({ hash: merkleParent(left.hash, right.hash), under: [...left.under, ...right.under] });
    }
    level = next;
  }
  const root = (level[0] as (typeof level)[number]).hash;
  const signature = sign(clientBatchSigningBytes(root));
  return bodies.map((body, i) => {
    const request: ClientRequest = { client: body.client, timestamp: body.timestamp, operation: body.operation, readOnly: body.readOnly, signature, path: paths[i] ?? [] };
    rootCache.set(request, root);
    return request;
  });
}
