/**
 * The one interface every cloud provider implements (AWS EC2, Google Compute,
 * the `local` simulated provider, `qemu` real guests on this host), shaped by what the federation needs rather
 * than by one cloud's API: today the inventory and the VM lifecycle behind
 * `dwcpctl vm` and `cost`; placement, bursting and DR are the fleet control
 * plane's (issue 13) and will call the same interface.
 *
 * Invariants:
 * - Every instance crosses this boundary as a normalised `Instance`: one state
 *   vocabulary (pending | running | stopping | stopped | terminated), tags as a
 *   plain string map, times as Dates, absent values as null (never undefined).
 * - Every failure crosses it as a `ProviderError` (or a subclass) naming the
 *   provider and the operation; SDK error types never leak out, so callers can
 *   branch on `instanceof` without knowing which cloud they talk to.
 * - Long operations (create/start/stop/terminate) wait for the target state by
 *   default, report each observation through `onProgress`, and stop waiting when
 *   their AbortSignal fires. Aborting abandons the *wait*, not the cloud-side
 *   operation once the provider has accepted it: the caller gets a
 *   `CancelledError` and should re-read the instance.
 * - `setTags` merges: it adds or overwrites the given keys and leaves the others.
 */
import { DwcpError, type DwcpErrorCode } from '../errors.ts';

export const PROVIDER_KINDS = ['aws', 'gcp', 'local', 'qemu'] as const;
export type ProviderKind = (typeof PROVIDER_KINDS)[number];

export const INSTANCE_STATES = ['pending', 'running', 'stopping', 'stopped', 'terminated'] as const;
export type InstanceState = (typeof INSTANCE_STATES)[number];

export type Tags = Readonly<Record<string, string>>;

export interface Instance {
  /** Unique within the provider and region and enough to address the instance: EC2 `i-…`, GCP `zone/name`, local `local-…`, qemu `qemu-…`. */
  readonly id: string;
  readonly name: string;
  readonly provider: ProviderKind;
  readonly region: string;
  readonly zone: string;
  readonly type: string;
  /** Null when the provider could not tell the type's size (an unknown or retired type). */
  readonly vcpus: number | null;
  readonly memoryMiB: number | null;
  readonly state: InstanceState;
  /** The provider's own state word (`shutting-down`, `STAGING`, …), for operators. */
  readonly providerState: string;
  readonly tags: Tags;
  /** Spot (AWS) or Spot/preemptible (GCP): may be reclaimed by the provider. */
  readonly spot: boolean;
  readonly launchTime: Date | null;
  readonly image: string | null;
  readonly privateIp: string | null;
  readonly publicIp: string | null;
}

export interface InstanceFilter {
  /** Any of these states; all states when absent or empty. */
  states?: readonly InstanceState[];
  /** Every one of these tags must be present with exactly this value. */
  tags?: Tags;
}

export interface CreateInstanceRequest {
  /** Display name (the `Name` tag on AWS, the instance name on GCP, which must then be a DNS label). */
  name: string;
  type: string;
  /** AMI id on AWS, image URL or `projects/…/global/images/…` on GCP, anything on local. */
  image: string;
  /** Defaults to the provider's configured default zone. */
  zone?: string;
  tags?: Tags;
  spot?: boolean;
  /** Plain text; providers encode it as their API needs (base64 on AWS, metadata `user-data` on GCP). */
  userData?: string;
  /**
   * Makes the create idempotent: a retry with the same token returns the same
   * instance instead of launching a second one (EC2 ClientToken, GCP requestId).
   */
  idempotencyToken?: string;
  /**
   * The id of a migration this instance receives (src/fleet/migrations.ts):
   * create it prepared but not booted, in state `stopped`, and resolve once
   * it is; it must not run until a migration completes into it or it is
   * started. Only providers that can receive a migration take it (local:
   * a stopped record; qemu: its disk, and for a live migration a QEMU
   * waiting for the incoming stream); the others refuse it.
   */
  incoming?: string;
  /** With `incoming`: the migration's mode (qemu prepares a QEMU waiting for the stream only for `live`; cold and warm receive a disk). */
  incomingMode?: 'live' | 'warm' | 'cold';
  /**
   * A DR backup to start from (src/dr/): the path of a disk file restored
   * from it, which the create takes over (qemu: the guest's disk, moved into
   * place; local: nothing to restore, its record carries the backup's tag).
   * Only local and qemu take it; the others refuse it.
   */
  restoreDisk?: string;
}

export interface CallOptions {
  signal?: AbortSignal;
}

export type LongOperation = 'create' | 'start' | 'stop' | 'terminate';

export interface ProgressEvent {
  operation: LongOperation;
  instanceId: string;
  /** accepted: the provider took the request; waiting: an observation while waiting; done: target state reached. */
  phase: 'accepted' | 'waiting' | 'done';
  state: InstanceState;
  providerState: string;
  /** Percent complete when the provider reports one (GCP operations). */
  percent?: number;
  elapsedMs: number;
}

export interface LongOperationOptions extends CallOptions {
  onProgress?: (event: ProgressEvent) => void;
  /** When false, return as soon as the provider accepted the request. Default true. */
  wait?: boolean;
}

export interface TerminateOptions extends LongOperationOptions {
  /** Keep the VM's disk (qemu: the overlay file). Only providers whose disks are files of ours honour it; the inventory refuses it for the others. */
  keepDisk?: boolean;
}

export interface InstanceTypeInfo {
  name: string;
  vcpus: number;
  memoryMiB: number;
  /** e.g. x86_64, arm64; empty when the provider does not say. */
  architectures: readonly string[];
  /** Whether the type can run as spot/preemptible. */
  spot: boolean;
}

export interface InstanceTypeQuery {
  /** Only these types; all when absent. */
  types?: readonly string[];
  /** Types offered in this zone (GCP types are per zone); the default zone when absent. */
  zone?: string;
}

export type ZoneStatus = 'available' | 'impaired' | 'unavailable';

export interface ZoneHealth {
  zone: string;
  region: string;
  status: ZoneStatus;
  providerStatus: string;
  messages: readonly string[];
}

export interface SpotPrice {
  type: string;
  zone: string;
  /** US dollars per instance-hour. */
  pricePerHour: number;
  timestamp: Date;
}

export interface SpotPriceQuery {
  types: readonly string[];
  zones?: readonly string[];
}

/** Operations in flight at once per provider unless it says otherwise (CloudProvider.concurrency). */
export const DEFAULT_PROVIDER_CONCURRENCY = 32;

export interface CloudProvider {
  readonly kind: ProviderKind;
  readonly region: string;
  /** Human label for logs and `dwcpctl`, e.g. "aws us-east-1" or "local (simulated VMs, no cloud)". */
  readonly description: string;
  /**
   * How many operations (creates, starts, stops, terminates) its drivers
   * should have in flight at once; absent: DEFAULT_PROVIDER_CONCURRENCY. A
   * cloud's API throttles beyond a few dozen; a provider whose operations
   * cost little here and mostly wait (local) takes many more.
   */
  readonly concurrency?: number;

  list(filter?: InstanceFilter, options?: CallOptions): Promise<Instance[]>;
  /** Throws `NotFound` when the instance does not exist (GCP: was deleted). */
  get(id: string, options?: CallOptions): Promise<Instance>;
  /** Resolves when running (or, with wait: false, once accepted). */
  create(request: CreateInstanceRequest, options?: LongOperationOptions): Promise<Instance>;
  start(id: string, options?: LongOperationOptions): Promise<Instance>;
  stop(id: string, options?: LongOperationOptions): Promise<Instance>;
  /** Resolves with the last record, state `terminated` (GCP deletes: the record is synthesised). */
  terminate(id: string, options?: TerminateOptions): Promise<Instance>;
  setTags(id: string, tags: Tags, options?: CallOptions): Promise<void>;
  listInstanceTypes(query?: InstanceTypeQuery, options?: CallOptions): Promise<InstanceTypeInfo[]>;
  zoneHealth(options?: CallOptions): Promise<ZoneHealth[]>;
  /**
   * Changes a stopped instance's type (EC2 ModifyInstanceAttribute, GCE
   * setMachineType); both clouds refuse it for a running instance, and so
   * does every provider here. Absent: the provider cannot resize (qemu).
   */
  setType?(id: string, type: string, options?: CallOptions): Promise<Instance>;
  /** Current spot prices, where the provider publishes them through its API (AWS). */
  spotPrices?(query: SpotPriceQuery, options?: CallOptions): Promise<SpotPrice[]>;
  close(): Promise<void>;
}

/**
 * A provider whose VMs have a serial console it keeps as a file (qemu): not
 * part of CloudProvider, since the clouds keep theirs behind their own APIs.
 */
export interface SerialConsoleSource {
  /** The console log of a VM named by id or by name; throws NotFound or InvalidRequestError (an ambiguous name). */
  serialLog(idOrName: string): { id: string; name: string; path: string };
}

export function hasSerialConsole(provider: CloudProvider): provider is CloudProvider & SerialConsoleSource {
  return typeof (provider as Partial<SerialConsoleSource>).serialLog === 'function';
}

// ---------------------------------------------------------------------------
// Errors

export interface ProviderErrorOptions {
  cause?: unknown;
  /** HTTP status of the failing response, when there was one. */
  httpStatus?: number;
  /**
   * The instance concerned, when the failure came after the provider accepted
   * the request (a wait that failed, timed out or was cancelled): the instance
   * may exist even though the call failed.
   */
  instanceId?: string;
}

/**
 * Any failure of a provider call. `providerCode` is the provider's own error
 * code where it gave one; the DwcpError `code` is what the failure means to a
 * caller, one per class (`kind`), so the admin API maps it without knowing
 * the classes: a plain ProviderError (a cloud outage, an odd answer) is
 * `unavailable` and worth a retry.
 */
export class ProviderError extends DwcpError {
  /** The DwcpError code of every error of this class. */
  static readonly kind: DwcpErrorCode = 'unavailable';
  readonly provider: ProviderKind;
  readonly operation: string;
  readonly providerCode: string;
  readonly httpStatus: number | undefined;
  readonly instanceId: string | undefined;

  constructor(provider: ProviderKind, operation: string, providerCode: string, message: string, options: ProviderErrorOptions = {}) {
    super((new.target as typeof ProviderError).kind, `${provider} ${operation}: ${message} [${providerCode}]`, { cause: options.cause });
    this.provider = provider;
    this.operation = operation;
    this.providerCode = providerCode;
    this.httpStatus = options.httpStatus;
    this.instanceId = options.instanceId;
  }
}

export class NotFound extends ProviderError {
  static override readonly kind = 'not_found';
}

/** The provider has no capacity for the request (`reason: 'capacity'`) or the account hit a limit (`'quota'`). */
export class CapacityError extends ProviderError {
  static override readonly kind = 'exhausted';
  readonly reason: 'capacity' | 'quota';
  constructor(provider: ProviderKind, operation: string, code: string, message: string, reason: 'capacity' | 'quota', options: ProviderErrorOptions = {}) {
    super(provider, operation, code, message, options);
    this.reason = reason;
  }
}

/** Still throttled after the SDK's own retries and back-off were used up. */
export class ThrottledError extends ProviderError {
  static override readonly kind = 'unavailable';
}

/** Missing, invalid or expired credentials; `credentialSource` says where they were looked for. */
export class CredentialsError extends ProviderError {
  static override readonly kind = 'rejected';
  readonly credentialSource: string;
  constructor(provider: ProviderKind, operation: string, code: string, message: string, credentialSource: string, options: ProviderErrorOptions = {}) {
    super(provider, operation, code, `${message} (credentials from ${credentialSource})`, options);
    this.credentialSource = credentialSource;
  }
}

/** The request was refused as malformed, before or by the provider; the message names the field. */
export class InvalidRequestError extends ProviderError {
  static override readonly kind = 'invalid';
}

/** The instance is in a state that does not allow the operation (e.g. start a terminated instance). */
export class IncorrectStateError extends ProviderError {
  static override readonly kind = 'rejected';
}

/** The caller's AbortSignal fired. An operation the provider had accepted may still complete. */
export class CancelledError extends ProviderError {
  static override readonly kind = 'cancelled';
}

/** Waiting for a target state took longer than the configured maximum. */
export class WaitTimeoutError extends ProviderError {
  static override readonly kind = 'timeout';
}

// ---------------------------------------------------------------------------
// Helpers shared by the providers

export function isInstanceState(value: string): value is InstanceState {
  return (INSTANCE_STATES as readonly string[]).includes(value);
}

/**
 * The message an SDK error carries, kept verbatim because operators search for
 * it; the error's string form when it carries none (or an empty one).
 */
export function sdkErrorMessage(error: unknown): string {
  const message: unknown = typeof error === 'object' && error !== null ? (error as { message?: unknown }).message : undefined;
  return typeof message === 'string' && message !== '' ? message : String(error);
}

/** Throws `CancelledError` if the signal already fired, so no request is sent after a cancel. */
export function throwIfAborted(signal: AbortSignal | undefined, provider: ProviderKind, operation: string): void {
  if (signal?.aborted) throw new CancelledError(provider, operation, 'Cancelled', 'cancelled by the caller', { cause: signal.reason });
}

/**
 * Resolves or rejects with `work`, or rejects with `CancelledError` as soon as
 * the signal fires, for SDK calls that cannot be cancelled themselves. The
 * abandoned call's outcome is swallowed.
 */
export function raceAbort<T>(work: Promise<T>, signal: AbortSignal | undefined, provider: ProviderKind, operation: string): Promise<T> {
  if (!signal) return work;
  throwIfAborted(signal, provider, operation);
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(new CancelledError(provider, operation, 'Cancelled', 'cancelled by the caller', { cause: signal.reason }));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}

/** Whether an instance passes a filter; providers that filter server-side still agree with this. */
export function matchesFilter(instance: Instance, filter: InstanceFilter | undefined): boolean {
  if (!filter) return true;
  if (filter.states && filter.states.length > 0 && !filter.states.includes(instance.state)) return false;
  for (const [key, value] of Object.entries(filter.tags ?? {})) {
    if (instance.tags[key] !== value) return false;
  }
  return true;
}

/** Input checks common to every provider; each provider adds its own limits. */
/**
 * Provider kinds that can create an instance to receive a migration
 * (CreateInstanceRequest.incoming): local (a stopped record) and qemu (its
 * disk, and for live a QEMU started with `-incoming defer`, never booted).
 */
const MIGRATION_TARGET_KINDS: readonly string[] = ['local', 'qemu'];

/** Provider kinds that take DR backups of their instances and start from one (src/dr/backup-driver.ts). */
export const BACKUP_KINDS: readonly string[] = ['local', 'qemu'];

export function checkCreateRequest(provider: ProviderKind, request: CreateInstanceRequest): void {
  const invalid = (field: string, why: string): InvalidRequestError =>
    new InvalidRequestError(provider, 'create', 'InvalidParameterValue', `${field}: ${why}`);
  for (const field of ['name', 'type', 'image'] as const) {
    const value: unknown = request[field];
    if (typeof value !== 'string' || value.trim() === '') throw invalid(field, 'required, a non-empty string');
  }
  if (request.zone !== undefined && (typeof request.zone !== 'string' || request.zone === '')) throw invalid('zone', 'must be a non-empty string when given');
  if (request.incoming !== undefined && !MIGRATION_TARGET_KINDS.includes(provider)) throw invalid('incoming', `provider ${provider} cannot receive a migration (${MIGRATION_TARGET_KINDS.join(', ')} can)`);
  if (request.restoreDisk !== undefined && !BACKUP_KINDS.includes(provider)) throw invalid('restoreDisk', `provider ${provider} cannot start from a DR backup yet (${BACKUP_KINDS.join(', ')} can)`);
  checkTags(provider, 'create', request.tags ?? {});
}

export function checkTags(provider: ProviderKind, operation: string, tags: Tags): void {
  for (const [key, value] of Object.entries(tags)) {
    if (key === '') throw new InvalidRequestError(provider, operation, 'InvalidParameterValue', 'tags: a tag key is empty');
    if (typeof value !== 'string') throw new InvalidRequestError(provider, operation, 'InvalidParameterValue', `tags.${key}: the value must be a string`);
  }
}

/** The state each long operation waits for. */
export const TARGET_STATE: Readonly<Record<LongOperation, InstanceState>> = {
  create: 'running',
  start: 'running',
  stop: 'stopped',
  terminate: 'terminated',
};

/** Reports progress relative to the operation's start; tolerates a missing callback. */
export function progressReporter(operation: LongOperation, instanceId: string, onProgress: ((event: ProgressEvent) => void) | undefined) {
  const started = performance.now();
  let id = instanceId;
  return {
    /** The id becomes known only after a create was accepted. */
    setInstanceId(value: string): void {
      id = value;
    },
    report(phase: ProgressEvent['phase'], state: InstanceState, providerState: string, percent?: number): void {
      if (!onProgress) return;
      const event: ProgressEvent = { operation, instanceId: id, phase, state, providerState, elapsedMs: Math.round(performance.now() - started) };
      if (percent !== undefined) event.percent = percent;
      onProgress(event);
    },
  };
}
export type ProgressReporter = ReturnType<typeof progressReporter>;

/**
 * One SDK call as the provider saw it, for metrics (calls by operation and
 * result, latency, throttling retries). `attempts` counts the SDK's own
 * retries; `throttledAttempts` how many of those attempts were throttled.
 */
export interface ApiCallEvent {
  provider: ProviderKind;
  /** The provider's API operation, e.g. DescribeInstances, instances.insert. */
  call: string;
  ok: boolean;
  /** The provider's error code when not ok. */
  code?: string;
  durationMs: number;
  attempts: number;
  throttledAttempts: number;
}
export type ApiCallObserver = (event: ApiCallEvent) => void;
