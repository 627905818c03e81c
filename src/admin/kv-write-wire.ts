/**
 * The admin socket's Kv.Put request and write response (kv.proto) read and
 * written by hand: every client put crosses the admin socket once each way,
 * and @grpc/proto-loader's decode-then-toObject (decimal-string uint64s,
 * defaults filled in) and fromObject-then-encode cost more than the handler
 * around them.
 *
 * Invariants: proto-loader's own functions stay the definition, these are
 * shortcuts that never disagree with them.
 * - decodePutRequest returns exactly what proto-loader's requestDeserialize
 *   returns (the same fields in the same order, proto3 defaults filled in,
 *   uint64s as decimal strings, the value a view of the input), or null for
 *   anything but fields in number order, each at most once, with minimal
 *   varints below 2^53 and valid UTF-8 (the caller then asks proto-loader).
 * - encodeWriteResponse returns exactly the bytes proto-loader's
 *   responseSerialize writes for the same object (its protobufjs writes
 *   every field that is set, zeros included, and leaves out a null `prev`),
 *   or null for an object outside the shapes kv-service.ts builds.
 */
import { Buffer } from 'node:buffer';
import { WireCursor, WireWriter, countFieldBytes, fieldBytes } from '../net/wire-cursor.ts';
import type { KvItem, KvWriteOptions, KvWriteResponse } from './schema.ts';

/** What proto-loader's deserializer gives for KvPutRequest (uint64s as strings). */
export interface WirePut {
  key: string;
  value: Buffer;
  options: (Omit<KvWriteOptions, 'seq' | 'ttl_ms'> & { seq: string; ttl_ms: string }) | null;
}

/** A string field that may be absent (''): null when present but not valid UTF-8 or too long. */
function optionalText(c: WireCursor, tag: number, maxBytes: number): string | null {
  if (!c.tag(tag)) return '';
  if (c.at < c.end && c.bytes[c.at] === 0) {
    c.at++;
    return '';
  }
  return c.text(maxBytes);
}

/** The largest string a field may carry here (any more goes to proto-loader). */
const MAX_TEXT_BYTES = 64 * 1024;

export function decodePutRequest(buf: Buffer): WirePut | null {
  const c = new WireCursor(buf);
  const key = optionalText(c, 0x0a, MAX_TEXT_BYTES);
  if (key === null) return null;
  let value: Buffer = Buffer.alloc(0);
  if (c.tag(0x12)) {
    const n = c.length();
    if (n < 0) return null;
    value = buf.subarray(c.at, c.at + n);
    c.at += n;
  }
  let options: WirePut['options'] = null;
  if (c.tag(0x1a)) {
    const n = c.length();
    if (n < 0) return null;
    const end = c.at + n;
    c.end = end;
    const scope = optionalText(c, 0x0a, MAX_TEXT_BYTES);
    const clientId = optionalText(c, 0x12, MAX_TEXT_BYTES);
    const seq = c.count(0x18);
    const timeout = c.count(0x20);
    const consistency = optionalText(c, 0x2a, MAX_TEXT_BYTES);
    const ttl = c.count(0x30);
    if (scope === null || clientId === null || seq < 0 || timeout < 0 || timeout > 0xffffffff || consistency === null || ttl < 0 || !c.done) return null;
    options = { scope, client_id: clientId, seq: String(seq), timeout_ms: timeout, consistency, ttl_ms: String(ttl) };
    c.end = buf.byteLength;
  }
  return c.done ? { key, value, options } : null;
}

const MAX_UINT32 = 0xffffffff;

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
}

/** Bytes of a string field (one-byte tag). */
function textField(s: string): number {
  return fieldBytes(Buffer.byteLength(s, 'utf8'));
}

function itemBytes(item: KvItem): number {
  return (
    textField(item.key) +
    fieldBytes(item.value.byteLength) +
    countFieldBytes(item.revision) +
    countFieldBytes(item.create_revision) +
    textField(item.region) +
    textField(item.hlc)
  );
}

function validItem(item: KvItem): boolean {
  return (
    typeof item.key === 'string' && item.key.isWellFormed() && item.value instanceof Uint8Array && isCount(item.revision) && isCount(item.create_revision) &&
    typeof item.region === 'string' && item.region.isWellFormed() && typeof item.hlc === 'string' && item.hlc.isWellFormed()
  );
}

export function encodeWriteResponse(r: KvWriteResponse): Buffer | null {
  if (typeof r.ok !== 'boolean' || !isCount(r.revision) || !isCount(r.current_revision) || !isCount(r.regions_acked) || !isCount(r.regions_total)) return null;
  if (r.regions_acked > MAX_UINT32 || r.regions_total > MAX_UINT32) return null;
  for (const s of [r.reason, r.leader, r.consistency]) if (typeof s !== 'string' || !s.isWellFormed()) return null;
  const { prev } = r;
  if (prev !== null && (typeof prev !== 'object' || !validItem(prev))) return null;
  const prevBytes = prev === null ? -1 : itemBytes(prev);
  const total =
    2 + countFieldBytes(r.revision) + textField(r.reason) + countFieldBytes(r.current_revision) +
    (prev === null ? 0 : fieldBytes(prevBytes)) +
    textField(r.leader) + textField(r.consistency) + countFieldBytes(r.regions_acked) + countFieldBytes(r.regions_total);
  const w = new WireWriter(Buffer.allocUnsafe(total));
  w.count(0x08, r.ok ? 1 : 0);
  w.count(0x10, r.revision);
  w.text(0x1a, r.reason);
  w.count(0x20, r.current_revision);
  if (prev !== null) {
    w.count(0x2a, prevBytes);
    w.text(0x0a, prev.key);
    w.bytes(0x12, prev.value);
    w.count(0x18, prev.revision);
    w.count(0x20, prev.create_revision);
    w.text(0x2a, prev.region);
    w.text(0x32, prev.hlc);
  }
  w.text(0x32, r.leader);
  w.text(0x3a, r.consistency);
  w.count(0x40, r.regions_acked);
  w.count(0x48, r.regions_total);
  return w.at === total ? w.out : null;
}
