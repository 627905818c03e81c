/**
 * The direct codec of the three write commands every client write takes (put,
 * delete, cas): their protobuf bytes written and read by hand, without
 * protobufjs' fromObject/toObject round trip, the decimal-string uint64s and
 * the generic field validators. A put's command is encoded once and decoded
 * four to five times (the follower checking what it forwards, the leader
 * checking what it was forwarded, every member applying it), and the schema
 * path took ~6 % of the members' CPU at 64 clients (bench/RESULTS.md).
 *
 * Invariants (the schema path in command.ts stays the definition; this is a
 * shortcut that must never disagree with it):
 * - encodeWriteCommand returns exactly the bytes the schema path writes for
 *   the same command (fields in field-number order; a proto3 default, the
 *   empty value or a cas's revision 0, left out, as protobufjs does), or
 *   null for any command it does not handle or that breaks a bound; the
 *   caller then takes the schema path, which encodes it or throws the error
 *   naming the field.
 * - decodeWriteCommand returns what the schema path's decode returns for the
 *   same bytes (the same fields, in the same order, the value a view of the
 *   input of the input's own type), or null for anything but the layout
 *   encodeWriteCommand writes of a command within every bound: an unknown,
 *   repeated, missing or reordered field, a non-minimal length, invalid
 *   UTF-8, an empty (absent) value, a bound broken. Null sends the caller
 *   to the schema path, which accepts what protobuf tolerates and names the
 *   error of what it refuses, so the set of accepted encodings is unchanged.
 */
import { Buffer } from 'node:buffer';
import { WireCursor, WireWriter, countFieldBytes, fieldBytes } from '../net/wire-cursor.ts';
import type { KvCommand } from './command.ts';

/** Bounds of command.ts (KV_MAX_KEY_BYTES, KV_MAX_VALUE_BYTES, KV_MAX_CLIENT_ID), repeated here to keep this module free of a cycle; command.ts checks they agree. */
export const WRITE_WIRE_BOUNDS = { keyBytes: 1024, valueBytes: 1024 * 1024, clientIdUnits: 128 } as const;

// Tags: (field number << 3) | wire type; 2 = length-delimited, 0 = varint.
const TAG_CLIENT_ID = 0x0a;
const TAG_SEQ = 0x10;
const TAG_PUT = 0x1a;
const TAG_DELETE = 0x22;
const TAG_CAS = 0x2a;
const TAG_KEY = 0x0a;
const TAG_PUT_VALUE = 0x12;
const TAG_CAS_REVISION = 0x10;
const TAG_CAS_VALUE = 0x1a;

type WriteCommand = Extract<KvCommand, { op: 'put' | 'delete' | 'cas' }>;

function validText(s: unknown, maxUnits: number): s is string {
  return typeof s === 'string' && s !== '' && s.length <= maxUnits && s.isWellFormed();
}

/** The schema path's bytes for a put, delete or cas within bounds; null for anything else. */
export function encodeWriteCommand(cmd: KvCommand): Buffer | null {
  if (cmd.op !== 'put' && cmd.op !== 'delete' && cmd.op !== 'cas') return null;
  const { clientId, seq, key } = cmd as WriteCommand;
  if (!validText(clientId, WRITE_WIRE_BOUNDS.clientIdUnits) || !Number.isSafeInteger(seq) || seq < 1) return null;
  if (!validText(key, Number.MAX_SAFE_INTEGER)) return null;
  const keyBytes = Buffer.byteLength(key, 'utf8');
  if (keyBytes > WRITE_WIRE_BOUNDS.keyBytes) return null;
  let value: Uint8Array | null = null;
  let revision = -1;
  if (cmd.op !== 'delete') {
    if (!(cmd.value instanceof Uint8Array) || cmd.value.byteLength > WRITE_WIRE_BOUNDS.valueBytes) return null;
    // protobufjs leaves proto3 defaults (an empty bytes, a zero) out of the encoding.
    if (cmd.value.byteLength > 0) value = cmd.value;
  }
  if (cmd.op === 'cas') {
    if (!Number.isSafeInteger(cmd.expectedRevision) || cmd.expectedRevision < 0) return null;
    if (cmd.expectedRevision > 0) revision = cmd.expectedRevision;
  }
  const idBytes = Buffer.byteLength(clientId, 'utf8');
  let body = fieldBytes(keyBytes);
  if (revision >= 0) body += countFieldBytes(revision);
  if (value !== null) body += fieldBytes(value.byteLength);
  const total = fieldBytes(idBytes) + countFieldBytes(seq) + fieldBytes(body);
  const w = new WireWriter(Buffer.allocUnsafe(total));
  w.text(TAG_CLIENT_ID, clientId, idBytes);
  w.count(TAG_SEQ, seq);
  w.count(cmd.op === 'put' ? TAG_PUT : cmd.op === 'delete' ? TAG_DELETE : TAG_CAS, body);
  w.text(TAG_KEY, key, keyBytes);
  if (revision >= 0) w.count(TAG_CAS_REVISION, revision);
  if (value !== null) w.bytes(cmd.op === 'put' ? TAG_PUT_VALUE : TAG_CAS_VALUE, value);
  return w.at === total ? w.out : null;
}

/** What the schema path decodes from these bytes, when they are a put, delete or cas as encodeWriteCommand writes it; else null. */
export function decodeWriteCommand(bytes: Uint8Array): WriteCommand | null {
  const c = new WireCursor(bytes);
  if (!c.tag(TAG_CLIENT_ID)) return null;
  // At most 3 UTF-8 bytes per UTF-16 unit; the unit count is checked on the string.
  const clientId = c.text(3 * WRITE_WIRE_BOUNDS.clientIdUnits);
  if (clientId === null || clientId.length > WRITE_WIRE_BOUNDS.clientIdUnits || !c.tag(TAG_SEQ)) return null;
  const seq = c.varint();
  if (seq < 1 || c.at >= c.end) return null;
  const opTag = bytes[c.at++];
  const op = opTag === TAG_PUT ? 'put' : opTag === TAG_DELETE ? 'delete' : opTag === TAG_CAS ? 'cas' : null;
  if (op === null) return null;
  const body = c.length();
  // The op's message must end the command: anything after it is a field the direct path does not take.
  if (body < 0 || c.at + body !== c.end || !c.tag(TAG_KEY)) return null;
  const key = c.text(WRITE_WIRE_BOUNDS.keyBytes);
  if (key === null || !key.isWellFormed()) return null;
  if (op === 'delete') return c.at === c.end ? { clientId, seq, op, key } : null;
  // A cas expecting revision 0 has no revision field (a proto3 default is not written).
  let expectedRevision = 0;
  if (op === 'cas' && c.tag(TAG_CAS_REVISION)) {
    expectedRevision = c.varint();
    if (expectedRevision < 0) return null;
  }
  if (!c.tag(op === 'put' ? TAG_PUT_VALUE : TAG_CAS_VALUE)) return null;
  const n = c.length();
  if (n <= 0 || n > WRITE_WIRE_BOUNDS.valueBytes || c.at + n !== c.end) return null;
  const value = bytes.subarray(c.at, c.end);
  return op === 'put' ? { clientId, seq, op, key, value } : { clientId, seq, op, key, expectedRevision, value };
}
