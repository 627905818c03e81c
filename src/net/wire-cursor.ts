/**
 * Protobuf varints, a writer and a read cursor for the hand-written codecs of hot
 * messages (KV write commands, Raft's steady-state messages), which write and
 * read one canonical layout and leave everything else to the schema path
 * (src/net/schema.ts).
 *
 * Invariants: numbers are safe non-negative integers (below 2^53), written
 * as protobufjs writes them (minimal little-endian base-128). Every read of
 * WireCursor returns -1, null or false on anything but what it was asked
 * for (a different tag, a varint that is not minimal or passes 2^53, a length
 * past the end, invalid UTF-8), so a decoder gives up at once and the schema
 * path decides what the bytes are.
 */
import { Buffer, isUtf8 } from 'node:buffer';

/** Bytes of `n` as a varint. */
export function varintBytes(n: number): number {
  let bytes = 1;
  for (let rest = n; rest >= 0x80; rest = Math.floor(rest / 0x80)) bytes++;
  return bytes;
}

/** Bytes of a varint field with a one-byte tag: the tag and `n` as a varint. */
export function countFieldBytes(n: number): number {
  return 1 + varintBytes(n);
}

/** Bytes of a length-delimited field with a one-byte tag: the tag, the length's varint and the `body` bytes. */
export function fieldBytes(body: number): number {
  return 1 + varintBytes(body) + body;
}

/** Writes `n` as a varint at `at`; returns the position after it. */
export function writeVarint(buf: Uint8Array, at: number, n: number): number {
  let pos = at;
  let rest = n;
  while (rest >= 0x80) {
    buf[pos++] = (rest % 0x80) | 0x80;
    rest = Math.floor(rest / 0x80);
  }
  buf[pos++] = rest;
  return pos;
}

/**
 * Writes fields in order into an array its caller sized beforehand (with
 * varintBytes); `at` is where the next byte goes, so the caller can check it
 * ended exactly at the size it computed.
 */
export class WireWriter {
  readonly out: Buffer;
  at = 0;

  constructor(out: Uint8Array) {
    this.out = Buffer.isBuffer(out) ? out : Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  }

  varint(n: number): void {
    this.at = writeVarint(this.out, this.at, n);
  }

  /** A varint field, written even when 0 (a caller that leaves proto3 zeros out checks first). */
  count(tag: number, n: number): void {
    this.out[this.at++] = tag;
    this.varint(n);
  }

  /** A length-delimited field of `bytes`. */
  bytes(tag: number, bytes: Uint8Array): void {
    this.count(tag, bytes.byteLength);
    this.out.set(bytes, this.at);
    this.at += bytes.byteLength;
  }

  /** A length-delimited field of `s` in UTF-8, `n` its byte length. */
  text(tag: number, s: string, n = Buffer.byteLength(s, 'utf8')): void {
    this.count(tag, n);
    this.at += this.out.write(s, this.at, n, 'utf8');
  }
}

export class WireCursor {
  readonly bytes: Uint8Array;
  at: number;
  end: number;
  #text: Buffer | null = null;

  constructor(bytes: Uint8Array, at = 0, end = bytes.byteLength) {
    this.bytes = bytes;
    this.at = at;
    this.end = end;
  }

  get done(): boolean {
    return this.at >= this.end;
  }

  /** A minimal varint below 2^53, or -1. */
  varint(): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 8 && this.at < this.end; i++) {
      const b = this.bytes[this.at++] as number;
      value += (b & 0x7f) * scale;
      if (b < 0x80) return (b === 0 && i > 0) || value > Number.MAX_SAFE_INTEGER ? -1 : value;
      scale *= 0x80;
    }
    return -1;
  }

  /** The length of a length-delimited field that fits in what is left, or -1. */
  length(): number {
    const n = this.varint();
    return n < 0 || n > this.end - this.at ? -1 : n;
  }

  /** Consumes the one-byte tag `expected` if it is next. */
  tag(expected: number): boolean {
    if (this.at >= this.end || this.bytes[this.at] !== expected) return false;
    this.at++;
    return true;
  }

  /** The varint after `tag` if that tag is next; `absent` (a proto3 zero left out) if not; -1 if the varint is not one. */
  count(tag: number, absent = 0): number {
    return this.tag(tag) ? this.varint() : absent;
  }

  /** A non-empty, valid UTF-8 string of at most maxBytes bytes, or null. */
  text(maxBytes: number): string | null {
    const n = this.length();
    if (n <= 0 || n > maxBytes) return null;
    const start = this.at;
    this.at += n;
    const { bytes } = this;
    this.#text ??= Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const view = this.#text.subarray(start, start + n);
    return isUtf8(view) ? view.toString('utf8') : null;
  }
}
