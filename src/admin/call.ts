/**
 * Handlers for admin services whose work is asynchronous and can fail in
 * ways the caller must tell apart: one wrapper sends every DwcpError as its
 * status (status.ts: the code's gRPC status, the operator's message as the
 * details, code and retryability as trailers), so each service states what
 * it does and not how errors travel. Anything else, and a DwcpError coded
 * `internal` (a failed invariant), is INTERNAL and logged: a bug to look at.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import { toStatus } from './status.ts';

/**
 * The status a failed call of `method` ends with: a DwcpError's own; a bug
 * (no code, or `internal`: an invariant failed) is INTERNAL, named by the
 * method and logged, since nobody on the client side can act on it.
 */
export function failureStatus(log: Logger, method: string, err: unknown): grpc.StatusObject | Partial<grpc.StatusObject> {
  if (err instanceof DwcpError && err.code !== 'internal') return toStatus(err);
  log.error({ method, err: err instanceof Error ? err.message : String(err) }, 'admin call failed');
  return { code: grpc.status.INTERNAL, details: `${method}: ${err instanceof Error ? err.message : String(err)}` };
}

/** Wraps an async handler: typed errors become their status, anything else INTERNAL, logged. */
export function asyncUnary<Req, Res>(log: Logger, method: string, fn: (request: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request).then(
      (res) => callback(null, res),
      (err: unknown) => callback(failureStatus(log, method, err)),
    );
  };
}

/** Wraps an async server-streaming handler: its failure ends the stream with the status a unary call would get. */
export function asyncStreaming<Req>(log: Logger, method: string, run: (call: grpc.ServerWritableStream<Req, unknown>) => Promise<void>): grpc.handleServerStreamingCall<Req, unknown> {
  return (call) => {
    run(call).catch((err: unknown) => call.emit('error', failureStatus(log, method, err)));
  };
}

/** Writes one message of a stream, waiting for the client to take it when the stream's buffer is full. */
export async function send(call: grpc.ServerWritableStream<unknown, unknown>, message: unknown): Promise<void> {
  if (call.write(message)) return;
  await new Promise<void>((resolve, reject) => {
    const onDrain = () => {
      call.off('error', onError);
      resolve();
    };
    const onError = (err: Error) => {
      call.off('drain', onDrain);
      reject(err);
    };
    call.once('drain', onDrain);
    call.once('error', onError);
  });
}

export function requireTimeout(raw: number, fallbackMs: number): number {
  if (raw === 0) return fallbackMs;
  if (!Number.isInteger(raw) || raw < 1 || raw > 3_600_000) {
    throw new DwcpError('invalid', `timeout_ms must be from 1 to 3600000, got ${raw}`);
  }
  return raw;
}

const FLEET_NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A request's invalid argument, as the coded error every admin service refuses with. */
export function invalidArgument(message: string): DwcpError {
  return new DwcpError('invalid', message);
}

/** A request field that names a VM, region or provider (a lowercase DNS label); `optional`: empty is allowed. */
export function nameField(field: string, value: string, optional = false): string {
  if (value === '' && optional) return value;
  if (!FLEET_NAME.test(value)) throw invalidArgument(`${field}: ${JSON.stringify(value)} is not a name (a lowercase DNS label)`);
  return value;
}
