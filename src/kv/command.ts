/**
 * The wire vocabulary of the replicated key-value store (proto/kv.proto): the
 * commands carried in log entries, the results of applying them, and the
 * follower-to-leader forward exchange on KV_FORWARD_PROTOCOL.
 *
 * Invariants: a command or result that decodes is well-formed and bounded
 * (keys are non-empty, well-formed Unicode of at most KV_MAX_KEY_BYTES UTF-8
 * bytes; values at most KV_MAX_VALUE_BYTES; counters and revisions are safe
 * integers), and encoding runs the same checks, so the leader never proposes a
 * command a replica must refuse. Protobuf strings are decoded strictly
 * (protobufjs rejects invalid UTF-8 in proto3), so one string has one
 * encoding and every replica reads the same key from the same bytes.
 *
 * The TypeScript shapes are flat unions (`{ op: 'put', key, value }`,
 * `{ ok: false, reason: 'cas_mismatch', currentRevision }`) rather than the
 * protobuf oneof nesting; reshapedSchema converts on the way out and each
 * validator on the way in.
 */
import { Buffer } from 'node:buffer';
import type { Type } from 'protobufjs';
import { FLEET_MAX_COMMAND_BYTES, decodeFleetCommand, type FleetResult } from '../fleet/commands.ts';
import { decodeFleetResult, encodeFleetResult, FLEET_MAX_RESULT_BYTES } from '../fleet/result.ts';
import type { MessageSchema } from '../net/schema.ts';
import { FieldError, loadProto, protoSchema, requireBool, requireBytes, requireEnum, requireMessage, requireMessages, requireString, requireUint, requireUint64 } from '../net/schema.ts';
import { KvDecodeError, kvCodec, type KvCodec } from './decode-error.ts';
import { WRITE_WIRE_BOUNDS, decodeWriteCommand, encodeWriteCommand } from './write-command-wire.ts';
import { FORWARD_WIRE_BOUNDS, decodeForwardRequests, decodeForwardResponses, encodeForwardRequests, encodeForwardResponses } from './forward-wire.ts';

export const KV_FORWARD_PROTOCOL = '/dwcp/kv/2.0.0';

export const KV_MAX_KEY_BYTES = 1024;
export const KV_MAX_VALUE_BYTES = 1024 * 1024;
/** In UTF-16 code units, like every other string bound of the schema layer. */
export const KV_MAX_CLIENT_ID = 128;
export const KV_RANGE_MAX_LIMIT = 10_000;
/**
 * A range stops before the entry that would take its footprint (see
 * kvEntryFootprint) past this budget, but always returns at least one entry so
 * that paging makes progress: a range result is at most
 * max(budget, one largest entry) ≈ 1 MiB + 1 KiB.
 */
export const KV_RANGE_MAX_BYTES = 1024 * 1024;
/** Upper bound of the protobuf bytes around one KvEntry besides its key and value (tags, lengths, two revisions). */
export const KV_ENTRY_OVERHEAD_BYTES = 32;
export const KV_MAX_MESSAGE = 1024;
export const KV_MAX_LEADER_HINT = 256;
export const KV_FORWARD_MAX_TIMEOUT_MS = 60_000;
/**
 * Largest encoded KvCommand: a cas with a 1 MiB value, a 1024-byte key, a
 * 128-unit client ID of 3-byte characters and 8-byte varints is 1 MiB + 1440
 * bytes. A Raft driver must allow proposals this large (RaftConfig
 * maxProposalBytes defaults to exactly 1 MiB).
 */
export const KV_MAX_COMMAND_BYTES = KV_MAX_VALUE_BYTES + 2048;
/**
 * Fits the largest frame either way: a request is a command plus a few bytes;
 * a response is at most a range or get result of one largest entry, or an
 * error of 1024 + 256 characters (at most 3 UTF-8 bytes each).
 */
export const KV_FORWARD_MAX_FRAME_BYTES = KV_MAX_VALUE_BYTES + 4096;
/** Requests or responses one forward frame may carry (a sender splits larger batches, by count and by bytes). */
export const KV_FORWARD_MAX_BATCH = 1024;

export interface KvEntryMeta {
  /** Log index of the key's last modification. */
  readonly revision: number;
  /** Log index of the write that created the key (since it last did not exist). */
  readonly createRevision: number;
}

export interface KvEntry extends KvEntryMeta {
  readonly key: string;
  readonly value: Uint8Array;
}

export type KvOp =
  | { readonly op: 'put'; readonly key: string; readonly value: Uint8Array }
  | { readonly op: 'delete'; readonly key: string }
  /** expectedRevision 0: the key must not exist. */
  | { readonly op: 'cas'; readonly key: string; readonly expectedRevision: number; readonly value: Uint8Array }
  | { readonly op: 'get'; readonly key: string }
  /** `after` is exclusive; '' starts at the first key with the prefix. */
  | { readonly op: 'range'; readonly prefix: string; readonly limit: number; readonly after: string }
  /** An encoded fleet command (src/fleet/commands.ts), applied by the fleet state machine; a write. */
  | { readonly op: 'fleet'; readonly command: Uint8Array };

export type KvCommand = { readonly clientId: string; readonly seq: number } & KvOp;

export const KV_READ_OPS = ['get', 'range'] as const;
export const KV_WRITE_OPS = ['put', 'delete', 'cas', 'fleet'] as const;
const KV_OPS = [...KV_WRITE_OPS, ...KV_READ_OPS] as const;

/** `revision` is the log index the command was applied at; for put and cas also the key's new revision. */
export type KvWriteSuccess =
  | { readonly ok: true; readonly op: 'put' | 'cas'; readonly revision: number; readonly prev: KvEntryMeta | null }
  /** Deleting a missing key succeeds with deleted: false and prev: null. */
  | { readonly ok: true; readonly op: 'delete'; readonly revision: number; readonly deleted: boolean; readonly prev: KvEntryMeta | null }
  /** The fleet state machine's answer, which may itself be a refusal: the write applied, the command was judged. */
  | { readonly ok: true; readonly op: 'fleet'; readonly revision: number; readonly result: FleetResult };

export type KvWriteFailure =
  /** currentRevision 0: the key does not exist. */
  | { readonly ok: false; readonly reason: 'cas_mismatch'; readonly currentRevision: number }
  | { readonly ok: false; readonly reason: 'quota_exceeded'; readonly stateBytes: number; readonly limitBytes: number };

/** What a client session remembers of its last write, to answer a retry with it. */
export type KvWriteResult = KvWriteSuccess | KvWriteFailure;

export type KvResult =
  | KvWriteResult
  | { readonly ok: true; readonly op: 'get'; readonly revision: number; readonly entry: KvEntry | null }
  | { readonly ok: true; readonly op: 'range'; readonly revision: number; readonly entries: readonly KvEntry[]; readonly more: boolean }
  /** The leader's no-op: an empty log entry. */
  | { readonly ok: true; readonly op: 'noop'; readonly revision: number }
  /** The client's session has already applied a later seq. */
  | { readonly ok: false; readonly reason: 'stale_request'; readonly lastSeq: number }
  /** The entry is not a valid command (never proposed by a correct leader); nothing changed. */
  | { readonly ok: false; readonly reason: 'invalid_command'; readonly message: string };

export type KvFailureReason = Extract<KvResult, { ok: false }>['reason'];

/** Whether a client session keeps this outcome (the outcome of a write that did not bounce off the session itself). */
export function isKvWriteResult(result: KvResult): result is KvWriteResult {
  return result.ok ? result.op === 'put' || result.op === 'cas' || result.op === 'delete' || result.op === 'fleet' : result.reason === 'cas_mismatch' || result.reason === 'quota_exceeded';
}

export const KV_FORWARD_ERROR_CODES = ['not_leader', 'no_quorum', 'timeout', 'dropped', 'invalid'] as const;
export type KvForwardErrorCode = (typeof KV_FORWARD_ERROR_CODES)[number];

export interface KvForwardRequest {
  /** An encoded KvCommand (checked to decode), proposed by the leader byte for byte. */
  readonly command: Uint8Array;
  readonly timeoutMs: number;
  /** Pairs the response with this request on a stream shared by many. */
  readonly id: number;
}

export interface KvForwardError {
  readonly code: KvForwardErrorCode;
  readonly message: string;
  /** Who the responder believes leads; '' when unknown. */
  readonly leaderHint: string;
}

export type KvForwardResponse = { readonly id: number } & (
  | { readonly kind: 'result'; readonly result: KvResult }
  | { readonly kind: 'error'; readonly error: KvForwardError }
);

/** Protobuf bytes around one forwarded request or response besides its variable parts (tags, lengths, id, timeout, revisions). */
const KV_FORWARD_ITEM_OVERHEAD_BYTES = 64;

/** An upper bound of a forward request's encoded size, for batching under the frame limit. */
export function forwardRequestBytes(request: KvForwardRequest): number {
  return request.command.byteLength + KV_FORWARD_ITEM_OVERHEAD_BYTES;
}

/** An upper bound of a forward response's encoded size (strings at 3 bytes per UTF-16 unit). */
export function forwardResponseBytes(response: KvForwardResponse): number {
  if (response.kind === 'error') return 3 * (response.error.message.length + response.error.leaderHint.length) + KV_FORWARD_ITEM_OVERHEAD_BYTES;
  const { result } = response;
  if (!result.ok) return result.reason === 'invalid_command' ? 3 * result.message.length + KV_FORWARD_ITEM_OVERHEAD_BYTES : KV_FORWARD_ITEM_OVERHEAD_BYTES;
  switch (result.op) {
    case 'fleet':
      return FLEET_MAX_RESULT_BYTES + KV_FORWARD_ITEM_OVERHEAD_BYTES;
    case 'get':
    case 'range':
      // Reads are not forwarded; should one be, it travels alone.
      return KV_FORWARD_MAX_FRAME_BYTES;
    default:
      return 2 * KV_FORWARD_ITEM_OVERHEAD_BYTES;
  }
}

/** Bytes a key/value pair counts against the state quota and a range's budget: at least what it takes in a snapshot. */
export function kvEntryFootprint(keyBytes: number, valueBytes: number): number {
  return keyBytes + valueBytes + KV_ENTRY_OVERHEAD_BYTES;
}

/**
 * Orders strings as their UTF-8 bytes would (= code point order), like etcd
 * and every byte-keyed store; JavaScript's `<` compares UTF-16 units and would
 * put U+E000..U+FFFF after astral characters. Surrogates rank above every
 * other unit, so the first differing unit decides, as in UTF-8.
 */
export function compareKeys(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return unitRank(x) - unitRank(y);
  }
  return a.length - b.length;
}

function unitRank(unit: number): number {
  if (unit < 0xd800) return unit;
  return unit >= 0xe000 ? unit - 0x800 : unit + 0x2000;
}

// Field validators beyond src/net/schema.ts.

/** A log index, revision or sequence number: a uint64 that fits a JavaScript number exactly. */
export function requireCount(obj: Record<string, unknown>, field: string, min = 0): number {
  const value = requireUint64(obj, field);
  if (value < BigInt(min) || value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new FieldError(field, `is ${value}, outside ${min}..${Number.MAX_SAFE_INTEGER}`);
  }
  return Number(value);
}

function requireWellFormed(obj: Record<string, unknown>, field: string, max: number, optional = false): string {
  const value = requireString(obj, field, { max, optional });
  if (!value.isWellFormed()) throw new FieldError(field, 'is not well-formed Unicode (it holds a lone surrogate)');
  return value;
}

/** Keys are bounded in UTF-8 bytes, as stored and as sent; prefixes share the bound. */
function requireKey(obj: Record<string, unknown>, field: string, optional = false): string {
  const key = requireWellFormed(obj, field, Number.MAX_SAFE_INTEGER, optional);
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > KV_MAX_KEY_BYTES) throw new FieldError(field, `is ${bytes} bytes of UTF-8, above the ${KV_MAX_KEY_BYTES}-byte limit`);
  return key;
}

function requireValue(obj: Record<string, unknown>, field: string): Uint8Array {
  return requireBytes(obj, field, { max: KV_MAX_VALUE_BYTES, optional: true });
}

/**
 * A schema whose TypeScript shape differs from its protobuf shape: `toWire`
 * rebuilds the protobuf object before the usual encode-and-validate, and
 * `validate` maps a decoded protobuf object to the TypeScript shape.
 */
export function reshapedSchema<T extends object>(type: Type, toWire: (msg: T) => object, validate: (obj: Record<string, unknown>) => T): MessageSchema<T> {
  const typed = protoSchema(type, validate);
  const wire = protoSchema<object>(type, validate);
  return { name: typed.name, encode: (msg) => wire.encode(toWire(msg)), decode: typed.decode };
}

export const kvProto = loadProto(new URL('./proto/kv.proto', import.meta.url));

// Commands.

function validatePut(o: Record<string, unknown>): KvOp {
  return { op: 'put', key: requireKey(o, 'key'), value: requireValue(o, 'value') };
}

function validateDelete(o: Record<string, unknown>): KvOp {
  return { op: 'delete', key: requireKey(o, 'key') };
}

function validateCas(o: Record<string, unknown>): KvOp {
  return { op: 'cas', key: requireKey(o, 'key'), expectedRevision: requireCount(o, 'expectedRevision'), value: requireValue(o, 'value') };
}

function validateGet(o: Record<string, unknown>): KvOp {
  return { op: 'get', key: requireKey(o, 'key') };
}

function validateRange(o: Record<string, unknown>): KvOp {
  return {
    op: 'range',
    prefix: requireKey(o, 'prefix', true),
    limit: requireUint(o, 'limit', { min: 1, max: KV_RANGE_MAX_LIMIT }),
    after: requireKey(o, 'after', true),
  };
}

/** The command must decode as a fleet command here, so no replica ever logs bytes the fleet machine cannot read. */
function validateFleet(o: Record<string, unknown>): KvOp {
  const command = requireBytes(o, 'command', { max: FLEET_MAX_COMMAND_BYTES });
  try {
    decodeFleetCommand(command);
  } catch (err) {
    throw new FieldError('command', `is not a valid fleet command (${err instanceof Error ? err.message : String(err)})`);
  }
  return { op: 'fleet', command };
}

const OP_VALIDATORS: Record<KvOp['op'], (o: Record<string, unknown>) => KvOp> = {
  fleet: validateFleet,
  put: validatePut,
  delete: validateDelete,
  cas: validateCas,
  get: validateGet,
  range: validateRange,
};

export function requireClientId(obj: Record<string, unknown>, field: string): string {
  return requireWellFormed(obj, field, KV_MAX_CLIENT_ID);
}

function validateKvCommand(o: Record<string, unknown>): KvCommand {
  const clientId = requireClientId(o, 'clientId');
  const seq = requireCount(o, 'seq', 1);
  const op = requireEnum(o, 'op', KV_OPS);
  return { clientId, seq, ...requireMessage(o, op, OP_VALIDATORS[op]) };
}

function commandToWire({ clientId, seq, ...op }: KvCommand): object {
  const { op: name, ...fields } = op;
  return { clientId, seq, [name]: fields };
}

/** A log entry's (or PBFT request's) command; not a frame of its own, so it throws KvDecodeError. */
export const KvCommandSchema: KvCodec<KvCommand> = kvCodec(reshapedSchema(kvProto.lookupType('dwcp.kv.v1.KvCommand'), commandToWire, validateKvCommand));

if (WRITE_WIRE_BOUNDS.keyBytes !== KV_MAX_KEY_BYTES || WRITE_WIRE_BOUNDS.valueBytes !== KV_MAX_VALUE_BYTES || WRITE_WIRE_BOUNDS.clientIdUnits !== KV_MAX_CLIENT_ID) {
  throw new Error('write-command-wire.ts bounds differ from command.ts');
}

/**
 * Throws KvDecodeError naming the field when `cmd` is out of bounds. Puts,
 * deletes and cas take the direct codec (write-command-wire.ts: the same
 * bytes), everything else and every refusal the schema.
 */
export function encodeKvCommand(cmd: KvCommand): Uint8Array {
  return encodeWriteCommand(cmd) ?? KvCommandSchema.encode(cmd);
}

/** Throws KvDecodeError naming the field; values are views of `bytes`, not copies. */
export function decodeKvCommand(bytes: Uint8Array): KvCommand {
  return decodeWriteCommand(bytes) ?? KvCommandSchema.decode(bytes);
}

// Results.

/** The oneof member of KvResult that carries each outcome (protobufjs camel-cases field names). */
const OUTCOME_FIELDS = {
  put: 'put',
  delete: 'delete',
  cas: 'cas',
  get: 'get',
  range: 'range',
  noop: 'noop',
  cas_mismatch: 'casMismatch',
  stale_request: 'staleRequest',
  quota_exceeded: 'quotaExceeded',
  invalid_command: 'invalidCommand',
  fleet: 'fleet',
} as const satisfies Record<Extract<KvResult, { ok: true }>['op'] | KvFailureReason, string>;

const OUTCOMES = Object.values(OUTCOME_FIELDS);

function validateEntryMeta(o: Record<string, unknown>): KvEntryMeta {
  const revision = requireCount(o, 'revision', 1);
  const createRevision = requireCount(o, 'createRevision', 1);
  if (createRevision > revision) throw new FieldError('createRevision', `is ${createRevision}, after the revision ${revision}`);
  return { revision, createRevision };
}

export function validateKvEntry(o: Record<string, unknown>): KvEntry {
  return { key: requireKey(o, 'key'), value: requireValue(o, 'value'), ...validateEntryMeta(o) };
}

function optionalMessage<T>(o: Record<string, unknown>, field: string, validate: (sub: Record<string, unknown>) => T): T | null {
  return o[field] === null || o[field] === undefined ? null : requireMessage(o, field, validate);
}

function validateWriteResult(o: Record<string, unknown>): { revision: number; prev: KvEntryMeta | null } {
  return { revision: requireCount(o, 'revision', 1), prev: optionalMessage(o, 'prev', validateEntryMeta) };
}

function validateDeleteResult(o: Record<string, unknown>): { revision: number; deleted: boolean; prev: KvEntryMeta | null } {
  const result = { ...validateWriteResult(o), deleted: requireBool(o, 'deleted') };
  if (result.deleted !== (result.prev !== null)) throw new FieldError('prev', `must be set exactly when deleted is true (deleted is ${result.deleted})`);
  return result;
}

function validateRangeResult(o: Record<string, unknown>): { revision: number; entries: KvEntry[]; more: boolean } {
  return {
    revision: requireCount(o, 'revision', 1),
    entries: requireMessages(o, 'entries', validateKvEntry, { maxItems: KV_RANGE_MAX_LIMIT }),
    more: requireBool(o, 'more'),
  };
}

export function validateKvResult(o: Record<string, unknown>): KvResult {
  const field = requireEnum(o, 'outcome', OUTCOMES);
  switch (field) {
    case 'put':
    case 'cas':
      return { ok: true, op: field, ...requireMessage(o, field, validateWriteResult) };
    case 'delete':
      return { ok: true, op: 'delete', ...requireMessage(o, field, validateDeleteResult) };
    case 'get':
      return { ok: true, op: 'get', ...requireMessage(o, field, (m) => ({ revision: requireCount(m, 'revision', 1), entry: optionalMessage(m, 'entry', validateKvEntry) })) };
    case 'range':
      return { ok: true, op: 'range', ...requireMessage(o, field, validateRangeResult) };
    case 'noop':
      return { ok: true, op: 'noop', revision: requireMessage(o, field, (m) => requireCount(m, 'revision', 1)) };
    case 'casMismatch':
      return { ok: false, reason: 'cas_mismatch', currentRevision: requireMessage(o, field, (m) => requireCount(m, 'currentRevision')) };
    case 'staleRequest':
      return { ok: false, reason: 'stale_request', lastSeq: requireMessage(o, field, (m) => requireCount(m, 'lastSeq', 1)) };
    case 'quotaExceeded':
      return {
        ok: false,
        reason: 'quota_exceeded',
        ...requireMessage(o, field, (m) => ({ stateBytes: requireCount(m, 'stateBytes'), limitBytes: requireCount(m, 'limitBytes') })),
      };
    case 'invalidCommand':
      return { ok: false, reason: 'invalid_command', message: requireMessage(o, field, (m) => requireWellFormed(m, 'message', KV_MAX_MESSAGE)) };
    case 'fleet':
      return { ok: true, op: 'fleet', ...requireMessage(o, field, validateFleetOutcome) };
  }
}

function validateFleetOutcome(o: Record<string, unknown>): { revision: number; result: FleetResult } {
  const bytes = requireBytes(o, 'result', { max: FLEET_MAX_RESULT_BYTES });
  try {
    return { revision: requireCount(o, 'revision', 1), result: decodeFleetResult(bytes) };
  } catch (err) {
    if (err instanceof FieldError) throw err;
    throw new FieldError('result', err instanceof Error ? err.message : String(err));
  }
}

export function kvResultToWire(result: KvResult): object {
  if (result.ok && result.op === 'fleet') return { fleet: { revision: result.revision, result: encodeFleetResult(result.result) } };
  if (result.ok) {
    const { ok: _ok, op, ...fields } = result;
    return { [OUTCOME_FIELDS[op]]: fields };
  }
  const { ok: _ok, reason, ...fields } = result;
  return { [OUTCOME_FIELDS[reason]]: fields };
}

/** A state machine's result as a PBFT reply carries it; throws KvDecodeError. */
export const KvResultSchema: KvCodec<KvResult> = kvCodec(reshapedSchema(kvProto.lookupType('dwcp.kv.v1.KvResult'), kvResultToWire, validateKvResult));

// The forward exchange.

function validateForwardRequest(o: Record<string, unknown>): KvForwardRequest {
  const command = requireBytes(o, 'command', { max: KV_MAX_COMMAND_BYTES });
  try {
    decodeKvCommand(command);
  } catch (err) {
    if (err instanceof KvDecodeError) throw new FieldError('command', `is not a valid command (${err.message})`);
    throw err;
  }
  return { command, timeoutMs: requireUint(o, 'timeoutMs', { min: 1, max: KV_FORWARD_MAX_TIMEOUT_MS }), id: requireUint(o, 'id') };
}

function validateForwardError(o: Record<string, unknown>): KvForwardError {
  return {
    code: requireEnum(o, 'code', KV_FORWARD_ERROR_CODES),
    message: requireWellFormed(o, 'message', KV_MAX_MESSAGE, true),
    leaderHint: requireWellFormed(o, 'leaderHint', KV_MAX_LEADER_HINT, true),
  };
}

function validateForwardResponse(o: Record<string, unknown>): KvForwardResponse {
  const id = requireUint(o, 'id');
  return requireEnum(o, 'kind', ['result', 'error']) === 'result'
    ? { id, kind: 'result', result: requireMessage(o, 'result', validateKvResult) }
    : { id, kind: 'error', error: requireMessage(o, 'error', validateForwardError) };
}

function forwardResponseToWire(response: KvForwardResponse): object {
  return response.kind === 'result' ? { id: response.id, result: kvResultToWire(response.result) } : { id: response.id, error: response.error };
}

function atLeastOne<T>(field: string, items: T[]): T[] {
  if (items.length === 0) throw new FieldError(field, 'is empty; a frame carries at least one');
  return items;
}

/** The schema path of a follower's frame (the definition; forward-wire.ts shortcuts it). */
export const KvForwardRequestsProtoSchema: MessageSchema<KvForwardRequest[]> = reshapedSchema(
  kvProto.lookupType('dwcp.kv.v1.KvForwardRequests'),
  (requests: KvForwardRequest[]) => ({ requests }),
  (o) => atLeastOne('requests', requireMessages(o, 'requests', validateForwardRequest, { maxItems: KV_FORWARD_MAX_BATCH })),
);

/** The schema path of the leader's frame (the definition; forward-wire.ts shortcuts it). */
export const KvForwardResponsesProtoSchema: MessageSchema<KvForwardResponse[]> = reshapedSchema(
  kvProto.lookupType('dwcp.kv.v1.KvForwardResponses'),
  (responses: KvForwardResponse[]) => ({ responses: responses.map(forwardResponseToWire) }),
  (o) => atLeastOne('responses', requireMessages(o, 'responses', validateForwardResponse, { maxItems: KV_FORWARD_MAX_BATCH })),
);

if (FORWARD_WIRE_BOUNDS.commandBytes !== KV_MAX_COMMAND_BYTES || FORWARD_WIRE_BOUNDS.timeoutMs !== KV_FORWARD_MAX_TIMEOUT_MS || FORWARD_WIRE_BOUNDS.batch !== KV_FORWARD_MAX_BATCH) {
  throw new Error('forward-wire.ts bounds differ from command.ts');
}

/** The check validateForwardRequest makes of a forwarded command, as a yes or no (the schema path then words the refusal). */
function commandDecodes(command: Uint8Array): boolean {
  try {
    decodeKvCommand(command);
    return true;
  } catch (err) {
    if (err instanceof KvDecodeError) return false;
    throw err;
  }
}

/** A follower's frame: the requests it had for the leader at one moment. */
export const KvForwardRequestsSchema: MessageSchema<KvForwardRequest[]> = {
  name: KvForwardRequestsProtoSchema.name,
  encode: (requests) => encodeForwardRequests(requests, commandDecodes) ?? KvForwardRequestsProtoSchema.encode(requests),
  decode: (bytes) => decodeForwardRequests(bytes, commandDecodes) ?? KvForwardRequestsProtoSchema.decode(bytes),
};

/** The leader's frame: the responses it had for one follower at one moment. */
export const KvForwardResponsesSchema: MessageSchema<KvForwardResponse[]> = {
  name: KvForwardResponsesProtoSchema.name,
  encode: (responses) => encodeForwardResponses(responses) ?? KvForwardResponsesProtoSchema.encode(responses),
  decode: (bytes) => decodeForwardResponses(bytes) ?? KvForwardResponsesProtoSchema.decode(bytes),
};
