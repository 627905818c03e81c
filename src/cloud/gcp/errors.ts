/**
 * Maps what `@google-cloud/compute` (google-gax over REST) throws, and the
 * errors GCE reports inside finished operations, onto the provider error
 * types. gax has already retried what its retry settings allow by the time an
 * error gets here.
 *
 * Invariant: the provider's own message is kept verbatim, with the HTTP status
 * and Google's status name or operation error code alongside.
 */
import {
  CancelledError,
  CapacityError,
  CredentialsError,
  IncorrectStateError,
  InvalidRequestError,
  NotFound,
  ProviderError,
  sdkErrorMessage,
  ThrottledError,
  type ProviderErrorOptions,
} from '../provider.ts';

/** gRPC status numbers gax puts in `code` (REST errors are mapped from their HTTP status). */
const GRPC = {
  CANCELLED: 1,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  UNAVAILABLE: 14,
  UNAUTHENTICATED: 16,
} as const;

const GRPC_NAMES: Readonly<Record<number, string>> = Object.fromEntries(Object.entries(GRPC).map(([name, code]) => [code, name]));

interface GaxErrorShape {
  code?: unknown;
  httpStatusCode?: unknown;
  message?: unknown;
  name?: unknown;
}

export function gcpErrorCode(error: unknown): string {
  const shape = (typeof error === 'object' && error !== null ? error : {}) as GaxErrorShape;
  if (typeof shape.code === 'number') return GRPC_NAMES[shape.code] ?? `GRPC_${shape.code}`;
  if (typeof shape.code === 'string') return shape.code;
  return typeof shape.name === 'string' ? shape.name : 'Unknown';
}

export function httpStatusOf(error: unknown): number | undefined {
  const shape = (typeof error === 'object' && error !== null ? error : {}) as GaxErrorShape & { response?: { status?: unknown } };
  if (typeof shape.httpStatusCode === 'number') return shape.httpStatusCode;
  return typeof shape.response?.status === 'number' ? shape.response.status : undefined;
}

/**
 * `lastAttemptStatus` is the HTTP status of the call's last attempt: when gax
 * runs out of retry budget it reports DEADLINE_EXCEEDED, and the last attempt
 * tells whether that was throttling or an unavailable backend.
 */
export function mapGcpError(error: unknown, operation: string, credentialSource: string, lastAttemptStatus?: number): ProviderError {
  if (error instanceof ProviderError) return error;
  const message = sdkErrorMessage(error);
  const httpStatus = httpStatusOf(error) ?? (gcpErrorCode(error) === 'DEADLINE_EXCEEDED' && lastAttemptStatus !== undefined && lastAttemptStatus >= 400 ? lastAttemptStatus : undefined);
  const code = gcpErrorCode(error);
  const options = { cause: error, httpStatus };
  if (code === 'CANCELLED' || code === 'AbortError') return new CancelledError('gcp', operation, 'Cancelled', 'cancelled by the caller', options);
  if (httpStatus === 401 || code === 'UNAUTHENTICATED') return new CredentialsError('gcp', operation, code, message, credentialSource, options);
  if (httpStatus === 429 || code === 'RESOURCE_EXHAUSTED') return new ThrottledError('gcp', operation, code, `${message} (still throttled after the client's retries)`, options);
  if (httpStatus === 404 || code === 'NOT_FOUND') return new NotFound('gcp', operation, code, message, options);
  if (httpStatus === 412 || code === 'FAILED_PRECONDITION') return new IncorrectStateError('gcp', operation, code, message, options);
  if (httpStatus === 400 || code === 'INVALID_ARGUMENT') return new InvalidRequestError('gcp', operation, code, message, options);
  return new ProviderError('gcp', operation, code, message, options);
}

/** An error GCE reported in a finished operation (`operation.error.errors[]`). */
export function mapOperationError(code: string, message: string, operation: string, options: ProviderErrorOptions): ProviderError {
  if (code.startsWith('ZONE_RESOURCE_POOL_EXHAUSTED') || code === 'RESOURCE_POOL_EXHAUSTED' || code === 'RESOURCE_NOT_FOUND_IN_ZONE') {
    return new CapacityError('gcp', operation, code, message, 'capacity', options);
  }
  if (code === 'QUOTA_EXCEEDED') return new CapacityError('gcp', operation, code, message, 'quota', options);
  if (code === 'RESOURCE_NOT_FOUND') return new NotFound('gcp', operation, code, message, options);
  return new ProviderError('gcp', operation, code, message, options);
}
