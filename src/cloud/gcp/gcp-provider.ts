/**
 * The Google Compute provider: `@google-cloud/compute` (InstancesClient,
 * MachineTypesClient, ZonesClient, ZoneOperationsClient) over its REST
 * transport (`fallback: 'rest'`), one provider per project and region.
 *
 * Choices, and why:
 * - Credentials: Application Default Credentials (the variable
 *   GOOGLE_APPLICATION_CREDENTIALS, gcloud's ADC file, or the metadata server),
 *   or a credentials file named in the config (the auth library warns on the
 *   console that such a file is "externally sourced" and must be trusted).
 *   Tests use ADC with GOOGLE_APPLICATION_CREDENTIALS naming a real
 *   `external_account` credential whose token_url is the fake server's STS
 *   endpoint: the real auth library runs end to end and this code has no
 *   test-only bypass. The four clients share one GoogleAuth, so one token
 *   serves them all. Errors name the source that was used.
 * - Endpoint override: `endpoint: 'http://127.0.0.1:PORT'` becomes
 *   apiEndpoint/port/protocol; all three are set, as the client always sends a
 *   port (443 unless told).
 * - Retries are gax's own, tuned: UNAVAILABLE (503), RESOURCE_EXHAUSTED (429)
 *   and DEADLINE_EXCEEDED are retried with exponential back-off for every call
 *   used here, mutations included. That is safe because every mutation carries
 *   a `requestId`, which GCE uses to return the original operation instead of
 *   repeating it. Google's default retries only the read calls, on 503.
 * - Mutations return zone operations; waiting is zoneOperations.wait (a
 *   server-side long poll) in a loop until DONE, bounded by `waitTimeoutMs` and
 *   the caller's AbortSignal. Capacity and quota failures arrive as errors of
 *   the finished operation, as on GCE.
 * - Ids are `zone/name`: GCE addresses instances by zone and name, so the id
 *   alone is enough to act on an instance without a lookup.
 * - Tags are GCE labels; keys and values that GCE would refuse are refused
 *   here first, with the key named.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { InstancesClient, MachineTypesClient, ZoneOperationsClient, ZonesClient, type protos } from '@google-cloud/compute';
import {
  CancelledError,
  checkCreateRequest,
  CredentialsError,
  InvalidRequestError,
  matchesFilter,
  NotFound,
  ProviderError,
  progressReporter,
  raceAbort,
  throwIfAborted,
  WaitTimeoutError,
  type ApiCallObserver,
  type CallOptions,
  type CloudProvider,
  type CreateInstanceRequest,
  type Instance,
  type InstanceFilter,
  type InstanceState,
  type InstanceTypeInfo,
  type InstanceTypeQuery,
  type LongOperation,
  type LongOperationOptions,
  type ProgressReporter,
  type Tags,
  type ZoneHealth,
} from '../provider.ts';
import { gcpErrorCode, httpStatusOf, mapGcpError, mapOperationError } from './errors.ts';
import { checkLabels } from './labels.ts';
import { endpointOptions } from './endpoint.ts';
import type { UsageQuery, UsageSample } from '../utilisation.ts';
import type { MonitoringUsage } from './monitoring.ts';

type IInstance = protos.google.cloud.compute.v1.IInstance;
type IOperation = protos.google.cloud.compute.v1.IOperation;

export type GcpCredentialSource = { source: 'adc' } | { source: 'file'; path: string };

export interface GcpRetryTuning {
  initialDelayMs: number;
  maxDelayMs: number;
  multiplier: number;
  /** Give up retrying a call after this long. */
  totalTimeoutMs: number;
}

export interface GcpProviderOptions {
  project: string;
  region: string;
  /** Zone for creates and type listings that name none; default: the region's first zone. */
  defaultZone?: string;
  credentials?: GcpCredentialSource;
  /** Override the Compute endpoint, e.g. http://127.0.0.1:8085. */
  endpoint?: string;
  /** Override the Cloud Monitoring endpoint (utilisation: monitoring.ts). */
  monitoringEndpoint?: string;
  retry?: Partial<GcpRetryTuning>;
  /** Longest wait for one long operation; default 10 minutes. */
  waitTimeoutMs?: number;
  /** list page size (maxResults), 1..500; default 500. */
  pageSize?: number;
  /** Network for new instances; default the project's `default` network. */
  network?: string;
  observer?: ApiCallObserver;
}

export const DEFAULT_GCP_RETRY: GcpRetryTuning = { initialDelayMs: 250, maxDelayMs: 32_000, multiplier: 2, totalTimeoutMs: 120_000 };
/** GCE holds a zoneOperations.wait for at most two minutes; a little more as the client-side deadline. */
const OPERATION_WAIT_CALL_MS = 130_000;

const STATUS_TO_STATE: Readonly<Record<string, InstanceState>> = {
  PROVISIONING: 'pending',
  STAGING: 'pending',
  REPAIRING: 'pending',
  RUNNING: 'running',
  STOPPING: 'stopping',
  SUSPENDING: 'stopping',
  PENDING_STOP: 'stopping',
  TERMINATED: 'stopped',
  STOPPED: 'stopped',
  SUSPENDED: 'stopped',
};
const STATE_TO_STATUS: Readonly<Record<InstanceState, readonly string[]>> = {
  pending: ['PROVISIONING', 'STAGING', 'REPAIRING'],
  running: ['RUNNING'],
  stopping: ['STOPPING', 'SUSPENDING', 'PENDING_STOP'],
  stopped: ['TERMINATED', 'STOPPED', 'SUSPENDED'],
  // Deleted instances are gone from GCE; nothing lists as terminated.
  terminated: [],
};
/** What an instance is while each operation runs, for progress before GCE says more. */
const TRANSITIONAL: Readonly<Record<LongOperation, InstanceState>> = { create: 'pending', start: 'pending', stop: 'stopping', terminate: 'stopping' };

const NAME_RE = /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;
const CUSTOM_TYPE_RE = /^(?:[a-z0-9]+-)?custom-(\d+)-(\d+)(?:-ext)?$/;

const RETRYABLE = ['UNAVAILABLE', 'RESOURCE_EXHAUSTED', 'DEADLINE_EXCEEDED'];
const METHODS = {
  'google.cloud.compute.v1.Instances': ['List', 'AggregatedList', 'Get', 'Insert', 'Start', 'Stop', 'Delete', 'SetLabels'],
  'google.cloud.compute.v1.MachineTypes': ['List', 'Get', 'AggregatedList'],
  'google.cloud.compute.v1.Zones': ['List', 'Get'],
  'google.cloud.compute.v1.ZoneOperations': ['Get', 'Wait'],
} as const;

/**
 * gax client config overriding the retry policy of every method we call. gax
 * lets a method's `timeout_millis` override the back-off's total timeout, so
 * that is where the retry budget goes.
 */
function retryConfig(service: keyof typeof METHODS, tuning: GcpRetryTuning) {
  return {
    interfaces: {
      [service]: {
        retry_codes: { dwcp_retryable: RETRYABLE },
        retry_params: {
          dwcp: {
            initial_retry_delay_millis: tuning.initialDelayMs,
            retry_delay_multiplier: tuning.multiplier,
            max_retry_delay_millis: tuning.maxDelayMs,
            initial_rpc_timeout_millis: tuning.totalTimeoutMs,
            rpc_timeout_multiplier: 1,
            max_rpc_timeout_millis: tuning.totalTimeoutMs,
            total_timeout_millis: tuning.totalTimeoutMs,
          },
        },
        methods: Object.fromEntries(
          METHODS[service].map((m) => [m, { timeout_millis: tuning.totalTimeoutMs, retry_codes_name: 'dwcp_retryable', retry_params_name: 'dwcp' }]),
        ),
      },
    },
  };
}

interface CallCounter {
  attempts: number;
  throttled: number;
  /** HTTP status of the last answered attempt, to explain a retry budget that ran out. */
  lastStatus: number | undefined;
}

export class GcpProvider implements CloudProvider {
  readonly kind = 'gcp' as const;
  readonly region: string;
  readonly project: string;
  readonly description: string;
  readonly instances: InstancesClient;
  readonly machineTypes: MachineTypesClient;
  readonly zones: ZonesClient;
  readonly zoneOperations: ZoneOperationsClient;

  readonly #credentialSource: string;
  readonly #defaultZone: string | undefined;
  readonly #waitTimeoutMs: number;
  readonly #pageSize: number;
  readonly #network: string;
  readonly #observer: ApiCallObserver | undefined;
  readonly #endpoint: string | undefined;
  /** Cloud Monitoring, loaded on the first utilisation query. */
  #monitoring: Promise<MonitoringUsage> | null = null;
  readonly #counters = new AsyncLocalStorage<CallCounter>();
  readonly #types = new Map<string, InstanceTypeInfo | null>(); // key zone/type
  #credentialsReady: Promise<void> | undefined;
  #regionZones: Promise<string[]> | undefined;

  constructor(options: GcpProviderOptions) {
    const fail = (why: string): InvalidRequestError => new InvalidRequestError('gcp', 'configure', 'InvalidConfig', why);
    if (!options.project) throw fail('project: required');
    if (!options.region) throw fail('region: required');
    this.project = options.project;
    this.region = options.region;
    this.description = `gcp ${options.project}/${options.region}${options.endpoint ? ` via ${options.endpoint}` : ''}`;
    this.#defaultZone = options.defaultZone;
    this.#waitTimeoutMs = options.waitTimeoutMs ?? 600_000;
    this.#pageSize = options.pageSize ?? 500;
    if (!Number.isInteger(this.#pageSize) || this.#pageSize < 1 || this.#pageSize > 500) throw fail(`pageSize: must be an integer from 1 to 500, got ${options.pageSize}`);
    this.#network = options.network ?? 'global/networks/default';
    this.#observer = options.observer;
    this.#endpoint = options.monitoringEndpoint;
    const credentials = options.credentials ?? { source: 'adc' };
    this.#credentialSource =
      credentials.source === 'file'
        ? `credentials file ${credentials.path}`
        : 'Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud application_default_credentials.json, or the metadata server)';

    const tuning = { ...DEFAULT_GCP_RETRY, ...options.retry };
    const base = { projectId: options.project, fallback: 'rest' as const, ...endpointOptions(options.endpoint) };
    this.instances = new InstancesClient({
      ...base,
      ...(credentials.source === 'file' ? { keyFilename: credentials.path } : {}),
      clientConfig: retryConfig('google.cloud.compute.v1.Instances', tuning),
    });
    const auth = this.instances.auth;
    this.#countAttempts(auth);
    this.machineTypes = new MachineTypesClient({ ...base, auth, clientConfig: retryConfig('google.cloud.compute.v1.MachineTypes', tuning) });
    this.zones = new ZonesClient({ ...base, auth, clientConfig: retryConfig('google.cloud.compute.v1.Zones', tuning) });
    this.zoneOperations = new ZoneOperationsClient({ ...base, auth, clientConfig: retryConfig('google.cloud.compute.v1.ZoneOperations', tuning) });
  }

  /**
   * gax sends every HTTP attempt through `auth.fetch`; counting there, inside
   * the calling operation's async context, makes retries visible per call.
   */
  #countAttempts(auth: InstancesClient['auth']): void {
    const original = auth.fetch.bind(auth);
    const counters = this.#counters;
    auth.fetch = async function countedFetch<T>(...args: Parameters<typeof original>) {
      const counter = counters.getStore();
      const count = (status: number | undefined): void => {
        if (!counter) return;
        counter.attempts++;
        // An attempt cut short by the retry deadline has no status; keep the last real answer.
        if (status !== undefined) counter.lastStatus = status;
        if (status === 429) counter.throttled++;
      };
      try {
        const response = await original<T>(...args);
        count(response.status);
        return response;
      } catch (error) {
        count(httpStatusOf(error));
        throw error;
      }
    };
  }

  // --- calls -----------------------------------------------------------------

  /** Runs one API call: credentials first, then the call, timed, counted and with errors mapped. */
  async #call<T>(operation: string, apiCall: string, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    throwIfAborted(signal, 'gcp', operation);
    await raceAbort(this.#ensureCredentials(operation), signal, 'gcp', operation);
    const counter: CallCounter = { attempts: 0, throttled: 0, lastStatus: undefined };
    const started = performance.now();
    try {
      const result = await raceAbort(this.#counters.run(counter, work), signal, 'gcp', operation);
      this.#emit(apiCall, true, undefined, started, counter);
      return result;
    } catch (error) {
      this.#emit(apiCall, false, gcpErrorCode(error), started, counter);
      throw mapGcpError(error, operation, this.#credentialSource, counter.lastStatus);
    }
  }

  #emit(call: string, ok: boolean, code: string | undefined, started: number, counter: CallCounter): void {
    if (!this.#observer) return;
    const event = { provider: 'gcp' as const, call, ok, durationMs: performance.now() - started, attempts: Math.max(1, counter.attempts), throttledAttempts: counter.throttled };
    this.#observer(code === undefined ? event : { ...event, code });
  }

  /** Obtains a token once up front, so a missing or unreadable credential is reported as such, not as a failed API call. */
  #ensureCredentials(operation: string): Promise<void> {
    this.#credentialsReady ??= (async () => {
      try {
        const token = await this.instances.auth.getAccessToken();
        if (!token) throw new Error('the credential yielded no access token');
      } catch (error) {
        this.#credentialsReady = undefined;
        const message = error instanceof Error ? error.message : String(error);
        throw new CredentialsError('gcp', operation, 'CredentialsUnavailable', message, this.#credentialSource, { cause: error });
      }
    })();
    return this.#credentialsReady;
  }

  async list(filter?: InstanceFilter, options: CallOptions = {}): Promise<Instance[]> {
    const expression = filterExpression(filter);
    if (expression === null) return [];
    const raw = await this.#call('list', 'instances.aggregatedList', options.signal, async () => {
      const found: IInstance[] = [];
      const request = { project: this.project, maxResults: this.#pageSize, returnPartialSuccess: true, ...(expression ? { filter: expression } : {}) };
      for await (const [scope, scoped] of this.instances.aggregatedListAsync(request, { autoPaginate: false })) {
        throwIfAborted(options.signal, 'gcp', 'list');
        if (!scope.startsWith(`zones/${this.region}-`)) continue;
        found.push(...(scoped.instances ?? []));
      }
      return found;
    });
    const instances = await this.#normalise(raw, options.signal);
    return instances.filter((i) => matchesFilter(i, filter));
  }

  async get(id: string, options: CallOptions = {}): Promise<Instance> {
    const { zone, name } = this.#parseId(id, 'get');
    const [raw] = await this.#call('get', 'instances.get', options.signal, () => this.instances.get({ project: this.project, zone, instance: name }));
    const [instance] = await this.#normalise([raw], options.signal);
    if (!instance) throw new NotFound('gcp', 'get', 'NOT_FOUND', `instance ${id} not found`);
    return instance;
  }

  async create(request: CreateInstanceRequest, options: LongOperationOptions = {}): Promise<Instance> {
    checkCreateRequest('gcp', request);
    if (!NAME_RE.test(request.name)) {
      throw new InvalidRequestError('gcp', 'create', 'INVALID_ARGUMENT', `name: ${JSON.stringify(request.name)} must be a lowercase DNS label (a-z, 0-9, "-", starting with a letter, at most 63 characters)`);
    }
    checkLabels('create', request.tags ?? {});
    const zone = request.zone ?? (await this.#zoneOrDefault(options.signal));
    this.#checkZoneInRegion(zone, 'create');
    const machineType = request.type.includes('/') ? request.type : `zones/${zone}/machineTypes/${request.type}`;
    const resource: IInstance = {
      name: request.name,
      machineType,
      labels: { ...request.tags },
      disks: [{ boot: true, autoDelete: true, initializeParams: { sourceImage: request.image } }],
      networkInterfaces: [{ network: this.#network }],
      scheduling: request.spot
        ? { provisioningModel: 'SPOT', instanceTerminationAction: 'DELETE', automaticRestart: false, onHostMaintenance: 'TERMINATE' }
        : { provisioningModel: 'STANDARD' },
      ...(request.userData !== undefined ? { metadata: { items: [{ key: 'user-data', value: request.userData }] } } : {}),
    };
    const id = `${zone}/${request.name}`;
    const progress = await this.#operate('create', id, options, (requestId) =>
      this.instances.insert({ project: this.project, zone, instanceResource: resource, requestId: request.idempotencyToken ?? requestId }).then(([lro]) => lro.latestResponse as IOperation),
    );
    return this.#settle(id, progress, options);
  }

  async start(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    const { zone, name } = this.#parseId(id, 'start');
    const progress = await this.#operate('start', id, options, (requestId) =>
      this.instances.start({ project: this.project, zone, instance: name, requestId }).then(([lro]) => lro.latestResponse as IOperation),
    );
    return this.#settle(id, progress, options);
  }

  async stop(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    const { zone, name } = this.#parseId(id, 'stop');
    const progress = await this.#operate('stop', id, options, (requestId) =>
      this.instances.stop({ project: this.project, zone, instance: name, requestId }).then(([lro]) => lro.latestResponse as IOperation),
    );
    return this.#settle(id, progress, options);
  }

  async terminate(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    const { zone, name } = this.#parseId(id, 'terminate');
    // GCE forgets a deleted instance, so the record returned at the end is the last one seen before.
    const before = await this.get(id, { signal: options.signal });
    const progress = await this.#operate('terminate', id, options, (requestId) =>
      this.instances.delete({ project: this.project, zone, instance: name, requestId }).then(([lro]) => lro.latestResponse as IOperation),
    );
    if (options.wait === false) return { ...before, state: 'stopping', providerState: 'STOPPING' };
    progress.report('done', 'terminated', 'DELETED', 100);
    return { ...before, state: 'terminated', providerState: 'DELETED', publicIp: null };
  }

  /**
   * Sends a mutation with a fresh requestId (so gax may retry it safely) and,
   * unless told not to wait, waits for its operation to finish.
   */
  async #operate(operation: LongOperation, id: string, options: LongOperationOptions, send: (requestId: string) => Promise<IOperation>): Promise<ProgressReporter> {
    const progress = progressReporter(operation, id, options.onProgress);
    const apiCall = operation === 'create' ? 'instances.insert' : operation === 'terminate' ? 'instances.delete' : `instances.${operation}`;
    const op = await this.#call(operation, apiCall, options.signal, () => send(randomUUID()));
    progress.report('accepted', TRANSITIONAL[operation], `operation ${op.status ?? 'PENDING'}`, op.progress ?? undefined);
    if (options.wait !== false) await this.#waitOperation(operation, op, { reporter: progress, state: TRANSITIONAL[operation] }, options.signal);
    return progress;
  }

  /** The instance as it is after an operation; reports `done` when the operation was waited for. */
  async #settle(id: string, progress: ProgressReporter, options: LongOperationOptions): Promise<Instance> {
    const instance = await this.get(id, { signal: options.signal });
    if (options.wait !== false) progress.report('done', instance.state, instance.providerState, 100);
    return instance;
  }

  async #waitOperation(operation: string, initial: IOperation, progress: { reporter: ProgressReporter; state: InstanceState } | undefined, signal: AbortSignal | undefined): Promise<IOperation> {
    const deadline = performance.now() + this.#waitTimeoutMs;
    const zone = lastSegment(initial.zone);
    const name = initial.name;
    if (!zone || !name) throw new ProviderError('gcp', operation, 'MalformedOperation', 'operation without zone or name');
    // Errors after the request was accepted name the instance: it may exist although the call failed.
    const instanceId = initial.targetLink ? `${zone}/${lastSegment(initial.targetLink)}` : undefined;
    let op = initial;
    while (op.status !== 'DONE') {
      const remaining = deadline - performance.now();
      if (remaining <= 0) {
        throw new WaitTimeoutError('gcp', operation, 'WaitTimeout', `operation ${name} not done after ${this.#waitTimeoutMs} ms (status ${op.status ?? 'unknown'})`, { instanceId });
      }
      const timeout = Math.min(remaining, OPERATION_WAIT_CALL_MS);
      try {
        [op] = await this.#call(operation, 'zoneOperations.wait', signal, () => this.zoneOperations.wait({ project: this.project, zone, operation: name }, { timeout }));
      } catch (error) {
        if (error instanceof CancelledError) {
          throw new CancelledError('gcp', operation, 'Cancelled', `stopped waiting for operation ${name}; the request itself was accepted`, { cause: error, instanceId });
        }
        throw error;
      }
      progress?.reporter.report('waiting', progress.state, `operation ${op.status ?? 'unknown'}`, op.progress ?? undefined);
    }
    const first = op.error?.errors?.[0];
    if (first) {
      const message = first.message ?? 'operation failed';
      throw mapOperationError(first.code ?? 'OPERATION_FAILED', message, operation, { httpStatus: op.httpErrorStatusCode ?? undefined, instanceId });
    }
    return op;
  }

  async setTags(id: string, tags: Tags, options: CallOptions = {}): Promise<void> {
    const { zone, name } = this.#parseId(id, 'setTags');
    checkLabels('setTags', tags);
    if (Object.keys(tags).length === 0) return;
    // setLabels replaces the whole map and is guarded by a fingerprint; a concurrent change costs one re-read.
    for (let attempt = 1; ; attempt++) {
      const [current] = await this.#call('setTags', 'instances.get', options.signal, () => this.instances.get({ project: this.project, zone, instance: name }));
      try {
        const [lro] = await this.#call('setTags', 'instances.setLabels', options.signal, () =>
          this.instances.setLabels({
            project: this.project,
            zone,
            instance: name,
            requestId: randomUUID(),
            instancesSetLabelsRequestResource: { labels: { ...current.labels, ...tags }, labelFingerprint: current.labelFingerprint },
          }),
        );
        await this.#waitOperation('setTags', lro.latestResponse as IOperation, undefined, options.signal);
        return;
      } catch (error) {
        if (attempt >= 3 || !(error instanceof ProviderError) || error.httpStatus !== 412) throw error;
      }
    }
  }

  async setType(id: string, type: string, options: CallOptions = {}): Promise<Instance> {
    const { zone, name } = this.#parseId(id, 'setType');
    const [lro] = await this.#call('setType', 'instances.setMachineType', options.signal, () =>
      this.instances.setMachineType({ project: this.project, zone, instance: name, requestId: randomUUID(), instancesSetMachineTypeRequestResource: { machineType: `zones/${zone}/machineTypes/${type}` } }),
    );
    await this.#waitOperation('setType', lro.latestResponse as IOperation, undefined, options.signal);
    return this.get(id, options);
  }

  async listInstanceTypes(query: InstanceTypeQuery = {}, options: CallOptions = {}): Promise<InstanceTypeInfo[]> {
    const zone = query.zone ?? (await this.#zoneOrDefault(options.signal));
    const wanted = query.types && query.types.length > 0 ? new Set(query.types) : undefined;
    return this.#call('listInstanceTypes', 'machineTypes.list', options.signal, async () => {
      const infos: InstanceTypeInfo[] = [];
      for await (const raw of this.machineTypes.listAsync({ project: this.project, zone, maxResults: this.#pageSize }, { autoPaginate: false })) {
        const info = toTypeInfo(raw);
        if (!info) continue;
        this.#types.set(`${zone}/${info.name}`, info);
        if (!wanted || wanted.has(info.name)) infos.push(info);
      }
      return infos;
    });
  }

  async zoneHealth(options: CallOptions = {}): Promise<ZoneHealth[]> {
    const zones = await this.#call('zoneHealth', 'zones.list', options.signal, async () => {
      const found: protos.google.cloud.compute.v1.IZone[] = [];
      for await (const zone of this.zones.listAsync({ project: this.project, maxResults: this.#pageSize }, { autoPaginate: false })) found.push(zone);
      return found;
    });
    return zones
      .filter((z) => lastSegment(z.region) === this.region)
      .map((z) => {
        const providerStatus = z.status ?? 'UNKNOWN';
        const deprecated = z.deprecated?.state;
        const messages = deprecated ? [`zone ${deprecated.toLowerCase()}`] : [];
        return {
          zone: z.name ?? 'unknown',
          region: this.region,
          status: providerStatus === 'UP' ? (deprecated ? 'impaired' : 'available') : 'unavailable',
          providerStatus,
          messages,
        };
      });
  }

  /** Utilisation of the instances asked about, from Cloud Monitoring (monitoring.ts). */
  async usage(query: UsageQuery, options: CallOptions = {}): Promise<UsageSample[]> {
    this.#monitoring ??= import('./monitoring.ts').then(
      ({ MonitoringUsage }) =>
        new MonitoringUsage({
          project: this.project,
          auth: this.instances.auth,
          credentialSource: this.#credentialSource,
          ...(this.#endpoint === undefined ? {} : { endpoint: this.#endpoint }),
          ...(this.#observer === undefined ? {} : { observer: this.#observer }),
        }),
    );
    return (await this.#monitoring).usage(query, options);
  }

  async close(): Promise<void> {
    const monitoring = this.#monitoring;
    await Promise.all([this.instances.close(), this.machineTypes.close(), this.zones.close(), this.zoneOperations.close(), monitoring?.then((m) => m.close())]);
  }

  // --- helpers -----------------------------------------------------------------------

  #parseId(id: string, operation: string): { zone: string; name: string } {
    const match = typeof id === 'string' ? /^([a-z0-9-]+)\/([a-z]([-a-z0-9]{0,61}[a-z0-9])?)$/.exec(id) : null;
    if (!match) throw new InvalidRequestError('gcp', operation, 'INVALID_ARGUMENT', `id: ${JSON.stringify(id)} is not a GCP instance id (ZONE/NAME)`);
    const zone = match[1] ?? '';
    this.#checkZoneInRegion(zone, operation);
    return { zone, name: match[2] ?? '' };
  }

  #checkZoneInRegion(zone: string, operation: string): void {
    if (!zone.startsWith(`${this.region}-`)) {
      throw new InvalidRequestError('gcp', operation, 'INVALID_ARGUMENT', `zone: ${zone} is not in region ${this.region}`);
    }
  }

  async #zoneOrDefault(signal: AbortSignal | undefined): Promise<string> {
    if (this.#defaultZone) return this.#defaultZone;
    this.#regionZones ??= this.zoneHealth({ signal }).then(
      (zones) => zones.map((z) => z.zone).sort(),
      (error: unknown) => {
        this.#regionZones = undefined;
        throw error;
      },
    );
    const [first] = await this.#regionZones;
    if (!first) throw new ProviderError('gcp', 'zones', 'NoZones', `project ${this.project} lists no zones in region ${this.region}`);
    return first;
  }

  async #normalise(raw: IInstance[], signal: AbortSignal | undefined): Promise<Instance[]> {
    await this.#learnTypes(raw, signal);
    return raw.map((i) => this.#toInstance(i));
  }

  /** Sizes of machine types not seen yet (custom types are read from the name); unknown sizes stay null, never fail a listing. */
  async #learnTypes(raw: IInstance[], signal: AbortSignal | undefined): Promise<void> {
    const missing = new Set<string>();
    for (const i of raw) {
      const zone = lastSegment(i.zone);
      const type = lastSegment(i.machineType);
      if (zone && type && !this.#types.has(`${zone}/${type}`) && !CUSTOM_TYPE_RE.test(type)) missing.add(`${zone}/${type}`);
    }
    await Promise.all(
      [...missing].map(async (key) => {
        const [zone = '', machineType = ''] = key.split('/');
        try {
          const [info] = await this.#call('list', 'machineTypes.get', signal, () => this.machineTypes.get({ project: this.project, zone, machineType }));
          this.#types.set(key, toTypeInfo(info));
        } catch (error) {
          if (error instanceof NotFound) this.#types.set(key, null);
          else if (error instanceof CredentialsError || signal?.aborted) throw error;
          // Other failures (throttling) leave the size unknown for now and are retried next time.
        }
      }),
    );
  }

  #toInstance(raw: IInstance): Instance {
    const zone = lastSegment(raw.zone) ?? 'unknown';
    const type = lastSegment(raw.machineType) ?? 'unknown';
    const custom = CUSTOM_TYPE_RE.exec(type);
    const info = custom ? { vcpus: Number(custom[1]), memoryMiB: Number(custom[2]) } : this.#types.get(`${zone}/${type}`);
    const nic = raw.networkInterfaces?.[0];
    const status = raw.status ?? 'UNKNOWN';
    const name = raw.name ?? 'unknown';
    const launched = raw.lastStartTimestamp || raw.creationTimestamp;
    return {
      id: `${zone}/${name}`,
      name,
      provider: 'gcp',
      region: this.region,
      zone,
      type,
      vcpus: info?.vcpus ?? null,
      memoryMiB: info?.memoryMiB ?? null,
      state: STATUS_TO_STATE[status] ?? 'pending',
      providerState: status,
      tags: { ...raw.labels },
      spot: raw.scheduling?.provisioningModel === 'SPOT' || raw.scheduling?.preemptible === true,
      launchTime: launched ? new Date(launched) : null,
      // GCE records the image on the boot disk, not on the instance.
      image: null,
      privateIp: nic?.networkIP || null,
      publicIp: nic?.accessConfigs?.find((a) => a.natIP)?.natIP || null,
    };
  }
}

/** `http://host:port` → the three options the client needs; the client sends a port even when none is given. */

/** The GCE filter for an instance filter; null when nothing can match (only `terminated` asked for). */
function filterExpression(filter: InstanceFilter | undefined): string | null | undefined {
  const clauses: string[] = [];
  if (filter?.states && filter.states.length > 0) {
    const statuses = [...new Set(filter.states.flatMap((s) => STATE_TO_STATUS[s]))];
    if (statuses.length === 0) return null;
    clauses.push(`(${statuses.map((s) => `status = ${quote(s)}`).join(' OR ')})`);
  }
  for (const [key, value] of Object.entries(filter?.tags ?? {})) clauses.push(`(labels.${key} = ${quote(value)})`);
  return clauses.length > 0 ? clauses.join(' AND ') : undefined;
}

function quote(value: string): string {
  return `"${value.replace(/["\\]/g, '\\$&')}"`;
}

function lastSegment(value: string | null | undefined): string | undefined {
  if (!value) return undefined;
  return value.slice(value.lastIndexOf('/') + 1);
}

function toTypeInfo(raw: protos.google.cloud.compute.v1.IMachineType): InstanceTypeInfo | null {
  if (!raw.name || raw.guestCpus == null || raw.memoryMb == null) return null;
  return {
    name: raw.name,
    vcpus: raw.guestCpus,
    memoryMiB: raw.memoryMb,
    architectures: raw.architecture ? [raw.architecture === 'ARM64' ? 'arm64' : raw.architecture.toLowerCase()] : [],
    // Every GCE machine type can run as Spot, except the shared-core ones of old families; the API does not say.
    spot: true,
  };
}
