/**
 * Review (issue 19): the receive path's fast paths over the parts a frame
 * arrived in (blob wire.ts parseBatch, migrate-wire.ts parseData, framing.ts
 * FrameDecoder.pushLists) against the strict decode of the same bytes as one
 * array. Messages are built field by field (varints padded to non-minimal and
 * 10-byte forms, explicit zeros, repeated, reordered, unknown and wrong-wire-
 * type fields, declared lengths off by a little or far past the frame, the
 * bounds and one past them), then byte-edited or truncated, and cut into parts
 * anywhere (empty parts included, a head or a varint split across parts). The
 * list decode must answer exactly what the schema's decode of one array
 * answers: the same message (the bulk field's bytes) or the same error.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { Uint8ArrayList } from 'uint8arraylist';
import { BLOB_MAX_BATCH_RAW_BYTES, BLOB_MAX_CHUNKS, BlobMessageInSchema, BlobMessageSchema } from '../../src/blob/wire.ts';
import { FRAME_HEADER_BYTES } from '../../src/codec/frame.ts';
import { MIGRATE_CHUNK_BYTES, MigrateInboundSchema, MigrateMessageSchema } from '../../src/migration/migrate-wire.ts';
import { FrameDecoder, FrameError, encodeFrame } from '../../src/net/framing.ts';
import type { MessageSchema } from '../../src/net/schema.ts';
import { varint } from '../support/wire-fuzz.ts';


/** One field as built: a varint or length-delimited bytes whose declared length may be off by `delta`. */
type Field = { n: number; wire: 0; value: number; pad: number } | { n: number; wire: 2; bytes: Uint8Array; delta: number; pad: number } | { n: number; wire: 5 };

function encodeFields(fields: readonly Field[]): Buffer {
  const out: Uint8Array[] = [];
  for (const f of fields) {
    out.push(Uint8Array.from(varint((f.n << 3) | f.wire)));
    if (f.wire === 0) out.push(Uint8Array.from(varint(f.value, f.pad)));
    else if (f.wire === 2) out.push(Uint8Array.from(varint(Math.max(0, f.bytes.byteLength + f.delta), f.pad)), f.bytes);
    else out.push(Uint8Array.of(1, 2, 3, 4));
  }
  return Buffer.concat(out);
}

/** A message: the outer oneof field `outerTag` around `fields`, its length possibly off or padded. */
function message(outerTag: number, fields: readonly Field[], delta: number, pad: number): Uint8Array {
  const body = encodeFields(fields);
  return Uint8Array.from(Buffer.concat([Uint8Array.from([outerTag, ...varint(Math.max(0, body.length + delta), pad)]), body]));
}

const pad = fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 1, max: 9 }) });
const delta = fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 2, arbitrary: fc.integer({ min: -3, max: 3 }) }, { weight: 1, arbitrary: fc.constantFrom(2 ** 31, 2 ** 32, 2 ** 32 + 5, 2 ** 35) });

function varintField(n: number, values: fc.Arbitrary<number>): fc.Arbitrary<Field> {
  return fc.record({ n: fc.constant(n), wire: fc.constant(0 as const), value: values, pad });
}
function bytesField(n: number, maxLength: number): fc.Arbitrary<Field> {
  return fc.record({ n: fc.constant(n), wire: fc.constant(2 as const), bytes: fc.uint8Array({ maxLength }), delta, pad });
}
const noise: fc.Arbitrary<Field> = fc.oneof(
  varintField(7, fc.nat()),
  bytesField(9, 4),
  fc.record({ n: fc.integer({ min: 1, max: 3 }), wire: fc.constant(5 as const) }),
);

/** Fields in the canonical order mostly, sometimes shuffled, repeated, dropped or with unknown fields among them. */
function fieldsOf(canonical: fc.Arbitrary<Field[]>): fc.Arbitrary<Field[]> {
  return fc.oneof(
    { weight: 4, arbitrary: canonical },
    { weight: 1, arbitrary: canonical.chain((fs) => fc.shuffledSubarray(fs, { minLength: 0, maxLength: fs.length })) },
    { weight: 1, arbitrary: fc.tuple(canonical, fc.nat(), fc.boolean()).map(([fs, i, dup]) => (fs.length === 0 ? fs : dup ? [...fs, fs[i % fs.length] as Field] : fs.toSpliced(i % fs.length, 1))) },
    { weight: 1, arbitrary: fc.tuple(canonical, noise, fc.nat()).map(([fs, extra, i]) => fs.toSpliced(i % (fs.length + 1), 0, extra)) },
  );
}

/** Bytes a peer could send: the built message, sometimes byte-edited or cut short. */
function mutated(built: fc.Arbitrary<Uint8Array>): fc.Arbitrary<Uint8Array> {
  return fc.oneof(
    { weight: 5, arbitrary: built },
    {
      weight: 2,
      arbitrary: fc.tuple(built, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 3 })).map(([bytes, edits]) => {
        const out = Uint8Array.from(bytes);
        for (const [at, b] of edits) if (out.length > 0) out[at % out.length] = b;
        return out;
      }),
    },
    { weight: 1, arbitrary: fc.tuple(built, fc.nat()).map(([bytes, cut]) => bytes.subarray(0, cut % (bytes.length + 1))) },
  );
}

/** `bytes` cut into parts at arbitrary points, with empty parts among them; each part in its own memory. */
function cutInto(bytes: Uint8Array, cuts: number[], empties: number[]): Uint8ArrayList {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const p of [...points, bytes.length]) {
    parts.push(Uint8Array.from(bytes.subarray(at, p)));
    at = p;
  }
  for (const e of empties) parts.splice(e % (parts.length + 1), 0, new Uint8Array(0));
  return new Uint8ArrayList(...parts);
}
const cuts = fc.array(fc.nat(), { maxLength: 6 });
const empties = fc.array(fc.nat(), { maxLength: 2 });

/** A decoded message made comparable: any bytes field (array or list) as hex. */
function shape(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v).toString('hex');
  if (v instanceof Uint8ArrayList) return Buffer.from(v.subarray()).toString('hex');
  if (Array.isArray(v)) return v.map(shape);
  if (typeof v === 'object' && v !== null) return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, shape(x)]));
  return v;
}

function outcome(run: () => unknown): unknown {
  try {
    return { ok: shape(run()) };
  } catch (err) {
    return { error: err instanceof FrameError ? `FrameError ${err.reason}: ${err.message}` : `${(err as Error).constructor.name}: ${(err as Error).message}` };
  }
}

function agrees<T, U>(inbound: MessageSchema<T>, strict: MessageSchema<U>, bytes: Uint8Array, list: Uint8ArrayList): void {
  const expected = outcome(() => strict.decode(bytes));
  expect(outcome(() => inbound.decodeList?.(list))).toEqual(expected);
  expect(outcome(() => inbound.decode(bytes))).toEqual(expected);
}

const BATCH_TAG = (6 << 3) | 2;
const DATA_TAG = (4 << 3) | 2;
const blobCount = fc.oneof(fc.nat({ max: 300 }), fc.constantFrom(0, 1, 127, 128, 16_383, 16_384, BLOB_MAX_CHUNKS, BLOB_MAX_CHUNKS + 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 35 + 3));
const batchFields = fieldsOf(
  fc.tuple(fc.option(varintField(1, blobCount), { nil: undefined }), varintField(2, blobCount), bytesField(3, 40)).map(([first, count, frame]) => (first === undefined ? [count, frame] : [first, count, frame])),
);
const rawLength = fc.oneof(fc.nat({ max: 300 }), fc.constantFrom(0, 1, MIGRATE_CHUNK_BYTES, MIGRATE_CHUNK_BYTES + 1, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + MIGRATE_CHUNK_BYTES));
const dataFields = fieldsOf(fc.tuple(bytesField(1, 40), fc.option(varintField(2, rawLength), { nil: undefined })).map(([chunk, raw]) => (raw === undefined ? [chunk] : [chunk, raw])));

describe('the list fast paths agree with the strict decode of one array', () => {
  it('blob Batch: any built, edited or truncated message, cut anywhere', () => {
    let fast = 0;
    fc.assert(
      fc.property(mutated(fc.tuple(batchFields, delta, pad).map(([fs, d, p]) => message(BATCH_TAG, fs, d, p))), cuts, empties, (bytes, c, e) => {
        const list = cutInto(bytes, c, e);
        agrees(BlobMessageInSchema, BlobMessageSchema, bytes, list);
        if ((outcome(() => BlobMessageInSchema.decodeList?.(list)) as { ok?: { kind: string } }).ok?.kind === 'batch') fast++;
      }),
      { numRuns: 10_000 },
    );
    // The generator reaches accepted batches, not only refusals.
    expect(fast).toBeGreaterThan(1000);
  });

  it('migrate Data: any built, edited or truncated message, cut anywhere', () => {
    let accepted = 0;
    fc.assert(
      fc.property(mutated(fc.tuple(dataFields, delta, pad).map(([fs, d, p]) => message(DATA_TAG, fs, d, p))), cuts, empties, (bytes, c, e) => {
        const list = cutInto(bytes, c, e);
        agrees(MigrateInboundSchema, MigrateMessageSchema, bytes, list);
        if ((outcome(() => MigrateInboundSchema.decodeList?.(list)) as { ok?: { kind: string } }).ok?.kind === 'data') accepted++;
      }),
      { numRuns: 10_000 },
    );
    expect(accepted).toBeGreaterThan(1000);
  });

  it('at the bulk field bounds: a frame or chunk of exactly the limit is taken, one byte more refused alike', () => {
    for (const frameBytes of [BLOB_MAX_BATCH_RAW_BYTES + FRAME_HEADER_BYTES, BLOB_MAX_BATCH_RAW_BYTES + FRAME_HEADER_BYTES + 1]) {
      const bytes = message(BATCH_TAG, [{ n: 2, wire: 0, value: 3, pad: 0 }, { n: 3, wire: 2, bytes: new Uint8Array(frameBytes).fill(7), delta: 0, pad: 0 }], 0, 0);
      agrees(BlobMessageInSchema, BlobMessageSchema, bytes, cutInto(bytes, [3, 7, 65_536, 1_000_000], [1]));
    }
    for (const chunkBytes of [MIGRATE_CHUNK_BYTES, MIGRATE_CHUNK_BYTES + 1]) {
      for (const raw of [[], [{ n: 2, wire: 0 as const, value: MIGRATE_CHUNK_BYTES, pad: 0 }]]) {
        const bytes = message(DATA_TAG, [{ n: 1, wire: 2, bytes: new Uint8Array(chunkBytes).fill(9), delta: 0, pad: 0 }, ...raw], 0, 0);
        agrees(MigrateInboundSchema, MigrateMessageSchema, bytes, cutInto(bytes, [2, 5, 100_000, bytes.length - 2], [0]));
      }
    }
  });
});

describe('FrameDecoder.pushLists', () => {
  const limits = { protocol: '/t', maxFrameBytes: 300 };

  it('gives the frames push() gives, whatever the chunks (empty ones included), and refuses the same prefixes at the same chunk', () => {
    const payload = fc.uint8Array({ maxLength: 320 });
    // A stream: frames (some above the limit), or a raw prefix (overlong, past 2^32-1) somewhere.
    const stream = fc.array(
      fc.oneof(
        { weight: 6, arbitrary: payload.map((p) => Uint8Array.from([...varint(p.length), ...p])) },
        { weight: 1, arbitrary: fc.tuple(fc.nat({ max: 300 }), fc.integer({ min: 1, max: 5 })).map(([n, extra]) => Uint8Array.from(varint(n, extra))) },
        { weight: 1, arbitrary: fc.constantFrom(Uint8Array.from(varint(2 ** 32)), Uint8Array.from(varint(2 ** 32 - 1)), Uint8Array.of(0x80, 0x80, 0x80, 0x80, 0x80, 0x00)) },
      ),
      { maxLength: 6 },
    );
    fc.assert(
      fc.property(stream, cuts, empties, (frames, c, e) => {
        const bytes = Uint8Array.from(frames.flatMap((f) => [...f]));
        const chunks = [...cutInto(bytes, c, e)];
        const byArray = new FrameDecoder(limits);
        const byList = new FrameDecoder(limits);
        for (const chunk of chunks) {
          const a = outcome(() => byArray.push(chunk));
          const b = outcome(() => byList.pushLists(chunk));
          expect(b).toEqual(a);
          // The limit holds between pushes: never more than maxFrameBytes + 5 held.
          expect(byList.bufferedBytes).toBeLessThanOrEqual(limits.maxFrameBytes + 5);
        }
        expect(outcome(() => byList.end())).toEqual(outcome(() => byArray.end()));
      }),
      { numRuns: 5000 },
    );
  });

  it('refuses a declared length above the limit from the prefix alone, before the payload arrives', () => {
    const d = new FrameDecoder(limits);
    expect(() => d.pushLists(encodeFrame(new Uint8Array(301), 301).subarray(0, 2))).toThrow(/exceeds the 300-byte limit/);
    expect(d.bufferedBytes).toBe(0);
  });
});
