/**
 * DwcpError ⇄ gRPC status, both directions in one place: the admin services
 * send every failure through `toStatus`, and the admin client reads it back
 * with `fromStatus` into the same DwcpError code, retryability and details.
 *
 * The carrier is trailing metadata, not google.rpc.Status details:
 *   dwcp-error-code       the DwcpErrorCode
 *   dwcp-retryable        "true" | "false"
 *   dwcp-error-details-bin  JSON of DwcpErrorDetails (UTF-8), when there are any
 * Why: grpc-js sends a handler's `metadata` as trailers and hands them back on
 * the client's ServiceError with no extra code, and grpcurl prints them as
 * they are; status details would need google/rpc/status.proto plus an Any
 * type registry on both sides (and in every other client) to say one flag and
 * one word. The status details text stays the operator's message alone:
 * nothing parses it.
 *
 * Invariants: every DwcpErrorCode has exactly one status (STATUS is a total
 * Record, checked by the compiler); a trailer that is absent or unknown
 * (a daemon of an older build, a foreign server) reads as "not retryable"
 * and a code derived from the status, never as a guess from text.
 */
import * as grpc from '@grpc/grpc-js';
import { DwcpError, isDwcpErrorCode, type DwcpErrorCode, type DwcpErrorDetails } from '../errors.ts';

const STATUS: Record<DwcpErrorCode, grpc.status> = {
  invalid: grpc.status.INVALID_ARGUMENT,
  too_large: grpc.status.INVALID_ARGUMENT,
  not_found: grpc.status.NOT_FOUND,
  unsupported: grpc.status.FAILED_PRECONDITION,
  rejected: grpc.status.FAILED_PRECONDITION,
  exhausted: grpc.status.RESOURCE_EXHAUSTED,
  busy: grpc.status.UNAVAILABLE,
  // FAILED_PRECONDITION, not UNAVAILABLE: asking this node again cannot help, asking the leader the details name can.
  not_leader: grpc.status.FAILED_PRECONDITION,
  no_leader: grpc.status.UNAVAILABLE,
  no_quorum: grpc.status.UNAVAILABLE,
  timeout: grpc.status.UNAVAILABLE,
  dropped: grpc.status.UNAVAILABLE,
  lost: grpc.status.UNAVAILABLE,
  unavailable: grpc.status.UNAVAILABLE,
  stopped: grpc.status.UNAVAILABLE,
  cancelled: grpc.status.CANCELLED,
  corrupt: grpc.status.DATA_LOSS,
  unreachable: grpc.status.UNAVAILABLE,
  internal: grpc.status.INTERNAL,
};

/** A status a peer may send without a code trailer, read as the nearest code. */
const CODE_OF_STATUS: Partial<Record<grpc.status, DwcpErrorCode>> = {
  [grpc.status.INVALID_ARGUMENT]: 'invalid',
  [grpc.status.NOT_FOUND]: 'not_found',
  [grpc.status.FAILED_PRECONDITION]: 'rejected',
  [grpc.status.RESOURCE_EXHAUSTED]: 'exhausted',
  [grpc.status.UNAVAILABLE]: 'unavailable',
  [grpc.status.DEADLINE_EXCEEDED]: 'timeout',
  [grpc.status.CANCELLED]: 'cancelled',
  [grpc.status.DATA_LOSS]: 'corrupt',
};

const CODE_KEY = 'dwcp-error-code';
const RETRYABLE_KEY = 'dwcp-retryable';
const DETAILS_KEY = 'dwcp-error-details-bin';

export function grpcStatusOf(code: DwcpErrorCode): grpc.status {
  return STATUS[code];
}

/** The status a failed handler sends: the message as details, the rest as trailers. */
export function toStatus(err: DwcpError): grpc.StatusObject {
  const metadata = new grpc.Metadata();
  metadata.set(CODE_KEY, err.code);
  metadata.set(RETRYABLE_KEY, String(err.retryable));
  if (err.details !== null) metadata.set(DETAILS_KEY, Buffer.from(JSON.stringify(err.details), 'utf8'));
  return { code: STATUS[err.code], details: err.message, metadata };
}

/** What a failed call's trailers said about the failure. */
export interface StatusVerdict {
  code: DwcpErrorCode;
  retryable: boolean;
  details: DwcpErrorDetails | null;
}

function first(metadata: grpc.Metadata | undefined, key: string): grpc.MetadataValue | undefined {
  return metadata?.get(key)[0];
}

/** Details as sent by toStatus; anything else (not JSON, not an object of scalars) is dropped. */
function detailsFrom(raw: grpc.MetadataValue | undefined): DwcpErrorDetails | null {
  if (!(raw instanceof Buffer)) return null;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return null;
  const entries = Object.entries(parsed as Record<string, unknown>);
  const scalar = (v: unknown): v is string | number | boolean => typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean';
  return entries.every(([, v]) => scalar(v)) ? (Object.fromEntries(entries) as DwcpErrorDetails) : null;
}

/** Reads toStatus's trailers back from a failed call (status code and trailing metadata). */
export function fromStatus(status: { code: grpc.status; metadata?: grpc.Metadata }): StatusVerdict {
  const rawCode = first(status.metadata, CODE_KEY);
  const code = typeof rawCode === 'string' && isDwcpErrorCode(rawCode) ? rawCode : (CODE_OF_STATUS[status.code] ?? 'internal');
  return {
    code,
    retryable: first(status.metadata, RETRYABLE_KEY) === 'true',
    details: detailsFrom(first(status.metadata, DETAILS_KEY)),
  };
}
