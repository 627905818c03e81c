/**
 * Message schemas: how one message type becomes bytes and back, with every
 * field checked on the way in, so protocol code only ever sees typed, bounded
 * values. Wire format is protobuf (protobufjs, .proto files under ./proto,
 * loaded at module load); field names are camelCase on the JS side.
 *
 * Invariants: decode never returns an unvalidated value and throws only a
 * FrameError('schema') whose message names the message type and the field;
 * encode runs the same validation, so we never send what a peer must reject.
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
import { FrameError } from './framing.ts';

export interface MessageSchema<T> {
  /** Fully qualified message type, e.g. dwcp.net.v1.Hello. */
  readonly name: string;
  encode(msg: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

/** Thrown by field validators; protoSchema turns it into a schema FrameError naming the message type. */
export class FieldError extends Error {
  readonly field: string;
  readonly problem: string;

  constructor(field: string, problem: string) {
    super(`${field}: ${problem}`);
    this.name = 'FieldError';
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

export function protoSchema<T extends object>(type: protobuf.Type, validate: (obj: Record<string, unknown>) => T): MessageSchema<T> {
  const name = type.fullName.replace(/^\./, '');
  const schemaError = (problem: string): FrameError => new FrameError('schema', `${name}: ${problem}`);
  const check = (obj: Record<string, unknown>): T => {
    try {
      return validate(obj);
    } catch (err) {
      if (err instanceof FieldError) throw schemaError(`field ${err.field} ${err.problem}`);
      throw err;
    }
  };
  return {
    name,
    encode(msg) {
      let wire: protobuf.Message;
      try {
        wire = type.fromObject(msg as Record<string, unknown>);
      } catch (err) {
        throw schemaError(errorText(err));
      }
      check(type.toObject(wire, TO_OBJECT));
      return type.encode(wire).finish();
    },
    decode(bytes) {
      let wire: protobuf.Message;
      try {
        wire = type.decode(bytes);
      } catch (err) {
        throw schemaError(`not a valid protobuf encoding (${errorText(err)})`);
      }
      return check(type.toObject(wire, TO_OBJECT));
    },
  };
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

/** A nested message, checked by `validate`; its errors name the path (`hello.federation`). */
export function requireMessage<T>(obj: Record<string, unknown>, field: string, validate: (sub: Record<string, unknown>) => T): T {
  const value = obj[field];
  if (value === undefined || value === null) throw new FieldError(field, 'is required');
  if (typeof value !== 'object' || Array.isArray(value) || value instanceof Uint8Array) return expect(field, value, 'a message');
  try {
    return validate(value as Record<string, unknown>);
  } catch (err) {
    if (err instanceof FieldError) throw new FieldError(`${field}.${err.field}`, err.problem);
    throw err;
  }
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
