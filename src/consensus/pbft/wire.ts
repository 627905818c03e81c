/**
 * The PBFT wire (protocol /dwcp/pbft/3.0.0): how what one Ready produced for
 * one peer becomes frames, and how a received frame becomes messages and
 * replies the driver may hand to the core. A frame's payload is the canonical
 * encoding (encoding.ts) of a PbftFrame `{ messages, replies }`: the format
 * signatures are computed over, so decoding and re-encoding a message gives
 * exactly the bytes its signature covers and nothing is translated on the way.
 *
 * Invariants:
 * - decodePbftFrame returns only a frame whose every message passed
 *   messageProblem and every reply replyProblem, whose top-level `from`s are
 *   the authenticated sender (a member may not speak for another; evidence
 *   nested in certificates is the core's to verify by signature), with at
 *   most PBFT_MAX_FRAME_ITEMS items and nesting within PBFT_MAX_DEPTH;
 *   anything else is a FrameError ('malformed' for bytes that are not a
 *   canonical encoding, 'schema' for the wrong shape) naming the field.
 * - Encoding runs the receiver's shape checks first, so we never send a frame
 *   a correct peer must refuse; encodePbftFrames keeps the items' order
 *   across the frames it splits them into.
 * - Decoded byte fields are copies (decodeCanonical copies them), so what the
 *   core keeps never pins a frame or the muxer's buffers.
 */
import { FrameError } from '../../net/framing.ts';
import { decodeCanonical, encodeCanonical, type Canonical } from './encoding.ts';
import type { PbftConfig, PbftMessage, ReplicaId, Reply } from './types.ts';
import { FORWARDED_TYPES, PbftInputError } from './types.ts';
import { messageProblem, replyProblem } from './validate.ts';

/**
 * 3.0.0: a client request may carry a `path` (one of a client batch, signed
 * once for all: encoding.ts sealClientBatch), whose signature a 2.0.0
 * replica would not verify (it checks the request as signed alone). 2.0.0: relayed requests and replies carry no signature
 * (1.0.0 signed every message). No two of them talk to each other.
 */
export const PBFT_PROTOCOL = '/dwcp/pbft/3.0.0';

/** What the driver hands the core as maxSnapshotBytes: the frame limit below is sized for it. */
export const PBFT_MAX_SNAPSHOT_BYTES = 32 * 1024 * 1024;

/*
 * Sizing the frame. The largest message a correct replica sends is 'state':
 * a snapshot, the reply cache, and commit certificates of the entries after
 * the checkpoint (maxStateTransferEntries, 64). In the canonical encoding (a
 * 5-byte tag + u32 head per container, string or bytes; keys cost 4 + their
 * length; numbers 9 bytes), with member names of at most 63 bytes and 64-byte
 * Ed25519 signatures:
 * - a request costs requestBytes() + 27 (its key names and heads), so a batch
 *   costs at most maxBatchBytes + 32 * maxBatchRequests;
 * - a certificate adds its pre-prepare's header (~313 bytes) and its commits
 *   (at most n, ~294 bytes each): 64 KiB covers n up to ~220 members;
 * - a reply-cache record costs 73 bytes + client id + result: 512 bytes
 *   covers a 128-character client id and a ~300-byte result (results are not
 *   bounded by the core: a state machine with larger results needs a smaller
 *   maxClients, or this bound does not hold);
 * - the message's own fields and its checkpoint proof (at most n checkpoint
 *   messages of ~281 bytes) fit in 1 MiB.
 * With the defaults and a 32 MiB snapshot that is
 *   32 MiB + 64 * (1 MiB + 2 KiB + 64 KiB) + 10,000 * 512 + 1 MiB = 111,157,248 bytes (~106 MiB),
 * under the 112 MiB limit. checkPbftConfigForWire refuses a config for which
 * it is not.
 *
 * FramedStream takes a frame of any size up to its limit: only the decoder
 * buffers a frame being received (a stream is paused, and the muxer's 4 MiB
 * window applies, only while whole frames wait for the reader), and the
 * length prefix (5 varint bytes, up to 2^32 - 1) has room to spare.
 */
const REQUEST_FRAMING_BYTES = 32;
const CERTIFICATE_OVERHEAD_BYTES = 64 * 1024;
const CLIENT_RECORD_BYTES = 512;
const STATE_OVERHEAD_BYTES = 1024 * 1024;

/** 112 MiB: the largest 'state' message of the driver's config (~106 MiB, see above) and some spare. */
export const PBFT_MAX_FRAME_BYTES = 112 * 1024 * 1024;
/** Messages plus replies in one frame; bounds a frame's decode work. A larger Ready is split. */
export const PBFT_MAX_FRAME_ITEMS = 4096;
/**
 * Nesting of the deepest legitimate frame, measured: frame > messages >
 * new_view > viewChanges > view_change > prepared > certificate > prePrepare >
 * batch > request > operation is 10 levels below the frame object.
 */
export const PBFT_MAX_DEPTH = 10;
/**
 * Values decoded per frame, checked while decoding (a frame of 100 MiB of
 * one-byte nulls would otherwise take gigabytes of heap before the item cap
 * is looked at). The largest legitimate frame, a full state message, has
 * about 120 000; a Ready's worth of agreement messages far fewer.
 */
export const PBFT_MAX_FRAME_VALUES = 1_000_000;

export interface PbftFrame {
  readonly messages: readonly PbftMessage[];
  readonly replies: readonly Reply[];
}

const FRAME_NAME = 'PbftFrame';
const EMPTY_FRAME_BYTES = encodeCanonical({ messages: [], replies: [] }).byteLength;

/** Upper bound on the encoded size of the largest 'state' message a core with `config` sends. */
export function pbftStateMessageBytes(config: PbftConfig): number {
  const certificate = config.maxBatchBytes + config.maxBatchRequests * REQUEST_FRAMING_BYTES + CERTIFICATE_OVERHEAD_BYTES;
  return config.maxSnapshotBytes + config.maxStateTransferEntries * certificate + config.maxClients * CLIENT_RECORD_BYTES + STATE_OVERHEAD_BYTES;
}

/**
 * Refuses a PbftConfig whose state transfer might not fit a frame, rather
 * than let a lagging replica stall on encode errors at its peers.
 */
export function checkPbftConfigForWire(config: PbftConfig, maxFrameBytes: number = PBFT_MAX_FRAME_BYTES): void {
  const bytes = pbftStateMessageBytes(config);
  if (bytes > maxFrameBytes) {
    throw new PbftInputError(
      `pbft config: a state transfer (maxSnapshotBytes ${config.maxSnapshotBytes}, maxStateTransferEntries ${config.maxStateTransferEntries} of maxBatchBytes ${config.maxBatchBytes}, maxClients ${config.maxClients}) may need ${bytes} bytes, above the ${maxFrameBytes}-byte pbft frame limit`,
    );
  }
}

// ------------------------------------------------------------ shape checks

type Problem = string | null;

function isPlainObject(v: Canonical): v is { readonly [key: string]: Canonical | undefined } {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function schemaError(detail: string): FrameError {
  return new FrameError('schema', `${FRAME_NAME}: ${detail}`);
}

/**
 * Checks each item's shape and that every top-level `from` is `sender`
 * (when given; else that they all agree), forwarded evidence aside.
 * Throws FrameError('schema') naming the field.
 */
function checkItems(messages: readonly unknown[], replies: readonly unknown[], sender: ReplicaId | undefined): void {
  let from = sender;
  const check = (list: readonly unknown[], field: string, problemOf: (v: unknown) => Problem): void => {
    for (const [i, item] of list.entries()) {
      const problem = problemOf(item);
      if (problem !== null) throw schemaError(`field ${field}[${i}]: ${problem}`);
      const itemFrom = (item as { from: string }).from;
      if (FORWARDED_TYPES.has((item as { type: PbftMessage['type'] }).type)) continue;
      from ??= itemFrom;
      if (itemFrom !== from) {
        const who = sender === undefined ? 'the frame is from' : 'the authenticated sender is';
        throw schemaError(`field ${field}[${i}].from is "${itemFrom}", but ${who} "${from}"`);
      }
    }
  };
  check(messages, 'messages', (v) => messageProblem(v as PbftMessage));
  check(replies, 'replies', replyProblem);
}

// ------------------------------------------------------------ wire -> driver

/**
 * Decode and validate one frame from the member `from` (the name the
 * connection authenticated). Throws FrameError: 'oversized' above the frame
 * limit, 'malformed' if the bytes are not a canonical encoding (truncated,
 * trailing bytes, unknown tag, too deep), 'schema' for anything else, each
 * naming the field.
 */
export function decodePbftFrame(bytes: Uint8Array, expect: { from: ReplicaId }): PbftFrame {
  if (bytes.byteLength > PBFT_MAX_FRAME_BYTES) {
    throw new FrameError('oversized', `${FRAME_NAME} of ${bytes.byteLength} bytes exceeds the ${PBFT_MAX_FRAME_BYTES}-byte limit`);
  }
  let value: Canonical;
  try {
    value = decodeCanonical(bytes, PBFT_MAX_DEPTH, PBFT_MAX_FRAME_VALUES);
  } catch (err) {
    if (err instanceof RangeError) throw new FrameError('malformed', `${FRAME_NAME}: ${err.message}`);
    throw err;
  }
  if (!isPlainObject(value)) throw schemaError('the frame must be an object {messages, replies}');
  for (const key of Object.keys(value)) {
    if (key !== 'messages' && key !== 'replies') throw schemaError(`field ${JSON.stringify(key)} is not part of a frame (only messages and replies are)`);
  }
  const { messages, replies } = value;
  if (!Array.isArray(messages)) throw schemaError('field messages must be a list');
  if (!Array.isArray(replies)) throw schemaError('field replies must be a list');
  const count = messages.length + replies.length;
  if (count === 0) throw schemaError('fields messages and replies are both empty: a frame carries at least one item');
  if (count > PBFT_MAX_FRAME_ITEMS) {
    throw schemaError(`fields messages and replies hold ${count} items, above the ${PBFT_MAX_FRAME_ITEMS}-item limit`);
  }
  checkItems(messages, replies, expect.from);
  return { messages: messages as unknown as PbftMessage[], replies: replies as unknown as Reply[] };
}

// ------------------------------------------------------------ driver -> wire

function canonical(value: PbftFrame | PbftMessage | Reply): Uint8Array {
  return encodeCanonical(value as unknown as Canonical);
}

/**
 * The frames that carry `frame` (none if it is empty), in order, each at most
 * `maxFrameBytes` and PBFT_MAX_FRAME_ITEMS items. Every item must have the
 * receiver-checked shape and one common `from` (FrameError('schema')
 * otherwise); a single item that cannot fit a frame of its own is a
 * RangeError naming its type, its size and the limit.
 */
export function encodePbftFrames(frame: PbftFrame, maxFrameBytes: number = PBFT_MAX_FRAME_BYTES): Uint8Array[] {
  const { messages, replies } = frame;
  if (messages.length + replies.length === 0) return [];
  checkItems(messages, replies, undefined);
  if (messages.length + replies.length <= PBFT_MAX_FRAME_ITEMS) {
    // The common case: everything fits one frame, encoded once.
    const whole = canonical({ messages, replies });
    if (whole.byteLength <= maxFrameBytes) return [whole];
  }
  // Split: a frame's size is the empty frame's plus its items' (counts are fixed-width), so items are measured one by one.
  type Item = { kind: 'messages'; item: PbftMessage } | { kind: 'replies'; item: Reply };
  const items: Item[] = [
    ...messages.map((item): Item => ({ kind: 'messages', item })),
    ...replies.map((item): Item => ({ kind: 'replies', item })),
  ];
  const frames: Uint8Array[] = [];
  let batch: { messages: PbftMessage[]; replies: Reply[] } = { messages: [], replies: [] };
  let size = EMPTY_FRAME_BYTES;
  let count = 0;
  const flush = (): void => {
    frames.push(canonical(batch));
    batch = { messages: [], replies: [] };
    size = EMPTY_FRAME_BYTES;
    count = 0;
  };
  for (const [i, entry] of items.entries()) {
    const bytes = canonical(entry.item).byteLength;
    if (EMPTY_FRAME_BYTES + bytes > maxFrameBytes) {
      const index = entry.kind === 'messages' ? i : i - messages.length;
      throw new RangeError(
        `pbft ${entry.item.type} (${entry.kind}[${index}]) encodes to ${bytes} bytes and cannot fit the ${maxFrameBytes}-byte frame limit`,
      );
    }
    if (size + bytes > maxFrameBytes || count === PBFT_MAX_FRAME_ITEMS) flush();
    if (entry.kind === 'messages') batch.messages.push(entry.item);
    else batch.replies.push(entry.item);
    size += bytes;
    count++;
  }
  flush();
  return frames;
}
