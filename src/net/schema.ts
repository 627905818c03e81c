/**
 * Message schemas: how one message type becomes bytes and back, with every
 * field checked on the way in, so protocol code only ever sees typed, bounded
 * values. Wire format is protobuf (protobufjs, .proto files under ./proto,
 * loaded at module load); field names are camelCase on the JS side.
 *
 * Invariants: decode never returns an unvalidated value and throws only a
 * FrameError('schema') whose message names the message type and the field;
 * encode runs the same validation, so we never send what a peer must reject.
 * Decoded bytes fields are views of the input frame: copy what you keep. A
 * schema may opt into strictFields to refuse duplicated singular fields and
 * doubly-set oneofs, which protobuf itself tolerates (last one wins).
 *
 * Conversion choices (toObject): proto3 defaults are filled in (a missing
 * string is '', so "required" means non-empty), repeated fields are always
 * arrays, enums arrive as their names, bytes as Uint8Array (a Buffer in Node),
 * and 64-bit integers as decimal strings so no precision is lost; the
 * requireUint64 validator turns them into bigint (protobufjs encodes bigint).
 * A oneof appears as a virtual field of its own name holding the name of the
 * member that is set, so `oneof kind { Hello hello = 1; ... }` maps to the
 * TypeScript union `{ kind: 'hello'; hello: Hello } | ...`.
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { Uint8ArrayList } from 'uint8arraylist';
import { FrameError } from './framing.ts';
import { DwcpError } from '../errors.ts';

export interface MessageSchema<T> {
  /** Fully qualified message type, e.g. dwcp.net.v1.Hello. */
  readonly name: string;
  encode(msg: T): Uint8Array;
  decode(bytes: Uint8Array): T;
  /**
   * Optional: the very bytes encode() returns, as parts in order that may be
   * the message's own arrays (a large bytes field sent where it lies rather
   * than copied into the encoding). FramedStream writes these when present.
   */
  encodeParts?(msg: T): readonly Uint8Array[];
  /**
   * Optional: decode() of a frame given as the parts it arrived in (views of
   * the stream's chunks), which FramedStream calls instead of decode() when
   * present. For messages that carry bulk bytes: such a field can be handed
   * on as a list of those parts, where decode() of one array would first
   * have every frame spanning several chunks (all bulk frames) copied whole.
   * Same checks, same errors as decode().
   */
  decodeList?(frame: Uint8ArrayList): T;
}

/**
 * A reading schema over `strict` whose messages carry a bulk bytes field as
 * the parts it arrived in: `parse` reads the one layout the sender writes
 * straight from the frame's parts and answers undefined for anything else,
 * which `strict` then accepts or refuses as it would any message (its result
 * given the parts form by `toParts`); `fromParts` turns a message back for
 * encoding. decode() of one array takes the same way.
 */
export function partsSchema<T, In>(strict: MessageSchema<T>, parse: (frame: Uint8ArrayList) => In | undefined, toParts: (msg: T) => In, fromParts: (msg: In) => T): MessageSchema<In> {
  return {
    name: strict.name,
    decode: (bytes) => parse(new Uint8ArrayList(bytes)) ?? toParts(strict.decode(bytes)),
    decodeList: (frame) => parse(frame) ?? toParts(strict.decode(frame.subarray())),
    encode: (msg) => strict.encode(fromParts(msg)),
  };
}

/** Thrown by field validators; protoSchema turns it into a schema FrameError naming the message type. */
export class FieldError extends DwcpError<'invalid'> {
  readonly field: string;
  readonly problem: string;

  constructor(field: string, problem: string) {
    super('invalid', `${field}: ${problem}`);
    this.field = field;
    this.problem = problem;
  }
}

/** Parses a .proto file next to the calling module: `loadProto(new URL('./proto/x.proto', import.meta.url))`. */
export function loadProto(url: URL): protobuf.Root {
  return protobuf.loadSync(fileURLToPath(url));
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, defaults: true, arrays: true, oneofs: true };

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export interface ProtoSchemaOptions {
  /**
   * Also refuse what protobuf itself tolerates but no correct peer of ours
   * sends: a singular field that occurs twice (protobuf keeps the last), two
   * members of one oneof, a known field with the wrong wire type (protobuf
   * treats it as unknown). Unknown field numbers are still skipped, so a newer
   * peer may add fields. Costs one extra pass over the frame.
   */
  strictFields?: boolean;
}

function schemaName(type: protobuf.Type): string {
  return type.fullName.replace(/^\./, '');
}

function schemaErrorFor(type: protobuf.Type): (problem: string) => FrameError {
  return (problem) => new FrameError('schema', `${schemaName(type)}: ${problem}`);
}

function checked<T>(type: protobuf.Type, run: () => T): T {
  try {
    return run();
  } catch (err) {
    if (err instanceof FieldError) throw schemaErrorFor(type)(`field ${err.field} ${err.problem}`);
    throw err;
  }
}

/**
 * The head of a submessage sent as parts: its outer field's tag and length,
 * then `fields` (its fields up to and including the tag and length of a bytes
 * field whose `rest` bytes follow as separate arrays), as one array. What
 * protobufjs would write before those bytes, byte for byte.
 */
export function partsPrefix(outerTag: number, fields: Uint8Array, rest: number): Uint8Array {
  const head = protobuf.Writer.create().uint32(outerTag).uint32(fields.byteLength + rest).finish();
  const prefix = new Uint8Array(head.byteLength + fields.byteLength);
  prefix.set(head);
  prefix.set(fields, head.byteLength);
  return prefix;
}

/** The encoding of `msg` (in the JS shape fromObject takes), after checking it with the validator the receiver runs. */
export function encodeProto(type: protobuf.Type, msg: Record<string, unknown>, validate: (obj: Record<string, unknown>) => unknown): Uint8Array {
  let wire: protobuf.Message;
  try {
    wire = type.fromObject(msg);
  } catch (err) {
    throw schemaErrorFor(type)(errorText(err));
  }
  checked(type, () => validate(type.toObject(wire, TO_OBJECT)));
  return type.encode(wire).finish();
}

/** Decodes and validates one message: what protoSchema's decode does, for schemas whose validator needs more context than the bytes. */
export function decodeProto<T>(type: protobuf.Type, bytes: Uint8Array, validate: (obj: Record<string, unknown>) => T, opts: ProtoSchemaOptions = {}): T {
  let wire: protobuf.Message;
  try {
    wire = type.decode(bytes);
  } catch (err) {
    throw schemaErrorFor(type)(`not a valid protobuf encoding (${errorText(err)})`);
  }
  if (opts.strictFields === true) checked(type, () => checkFieldsOnce(type, bytes));
  return checked(type, () => validate(type.toObject(wire, TO_OBJECT)));
}

export function protoSchema<T extends object>(
  type: protobuf.Type,
  validate: (obj: Record<string, unknown>) => T,
  opts: ProtoSchemaOptions = {},
): MessageSchema<T> {
  return {
    name: schemaName(type),
    encode: (msg) => encodeProto(type, msg as Record<string, unknown>, validate),
    decode: (bytes) => decodeProto(type, bytes, validate, opts),
  };
}

const WIRE_LENGTH_DELIMITED = 2;

function expectedWireTypes(field: protobuf.Field): readonly number[] {
  if (field.map || field.resolvedType instanceof protobuf.Type) return [WIRE_LENGTH_DELIMITED];
  const basic = field.resolvedType instanceof protobuf.Enum ? 0 : protobuf.types.basic[field.type as keyof typeof protobuf.types.basic];
  // A repeated scalar may arrive packed or not, whatever the .proto says.
  return field.repeated && basic !== WIRE_LENGTH_DELIMITED ? [basic, WIRE_LENGTH_DELIMITED] : [basic];
}

/**
 * The strictFields pass: walks an encoding protobufjs has already accepted
 * (so lengths are in range) and throws a FieldError naming the first field
 * that breaks the rules, by its JS path (`messages[2].append.prevIndex`).
 */
function checkFieldsOnce(type: protobuf.Type, bytes: Uint8Array): void {
  const reader = protobuf.Reader.create(bytes);
  try {
    walkFields(type, reader, reader.len, '');
  } catch (err) {
    if (err instanceof FieldError) throw err;
    // Not expected after a successful decode; refused all the same rather than let a reader error escape.
    throw new FieldError('(frame)', `is not a valid protobuf encoding (${errorText(err)})`);
  }
}

function walkFields(type: protobuf.Type, reader: protobuf.Reader, end: number, path: string): void {
  const seen = new Map<number, number>();
  const oneofMember = new Map<string, string>();
  while (reader.pos < end) {
    const tag = reader.uint32();
    const id = tag >>> 3;
    const wireType = tag & 7;
    const field = type.fieldsById[id]?.resolve();
    if (field === undefined) {
      reader.skipType(wireType);
      continue;
    }
    const count = seen.get(id) ?? 0;
    seen.set(id, count + 1);
    const name = field.repeated ? `${path}${field.name}[${count}]` : `${path}${field.name}`;
    if (!expectedWireTypes(field).includes(wireType)) {
      throw new FieldError(name, `has wire type ${wireType}, expected ${expectedWireTypes(field).join(' or ')}`);
    }
    if (!field.repeated && count > 0) throw new FieldError(name, 'occurs more than once');
    const oneof = field.partOf;
    if (oneof !== null) {
      const other = oneofMember.get(oneof.name);
      if (other !== undefined) throw new FieldError(`${path}${oneof.name}`, `sets both ${other} and ${field.name}`);
      oneofMember.set(oneof.name, field.name);
    }
    if (field.resolvedType instanceof protobuf.Type && !field.map) {
      const length = reader.uint32();
      walkFields(field.resolvedType, reader, reader.pos + length, `${name}.`);
    } else {
      reader.skipType(wireType);
    }
  }
}

/** Payload bytes as they are, for bulk protocols whose content is checked elsewhere. */
export const BytesSchema: MessageSchema<Uint8Array> = {
  name: 'bytes',
  encode: (msg) => msg,
  decode: (bytes) => bytes,
};

// Field validators: each reads one field of a toObject() result and returns it typed, or throws a FieldError.

function describe(value: unknown): string {
  if (typeof value === 'string') return `"${value.length > 40 ? `${value.slice(0, 40)}…` : value}"`;
  if (value instanceof Uint8Array) return `${value.byteLength} bytes`;
  return typeof value === 'object' ? JSON.stringify(value) : String(value);
}

function expect(field: string, value: unknown, type: string): never {
  throw new FieldError(field, `must be ${type}, got ${describe(value)}`);
}

export interface StringBounds {
  /** Longest accepted value, in UTF-16 code units. */
  max: number;
  /** Accept ''; otherwise '' (which is also what an absent field decodes to) is "required". */
  optional?: boolean;
}

function checkString(field: string, value: unknown, { max, optional = false }: StringBounds): string {
  if (typeof value !== 'string') return expect(field, value, 'a string');
  if (value === '' && !optional) throw new FieldError(field, 'is required');
  if (value.length > max) throw new FieldError(field, `is ${value.length} characters long, above the ${max}-character limit`);
  return value;
}

export function requireString(obj: Record<string, unknown>, field: string, bounds: StringBounds): string {
  return checkString(field, obj[field], bounds);
}

export function requireStrings(obj: Record<string, unknown>, field: string, bounds: StringBounds & { maxItems: number }): string[] {
  const value = obj[field];
  if (!Array.isArray(value)) return expect(field, value, 'a list of strings');
  if (value.length > bounds.maxItems) throw new FieldError(field, `has ${value.length} entries, above the ${bounds.maxItems}-entry limit`);
  return value.map((item: unknown, i) => checkString(`${field}[${i}]`, item, bounds));
}

/** Also reads a oneof: its virtual field names the member that is set. */
export function requireEnum<const V extends readonly string[]>(obj: Record<string, unknown>, field: string, values: V): V[number] {
  const value = obj[field];
  const match = values.find((v) => v === value);
  if (match !== undefined) return match;
  if (value === undefined || value === '') throw new FieldError(field, `is required (one of ${values.join(', ')})`);
  throw new FieldError(field, `is ${describe(value)}, not one of ${values.join(', ')}`);
}

function checkMessage<T>(field: string, value: unknown, validate: (sub: Record<string, unknown>) => T): T {
  if (value === undefined || value === null) throw new FieldError(field, 'is required');
  if (typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) return expect(field, value, 'a message');
  try {
    return validate(value as Record<string, unknown>);
  } catch (err) {
    if (err instanceof FieldError) throw new FieldError(`${field}.${err.field}`, err.problem);
    throw err;
  }
}

/** A nested message, checked by `validate`; its errors name the path (`hello.federation`). */
export function requireMessage<T>(obj: Record<string, unknown>, field: string, validate: (sub: Record<string, unknown>) => T): T {
  return checkMessage(field, obj[field], validate);
}

/** A repeated nested message, each item checked by `validate`; errors name the item (`entries[3].index`). */
export function requireMessages<T>(
  obj: Record<string, unknown>,
  field: string,
  validate: (sub: Record<string, unknown>) => T,
  { maxItems }: { maxItems: number },
): T[] {
  const value = obj[field];
  if (!Array.isArray(value)) return expect(field, value, 'a list of messages');
  if (value.length > maxItems) throw new FieldError(field, `has ${value.length} entries, above the ${maxItems}-entry limit`);
  return value.map((item: unknown, i) => checkMessage(`${field}[${i}]`, item, validate));
}

export function requireUint(obj: Record<string, unknown>, field: string, { min = 0, max = 2 ** 32 - 1 } = {}): number {
  const value = obj[field];
  if (typeof value !== 'number' || !Number.isInteger(value)) return expect(field, value, 'an integer');
  if (value < min || value > max) throw new FieldError(field, `is ${value}, outside ${min}..${max}`);
  return value;
}

export function requireUint64(obj: Record<string, unknown>, field: string): bigint {
  const value = obj[field];
  if (typeof value !== 'string' || !/^\d+$/.test(value)) return expect(field, value, 'an unsigned 64-bit integer');
  return BigInt(value);
}

export function requireBool(obj: Record<string, unknown>, field: string): boolean {
  const value = obj[field];
  return typeof value === 'boolean' ? value : expect(field, value, 'a boolean');
}

export function requireBytes(obj: Record<string, unknown>, field: string, { max, optional = false }: { max: number; optional?: boolean }): Uint8Array {
  const value = obj[field];
  if (!(value instanceof Uint8Array)) return expect(field, value, 'bytes');
  if (value.byteLength === 0 && !optional) throw new FieldError(field, 'is required');
  if (value.byteLength > max) throw new FieldError(field, `is ${value.byteLength} bytes long, above the ${max}-byte limit`);
  return value;
}
