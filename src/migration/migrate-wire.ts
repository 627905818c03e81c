/**
 * The messages of /dwcp/migrate/2.0.0 (proto/migrate.proto) at the edge:
 * one schema that validates every field of what arrives, and the outbound
 * schema the channels write with.
 *
 * Data frames carry a live migration's bytes (QEMU's stream, the disk
 * mirror's NBD connection), so they are most of what the channel moves and
 * their cost per byte is the relay's: they are written from the socket's
 * own buffers as parts (Data's protobuf tags and lengths, then the chunk's
 * arrays where they lie: no concatenation, no protobuf writer, no copy),
 * and read by a direct parse of that shape (raw_length present or left
 * out), whose chunk is a view of the frame. Both are checked as the
 * protobuf path checks them (the same validator); a Data frame in any other
 * shape (fields in another order, repeated, unknown) is no error of its own:
 * it goes through the full protobuf decode and its strict checks, which
 * accept or refuse it as they would any message.
 *
 * Invariants: decode never returns an unvalidated message; encode and
 * encodeParts refuse what the receiver would refuse (a chunk above
 * MIGRATE_CHUNK_BYTES, an empty one), naming the field.
 */
import protobuf from 'protobufjs';
import { Uint8ArrayList } from 'uint8arraylist';
import { WireCursor } from '../net/wire-cursor.ts';
import { isDwcpErrorCode } from '../errors.ts';
import { FrameError, type FramedStream } from '../net/framing.ts';
import { MAX_MULTIFD_CHANNELS, MULTIFD_COMPRESSIONS, type Multifd } from '../cloud/qemu/migration-qmp.ts';
import { FieldError, loadProto, partsPrefix, partsSchema, protoSchema, requireBytes, requireEnum, requireMessage, requireString, requireUint, type MessageSchema } from '../net/schema.ts';

export const MIGRATE_CHANNELS = ['state', 'disk', 'disk-image'] as const;
export type MigrateChannel = (typeof MIGRATE_CHANNELS)[number];

/** Bytes of one Data frame's chunk at most (raw or before LZ4). */
export const MIGRATE_CHUNK_BYTES = 256 * 1024;
/** A frame: a chunk and its tags and lengths. */
export const MIGRATE_MAX_FRAME_BYTES = MIGRATE_CHUNK_BYTES + 1024;
export const MIGRATE_MAX_TEXT = 1024;

export type MigrateMessage =
  | { kind: 'open'; open: MigrateOpen }
  | { kind: 'accept'; accept: Record<string, never> }
  | { kind: 'refuse'; refuse: { code: string; message: string } }
  | { kind: 'data'; data: { chunk: Uint8Array; rawLength: number } };

/**
 * What a channel is for. `stream` and `multifd` are the state channel's:
 * which of QEMU's connections it carries (0: the main channel, 1..N:
 * multifd) and QEMU's multifd settings (null: off), which the target gives
 * its destination QEMU before it listens.
 */
export interface MigrateOpen {
  migration: string;
  channel: MigrateChannel;
  key: string;
  version: string;
  stream: number;
  multifd: Multifd | null;
}

/** What a channel reads: a MigrateMessage, except that a Data chunk is the list of parts it arrived in (views, not copies). */
export type MigrateMessageIn = Exclude<MigrateMessage, { kind: 'data' }> | { kind: 'data'; data: { chunk: Uint8ArrayList; rawLength: number } };

/** A channel as both ends hold it. */
export type MigrateChannelStream = FramedStream<MigrateMessageIn, MigrateMessageOut>;

/** What a channel writes: a MigrateMessage, except that a Data chunk may be given as the arrays it lies in (on the wire, the same Data). */
export type MigrateMessageOut = Exclude<MigrateMessage, { kind: 'data' }> | { kind: 'data'; data: { chunk: Uint8Array | readonly Uint8Array[]; rawLength: number } };

const proto = loadProto(new URL('./proto/migrate.proto', import.meta.url));
const MIGRATE_MESSAGE = proto.lookupType('dwcp.migrate.v1.MigrateMessage');

function validate(o: Record<string, unknown>): MigrateMessage {
  const kind = requireEnum(o, 'kind', ['open', 'accept', 'refuse', 'data']);
  switch (kind) {
    case 'open':
      return { kind, open: requireMessage(o, kind, validateOpen) };
    case 'accept':
      return { kind, accept: {} };
    case 'refuse':
      return {
        kind,
        refuse: requireMessage(o, kind, (m) => {
          const code = requireString(m, 'code', { max: 32 });
          if (!isDwcpErrorCode(code)) throw new FieldError('code', `is ${JSON.stringify(code)}, not an error code`);
          return { code, message: requireString(m, 'message', { max: MIGRATE_MAX_TEXT, optional: true }) };
        }),
      };
    case 'data':
      return {
        kind,
        data: requireMessage(o, kind, (m) => ({ chunk: requireBytes(m, 'chunk', { max: MIGRATE_CHUNK_BYTES }), rawLength: requireUint(m, 'rawLength', { max: MIGRATE_CHUNK_BYTES }) })),
      };
  }
}

function validateOpen(m: Record<string, unknown>): MigrateOpen {
  const channel = requireEnum(m, 'channel', MIGRATE_CHANNELS);
  const channels = requireUint(m, 'multifdChannels', { max: MAX_MULTIFD_CHANNELS });
  const stream = requireUint(m, 'stream', { max: channels });
  const multifd = channels === 0 ? null : { channels, compression: requireEnum(m, 'multifdCompression', MULTIFD_COMPRESSIONS) };
  if (multifd !== null && channel !== 'state') throw new FieldError('multifdChannels', `is ${channels} on a ${channel} channel; only the state channel is QEMU's migration stream`);
  if (multifd === null && m['multifdCompression'] !== undefined && m['multifdCompression'] !== '') throw new FieldError('multifdCompression', 'is set while multifdChannels is 0');
  return {
    migration: requireString(m, 'migration', { max: 128 }),
    channel,
    key: requireString(m, 'key', { max: MIGRATE_MAX_TEXT, optional: true }),
    version: requireString(m, 'version', { max: 64, optional: true }),
    stream,
    multifd,
  };
}

/** Every message, every field checked; what arrives is decoded by MigrateInboundSchema, which falls back to this. */
export const MigrateMessageSchema: MessageSchema<MigrateMessage> = (() => {
  const schema = protoSchema(MIGRATE_MESSAGE, validate, { strictFields: true });
  // Open's multifd is one field here and two on the wire (multifd_channels, multifd_compression).
  const wire = (msg: MigrateMessage): MigrateMessage => {
    if (msg.kind !== 'open') return msg;
    const { multifd, ...rest } = msg.open;
    return { kind: 'open', open: { ...rest, ...(multifd === null ? {} : { multifdChannels: multifd.channels, multifdCompression: multifd.compression }) } as unknown as MigrateOpen };
  };
  return { ...schema, encode: (msg) => schema.encode(wire(msg)) };
})();

/** Protobuf tags (field number << 3 | wire type) of MigrateMessage.data and Data's fields. */
const TAG = { data: (4 << 3) | 2, chunk: (1 << 3) | 2, rawLength: (2 << 3) | 0 } as const;
function dataField(field: string, problem: string): FrameError {
  return new FrameError('schema', `${MigrateMessageSchema.name}: field data.${field} ${problem}`);
}

/** A Data message's encoding as parts: the tags and lengths, the chunk's arrays as given, then raw_length unless 0 (proto3 leaves it out). */
function dataParts(chunk: readonly Uint8Array[], rawLength: number): Uint8Array[] {
  const chunkBytes = chunk.reduce((sum, part) => sum + part.byteLength, 0);
  if (chunkBytes === 0) throw dataField('chunk', 'is required');
  if (chunkBytes > MIGRATE_CHUNK_BYTES) throw dataField('chunk', `is ${chunkBytes} bytes long, above the ${MIGRATE_CHUNK_BYTES}-byte limit`);
  if (!Number.isSafeInteger(rawLength) || rawLength < 0 || rawLength > MIGRATE_CHUNK_BYTES) throw dataField('rawLength', `is ${rawLength}, outside 0..${MIGRATE_CHUNK_BYTES}`);
  const fields = protobuf.Writer.create().uint32(TAG.chunk).uint32(chunkBytes).finish();
  const tail = rawLength === 0 ? null : protobuf.Writer.create().uint32(TAG.rawLength).uint32(rawLength).finish();
  const prefix = partsPrefix(TAG.data, fields, chunkBytes + (tail?.byteLength ?? 0));
  return tail === null ? [prefix, ...chunk] : [prefix, ...chunk, tail];
}

/** Longest head of a Data message before its chunk's bytes, and longest tail after them: tags and 5-byte varints. */
const MAX_DATA_HEAD_BYTES = 2 * (1 + 5);
const MAX_DATA_TAIL_BYTES = 1 + 5;

/**
 * A Data message in exactly the shape dataParts writes (raw_length written
 * out or not), validated, its chunk a sublist of `frame` (the parts it
 * arrived in: nothing copied); undefined for anything else (the full decode
 * judges it).
 */
function parseData(frame: Uint8ArrayList): MigrateMessageIn | undefined {
  const total = frame.byteLength;
  // Views when the first part holds the head (nearly always); else a copy of at most 12 bytes, and 6 for the tail.
  const head = frame.subarray(0, Math.min(total, MAX_DATA_HEAD_BYTES));
  // Tags as single bytes, lengths and numbers as minimal varints (what dataParts writes): protobufjs' uint32()
  // would also take a 6- to 10-byte or overflowing varint that its decode refuses as a length or a tag.
  // A varint that is not minimal, or runs past the head, reads as -1: not the shape; the full decode judges it.
  const c = new WireCursor(head);
  if (!c.tag(TAG.data) || c.varint() !== total - c.at || !c.tag(TAG.chunk)) return undefined;
  const size = c.varint();
  if (size < 1 || size > MIGRATE_CHUNK_BYTES || c.at + size > total) return undefined;
  const chunkEnd = c.at + size;
  let rawLength = 0;
  if (chunkEnd < total) {
    if (total - chunkEnd > MAX_DATA_TAIL_BYTES) return undefined;
    const t = new WireCursor(frame.subarray(chunkEnd, total));
    if (!t.tag(TAG.rawLength)) return undefined;
    rawLength = t.varint();
    if (rawLength < 0 || !t.done) return undefined;
  }
  if (rawLength > MIGRATE_CHUNK_BYTES) return undefined;
  return { kind: 'data', data: { chunk: frame.sublist(c.at, chunkEnd), rawLength } };
}

function asInbound(msg: MigrateMessage): MigrateMessageIn {
  return msg.kind === 'data' ? { kind: 'data', data: { chunk: new Uint8ArrayList(msg.data.chunk), rawLength: msg.data.rawLength } } : msg;
}

/**
 * What a channel reads: MigrateMessageSchema, with Data frames in the shape
 * dataParts writes parsed directly from the parts they arrived in, their
 * chunk handed on as those parts (the relay writes them to QEMU's socket
 * where they lie).
 */
export const MigrateInboundSchema: MessageSchema<MigrateMessageIn> = partsSchema(MigrateMessageSchema, parseData, asInbound, (msg): MigrateMessage =>
  msg.kind === 'data' ? { kind: 'data', data: { chunk: msg.data.chunk.subarray(), rawLength: msg.data.rawLength } } : msg,
);

/** What a channel writes with: Data frames from their parts, every other message through MigrateMessageSchema. */
export const MigrateOutboundSchema: MessageSchema<MigrateMessageOut> = {
  name: MigrateMessageSchema.name,
  decode: (bytes) => MigrateMessageSchema.decode(bytes),
  encode: (msg) => Buffer.concat(encodeParts(msg)),
  encodeParts,
};

function encodeParts(msg: MigrateMessageOut): readonly Uint8Array[] {
  if (msg.kind !== 'data') return [MigrateMessageSchema.encode(msg)];
  const { chunk, rawLength } = msg.data;
  return dataParts(chunk instanceof Uint8Array ? [chunk] : chunk, rawLength);
}
