/**
 * Handlers for admin services whose work is asynchronous and can fail in
 * ways the caller must tell apart: one wrapper maps typed failures to the
 * gRPC status an operator's retry logic can key on, so each service states
 * what it does and not how errors travel.
 *
 * UNAVAILABLE: a retry may fix it (no leader, no quorum, timed out; the
 * details say which and end in "(retryable)"). FAILED_PRECONDITION: the
 * request cannot succeed here as things stand (the details say why).
 * INVALID_ARGUMENT: the request is malformed (the details name the field).
 * Anything else is INTERNAL and logged.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.ts';
import { RaftClientError } from '../consensus/raft/node.ts';

/** A failure with the gRPC status it should travel as. */
export class AdminCallError extends Error {
  readonly code: grpc.status;
  constructor(code: grpc.status, message: string) {
    super(message);
    this.name = 'AdminCallError';
    this.code = code;
  }
}

/**
 * RaftClientError → status: "not the leader" is FAILED_PRECONDITION (the
 * details name the leader to ask); other retryable codes and a stopping node
 * are UNAVAILABLE; the rest FAILED_PRECONDITION.
 */
export function raftErrorStatus(err: RaftClientError): grpc.status {
  if (err.code === 'not_leader') return grpc.status.FAILED_PRECONDITION;
  return err.retryable || err.code === 'stopped' ? grpc.status.UNAVAILABLE : grpc.status.FAILED_PRECONDITION;
}

/** Wraps an async handler: typed errors become their status, anything else INTERNAL, logged. */
export function asyncUnary<Req, Res>(log: Logger, method: string, fn: (request: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    fn(call.request).then(
      (res) => callback(null, res),
      (err: unknown) => {
        if (err instanceof AdminCallError) {
          callback({ code: err.code, details: err.message });
        } else if (err instanceof RaftClientError) {
          const retry = err.retryable ? ' (retryable)' : '';
          callback({ code: raftErrorStatus(err), details: `${err.message}${retry}` });
        } else {
          log.error({ method, err: err instanceof Error ? err.message : String(err) }, 'admin call failed');
          callback({ code: grpc.status.INTERNAL, details: `${method}: ${err instanceof Error ? err.message : String(err)}` });
        }
      },
    );
  };
}

export function requireTimeout(raw: number, fallbackMs: number): number {
  if (raw === 0) return fallbackMs;
  if (!Number.isInteger(raw) || raw < 1 || raw > 3_600_000) {
    throw new AdminCallError(grpc.status.INVALID_ARGUMENT, `timeout_ms must be from 1 to 3600000, got ${raw}`);
  }
  return raw;
}

