/**
 * Maps what `@aws-sdk/client-ec2` throws onto the provider error types, by
 * EC2 error code. The SDK has already retried what it considers retryable
 * (throttling, 5xx, timeouts) by the time an error gets here, so a throttling
 * code means the retries ran out.
 *
 * Invariant: the provider's own message is kept verbatim in the mapped error
 * (operators search for it), with the code alongside.
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
} from '../provider.ts';

/** EC2 codes the SDK treats as throttling (it retries them with the longer throttling back-off). */
export const THROTTLING_CODES: ReadonlySet<string> = new Set([
  'RequestLimitExceeded',
  'Throttling',
  'ThrottlingException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'EC2ThrottledException',
  'BandwidthLimitExceeded',
  'SlowDown',
]);

const CAPACITY_CODES: ReadonlySet<string> = new Set([
  'InsufficientInstanceCapacity',
  'InsufficientHostCapacity',
  'InsufficientReservedInstanceCapacity',
  'InsufficientCapacity',
  'InsufficientCapacityOnOutpost',
  'SpotMaxPriceTooLow',
]);

const QUOTA_CODES: ReadonlySet<string> = new Set(['InstanceLimitExceeded', 'VcpuLimitExceeded', 'MaxSpotInstanceCountExceeded', 'InsufficientFreeAddressesInSubnet']);

const CREDENTIAL_CODES: ReadonlySet<string> = new Set([
  'AuthFailure',
  'MissingAuthenticationToken',
  'RequestExpired',
  'ExpiredToken',
  'InvalidClientTokenId',
  'UnrecognizedClientException',
  'SignatureDoesNotMatch',
  'CredentialsProviderError',
  'TokenProviderError',
]);

interface SdkErrorShape {
  name?: unknown;
  message?: unknown;
  code?: unknown;
  $metadata?: { httpStatusCode?: number };
}

export function awsErrorCode(error: unknown): string {
  if (typeof error !== 'object' || error === null) return 'Unknown';
  const shape = error as SdkErrorShape;
  // Node's network errors carry the errno code (ECONNREFUSED); SDK service errors carry the EC2 code as name.
  if (typeof shape.code === 'string' && shape.code.startsWith('E')) return shape.code;
  return typeof shape.name === 'string' && shape.name !== 'Error' ? shape.name : 'Unknown';
}

export function isCredentialsCode(code: string): boolean {
  return CREDENTIAL_CODES.has(code);
}

/** `instanceId`: the instance concerned, when the provider had already accepted the request. */
export function mapAwsError(error: unknown, operation: string, credentialSource: string, instanceId?: string): ProviderError {
  if (error instanceof ProviderError) return error;
  const code = awsErrorCode(error);
  const shape = (typeof error === 'object' && error !== null ? error : {}) as SdkErrorShape;
  const message = sdkErrorMessage(error);
  const options = { cause: error, httpStatus: shape.$metadata?.httpStatusCode, instanceId };
  if (code === 'AbortError') return new CancelledError('aws', operation, 'Cancelled', 'cancelled by the caller', options);
  if (CREDENTIAL_CODES.has(code)) return new CredentialsError('aws', operation, code, message, credentialSource, options);
  if (THROTTLING_CODES.has(code)) return new ThrottledError('aws', operation, code, `${message} (still throttled after the SDK's retries)`, options);
  if (CAPACITY_CODES.has(code)) return new CapacityError('aws', operation, code, message, 'capacity', options);
  if (QUOTA_CODES.has(code)) return new CapacityError('aws', operation, code, message, 'quota', options);
  if (code.endsWith('.NotFound')) return new NotFound('aws', operation, code, message, options);
  if (code === 'IncorrectInstanceState' || code === 'IncorrectState' || code === 'UnsupportedOperation') {
    return new IncorrectStateError('aws', operation, code, message, options);
  }
  if (code.endsWith('.Malformed') || code.startsWith('InvalidParameter') || code === 'MissingParameter' || code === 'InvalidInstanceType' || code === 'TagLimitExceeded') {
    return new InvalidRequestError('aws', operation, code, message, options);
  }
  return new ProviderError('aws', operation, code, message, options);
}
