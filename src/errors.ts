/**
 * DwcpError: the one error type a dwcp component throws when the caller must
 * be able to act on the failure (retry, fix the request, ask another node).
 *
 * Invariants:
 * - `code` is one of DWCP_ERROR_CODES, a closed set: every code has exactly
 *   one gRPC status (src/admin/status.ts keeps the table, and the compiler
 *   makes it total), so a new code cannot travel without a decision.
 * - `retryable` says whether the same request may still succeed later (with
 *   the same client id and sequence, where it has one). It defaults from the
 *   code; a thrower overrides it only when it knows better (e.g. a forwarded
 *   answer whose code alone does not say).
 * - `message` is the operator's one line, unchanged from the component that
 *   knew what went wrong: nothing is appended or wrapped on the way out.
 *   Retryability travels next to it, never inside it (src/admin/status.ts).
 * - `details` is optional structured context (a leader hint, a field name)
 *   of plain scalars, so it crosses the admin socket as it is.
 *
 * A component narrows the codes it may throw with a subclass
 * (`class RaftClientError extends DwcpError<RaftClientErrorCode>`); callers
 * that only relay a failure test `instanceof DwcpError` and never convert it.
 *
 * Pure: no imports, so the pure cores (consensus, state) may throw it.
 */

/** Every code, with whether a retry of the same request may succeed by default. */
export const DWCP_ERROR_CODES = {
  /** The request is malformed; the message names the field. */
  invalid: false,
  /** A value or request above a fixed limit. */
  too_large: false,
  not_found: false,
  /** This node cannot serve the request as configured (it has no replica of that log, no store for that level). */
  unsupported: false,
  /** Refused as things stand (a log or provider said no); the message says why. */
  rejected: false,
  /** A capacity or quota would be passed. */
  exhausted: false,
  /** Too many requests in flight here; a later one gets through. */
  busy: true,
  /** This node does not lead; the details may name the leader. */
  not_leader: true,
  /** No leader is known (an election, or no quorum). */
  no_leader: true,
  /** Not enough members reachable for the log or the consistency level. */
  no_quorum: true,
  /** The deadline passed before an answer. */
  timeout: true,
  /** Dropped on the way (a queue was full, a new leader was settling). */
  dropped: true,
  /** Proposed, then overwritten by another leader's entry. */
  lost: true,
  /** Not reachable now for another reason the message gives. */
  unavailable: true,
  /** The component is shutting down. */
  stopped: false,
  /** The caller gave up (cancelled the call). */
  cancelled: false,
  /** Stored or received bytes fail their check. */
  corrupt: false,
  /** No daemon answered on the admin socket (missing, refused, permission): the client's own verdict. */
  unreachable: false,
  /** A bug: an invariant failed. */
  internal: false,
} as const satisfies Record<string, boolean>;

export type DwcpErrorCode = keyof typeof DWCP_ERROR_CODES;

/** Structured context of a failure: plain scalars, so it travels as it is. */
export type DwcpErrorDetails = Readonly<Record<string, string | number | boolean>>;

export interface DwcpErrorOptions {
  /** Overrides the code's default. */
  retryable?: boolean;
  details?: DwcpErrorDetails | null;
  cause?: unknown;
}

export function isDwcpErrorCode(raw: string): raw is DwcpErrorCode {
  return Object.hasOwn(DWCP_ERROR_CODES, raw);
}

export class DwcpError<C extends DwcpErrorCode = DwcpErrorCode> extends Error {
  readonly code: C;
  readonly retryable: boolean;
  readonly details: DwcpErrorDetails | null;

  constructor(code: C, message: string, options: DwcpErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.retryable = options.retryable ?? DWCP_ERROR_CODES[code];
    this.details = options.details ?? null;
  }
}
