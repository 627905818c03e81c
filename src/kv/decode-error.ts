/**
 * KvDecodeError: bytes that are not a valid KV command, result or snapshot
 * body, or a value that could not be encoded as one; the message names the
 * message type and the field ("dwcp.kv.v1.KvCommand: field key is ...").
 *
 * The pure KV modules (command, snapshot, state machine) are not network
 * code, so they do not speak the network's FrameError. They share the
 * protobuf schema layer of the wire protocols (src/net/schema.ts), which
 * reports a bad message as FrameError('schema') because frames are its main
 * use: kvCodec is the one place that translates. The forward protocol's
 * schemas stay MessageSchemas (FramedStream needs a FrameError to count and
 * reset a stream), and wrap a KvDecodeError of the command they carry into
 * their own field error.
 */
import { FrameError } from '../net/framing.ts';
import type { MessageSchema } from '../net/schema.ts';
import { DwcpError } from '../errors.ts';

/** A DwcpError 'invalid': the message names the bad field, as a request's error must. */
export class KvDecodeError extends DwcpError<'invalid'> {
  constructor(message: string) {
    super('invalid', message);
  }
}

/** Encoding and decoding of one KV message type, throwing KvDecodeError. */
export interface KvCodec<T> {
  /** Fully qualified message type, e.g. dwcp.kv.v1.KvCommand. */
  readonly name: string;
  encode(msg: T): Uint8Array;
  decode(bytes: Uint8Array): T;
}

function translated<T>(run: () => T): T {
  try {
    return run();
  } catch (err) {
    // A schema FrameError raised outside a stream carries no protocol: its detail is the whole message.
    if (err instanceof FrameError) throw new KvDecodeError(err.detail);
    throw err;
  }
}

export function kvCodec<T>(schema: MessageSchema<T>): KvCodec<T> {
  return {
    name: schema.name,
    encode: (msg) => translated(() => schema.encode(msg)),
    decode: (bytes) => translated(() => schema.decode(bytes)),
  };
}
