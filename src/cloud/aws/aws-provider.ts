/**
 * The AWS provider: EC2 through `@aws-sdk/client-ec2`, one client per region.
 *
 * Choices, and why:
 * - Retries are the SDK's own, tuned rather than rewritten: `retryMode`
 *   'standard' with `maxAttempts` 5 by default. Standard mode backs off
 *   exponentially with full jitter (throttling errors with a longer base delay)
 *   and stops retrying when its retry-quota bucket runs dry, so a throttled
 *   account does not get a retry storm. 'adaptive' adds a client-side rate
 *   limiter that slows *every* call on the client after a throttle; that suits
 *   a client carrying most of an account's traffic, but here it would let
 *   inventory polling delay an urgent DR terminate, and AWS still documents it
 *   as experimental. It stays available through `retryMode`.
 * - Credentials come from the SDK's standard chain (environment, shared files
 *   and profiles, SSO, web identity, container and instance roles), from the
 *   environment only, or from static keys; errors name the source that was
 *   used.
 * - Every RunInstances carries a ClientToken, so the SDK's retry of a request
 *   that did reach EC2 (a timeout, a 5xx) cannot launch a second instance.
 * - State waits use the SDK waiters (waitUntilInstanceRunning/Stopped/
 *   Terminated) with configured delays and a maximum wait; a middleware watches
 *   the waiters' DescribeInstances responses to report progress, and turns a
 *   credentials failure during a wait into that error rather than a time-out.
 * - Listing pages through `paginateDescribeInstances`; filters go to EC2.
 */
import { randomUUID } from 'node:crypto';
import {
  CreateTagsCommand,
  DescribeAvailabilityZonesCommand,
  DescribeInstancesCommand,
  DescribeInstanceTypesCommand,
  EC2Client,
  ModifyInstanceAttributeCommand,
  paginateDescribeInstances,
  paginateDescribeInstanceTypes,
  paginateDescribeSpotPriceHistory,
  RunInstancesCommand,
  StartInstancesCommand,
  StopInstancesCommand,
  TerminateInstancesCommand,
  waitUntilInstanceRunning,
  waitUntilInstanceStopped,
  waitUntilInstanceTerminated,
  type EC2ClientConfig,
  type Filter,
  type Instance as Ec2Instance,
  type InstanceStateChange,
  type InstanceTypeInfo as Ec2InstanceTypeInfo,
  type Tag,
  type _InstanceType,
} from '@aws-sdk/client-ec2';
import {
  checkCreateRequest,
  IncorrectStateError,
  InvalidRequestError,
  matchesFilter,
  NotFound,
  progressReporter,
  TARGET_STATE,
  throwIfAborted,
  WaitTimeoutError,
  CancelledError,
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
  type SpotPrice,
  type SpotPriceQuery,
  type Tags,
  type ZoneHealth,
  type ZoneStatus,
  ProviderError,
} from '../provider.ts';
import type { UsageQuery, UsageSample } from '../utilisation.ts';
import type { CloudWatchUsage } from './cloudwatch.ts';
import { awsErrorCode, isCredentialsCode, mapAwsError, THROTTLING_CODES } from './errors.ts';
import { checkAwsTags } from './tags.ts';

export type AwsCredentialSource =
  | { source: 'chain'; profile?: string }
  /** Only AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, never files or roles. */
  | { source: 'env' }
  | { source: 'static'; accessKeyId: string; secretAccessKey: string; sessionToken?: string };

export interface WaiterTiming {
  minDelaySeconds: number;
  maxDelaySeconds: number;
  maxWaitSeconds: number;
}

export interface AwsProviderOptions {
  region: string;
  /** Override the EC2 endpoint (VPC endpoint, test server), e.g. http://127.0.0.1:4566. */
  endpoint?: string;
  /** Override the CloudWatch endpoint (utilisation: cloudwatch.ts). */
  cloudwatchEndpoint?: string;
  credentials?: AwsCredentialSource;
  /** Total attempts per call including the first; default 5. */
  maxAttempts?: number;
  retryMode?: 'standard' | 'adaptive';
  waiter?: Partial<WaiterTiming>;
  /** DescribeInstances page size, 5..1000; default 1000. */
  pageSize?: number;
  /** Zone for creates that name none; default: EC2 picks. */
  defaultZone?: string;
  /** Per-attempt HTTP timeouts. */
  requestTimeoutMs?: number;
  connectionTimeoutMs?: number;
  observer?: ApiCallObserver;
}

/** EC2 instances usually reach a new state in 10-60 s; the SDK's own 15 s first poll would double that. */
export const DEFAULT_AWS_WAITER: WaiterTiming = { minDelaySeconds: 5, maxDelaySeconds: 30, maxWaitSeconds: 600 };
export const DEFAULT_AWS_MAX_ATTEMPTS = 5;
const USER_DATA_LIMIT_BYTES = 16 * 1024;

const EC2_TO_STATE: Readonly<Record<string, InstanceState>> = {
  pending: 'pending',
  running: 'running',
  stopping: 'stopping',
  'shutting-down': 'stopping',
  stopped: 'stopped',
  terminated: 'terminated',
};
const STATE_TO_EC2: Readonly<Record<InstanceState, readonly string[]>> = {
  pending: ['pending'],
  running: ['running'],
  stopping: ['stopping', 'shutting-down'],
  stopped: ['stopped'],
  terminated: ['terminated'],
};

const WAITERS = {
  running: waitUntilInstanceRunning,
  stopped: waitUntilInstanceStopped,
  terminated: waitUntilInstanceTerminated,
} as const;

type StateObserver = (observation: { state: InstanceState; providerState: string } | { error: unknown }) => void;

export class AwsProvider implements CloudProvider {
  readonly kind = 'aws' as const;
  readonly region: string;
  readonly description: string;
  readonly client: EC2Client;

  readonly #credentialSource: string;
  readonly #waiter: WaiterTiming;
  readonly #pageSize: number;
  readonly #defaultZone: string | undefined;
  readonly #observer: ApiCallObserver | undefined;
  readonly #types = new Map<string, InstanceTypeInfo | null>();
  readonly #stateObservers = new Map<string, Set<StateObserver>>();
  readonly #options: AwsProviderOptions;
  /** CloudWatch, loaded on the first utilisation query (its SDK costs start-up time). */
  #cloudwatch: Promise<CloudWatchUsage> | null = null;

  constructor(options: AwsProviderOptions) {
    if (!options.region) throw new InvalidRequestError('aws', 'configure', 'InvalidConfig', 'region: required');
    this.region = options.region;
    this.description = `aws ${options.region}${options.endpoint ? ` via ${options.endpoint}` : ''}`;
    this.#waiter = { ...DEFAULT_AWS_WAITER, ...options.waiter };
    this.#pageSize = options.pageSize ?? 1000;
    if (!Number.isInteger(this.#pageSize) || this.#pageSize < 5 || this.#pageSize > 1000) {
      throw new InvalidRequestError('aws', 'configure', 'InvalidConfig', `pageSize: must be an integer from 5 to 1000, got ${options.pageSize}`);
    }
    this.#defaultZone = options.defaultZone;
    this.#observer = options.observer;
    this.#options = options;
    const credentials = options.credentials ?? { source: 'chain' };
    this.#credentialSource = describeCredentialSource(credentials);

    const config: EC2ClientConfig = {
      region: options.region,
      maxAttempts: options.maxAttempts ?? DEFAULT_AWS_MAX_ATTEMPTS,
      retryMode: options.retryMode ?? 'standard',
      requestHandler: { requestTimeout: options.requestTimeoutMs ?? 30_000, connectionTimeout: options.connectionTimeoutMs ?? 5_000 },
    };
    if (options.endpoint) config.endpoint = options.endpoint;
    if (credentials.source === 'static') {
      config.credentials = { accessKeyId: credentials.accessKeyId, secretAccessKey: credentials.secretAccessKey, sessionToken: credentials.sessionToken };
    } else if (credentials.source === 'env') {
      config.credentials = credentialsFromEnv;
    } else if (credentials.profile) {
      config.profile = credentials.profile;
    }
    this.client = new EC2Client(config);
    this.#installMiddleware();
  }

  // --- middleware: observation of every call ------------------------------------

  #installMiddleware(): void {
    const throttledAttempts = new WeakMap<object, number>();
    // Outermost: one event per call, after the SDK's retries.
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        const started = performance.now();
        const call = (context.commandName ?? 'Unknown').replace(/Command$/, '');
        try {
          const result = await next(args);
          const output = result.output as { $metadata?: { attempts?: number } };
          this.#emitCall(call, true, undefined, started, output.$metadata?.attempts ?? 1, throttledAttempts.get(context) ?? 0);
          if (call === 'DescribeInstances') this.#notifyStates(result.output as { Reservations?: { Instances?: Ec2Instance[] }[] });
          return result;
        } catch (error) {
          const meta = (error as { $metadata?: { attempts?: number } }).$metadata;
          this.#emitCall(call, false, awsErrorCode(error), started, meta?.attempts ?? 1, throttledAttempts.get(context) ?? 0);
          if (call === 'DescribeInstances') this.#notifyError(args.input as { InstanceIds?: string[] }, error);
          throw error;
        }
      },
      { step: 'initialize', name: 'dwcpObserveCall', priority: 'high' },
    );
    // Runs once per attempt, inside the retry loop, so throttled retries are counted.
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        try {
          return await next(args);
        } catch (error) {
          if (THROTTLING_CODES.has(awsErrorCode(error))) throttledAttempts.set(context, (throttledAttempts.get(context) ?? 0) + 1);
          throw error;
        }
      },
      // Outside the deserializer (which turns error responses into errors), inside the retry loop.
      { step: 'deserialize', name: 'dwcpCountThrottles', priority: 'high' },
    );
  }

  #emitCall(call: string, ok: boolean, code: string | undefined, started: number, attempts: number, throttled: number): void {
    if (!this.#observer) return;
    const event = { provider: 'aws' as const, call, ok, durationMs: performance.now() - started, attempts, throttledAttempts: throttled };
    this.#observer(code === undefined ? event : { ...event, code });
  }

  #notifyStates(output: { Reservations?: { Instances?: Ec2Instance[] }[] }): void {
    if (this.#stateObservers.size === 0) return;
    for (const reservation of output.Reservations ?? []) {
      for (const instance of reservation.Instances ?? []) {
        const observers = this.#stateObservers.get(instance.InstanceId ?? '');
        const providerState = instance.State?.Name ?? 'unknown';
        for (const observe of observers ?? []) observe({ state: EC2_TO_STATE[providerState] ?? 'pending', providerState });
      }
    }
  }

  #notifyError(input: { InstanceIds?: string[] }, error: unknown): void {
    for (const id of input.InstanceIds ?? []) for (const observe of this.#stateObservers.get(id) ?? []) observe({ error });
  }

  #observeStates(id: string, observer: StateObserver): () => void {
    const set = this.#stateObservers.get(id) ?? new Set<StateObserver>();
    set.add(observer);
    this.#stateObservers.set(id, set);
    return () => {
      set.delete(observer);
      if (set.size === 0) this.#stateObservers.delete(id);
    };
  }

  // --- calls ---------------------------------------------------------------------

  async #call<T>(operation: string, signal: AbortSignal | undefined, work: () => Promise<T>): Promise<T> {
    throwIfAborted(signal, 'aws', operation);
    try {
      return await work();
    } catch (error) {
      throw mapAwsError(error, operation, this.#credentialSource);
    }
  }

  async list(filter?: InstanceFilter, options: CallOptions = {}): Promise<Instance[]> {
    return this.#call('list', options.signal, async () => {
      const filters: Filter[] = [];
      if (filter?.states && filter.states.length > 0) {
        filters.push({ Name: 'instance-state-name', Values: [...new Set(filter.states.flatMap((s) => STATE_TO_EC2[s]))] });
      }
      for (const [key, value] of Object.entries(filter?.tags ?? {})) filters.push({ Name: `tag:${key}`, Values: [value] });
      const raw: Ec2Instance[] = [];
      const pages = paginateDescribeInstances(
        { client: this.client, pageSize: this.#pageSize },
        filters.length > 0 ? { Filters: filters } : {},
        { abortSignal: options.signal },
      );
      for await (const page of pages) {
        for (const reservation of page.Reservations ?? []) raw.push(...(reservation.Instances ?? []));
        throwIfAborted(options.signal, 'aws', 'list');
      }
      const instances = await this.#normalise(raw, options.signal);
      // EC2 filtered already; this re-check guards the contract, not the common case.
      return instances.filter((i) => matchesFilter(i, filter));
    });
  }

  async get(id: string, options: CallOptions = {}): Promise<Instance> {
    checkInstanceId(id, 'get');
    return this.#call('get', options.signal, async () => {
      const out = await this.client.send(new DescribeInstancesCommand({ InstanceIds: [id] }), { abortSignal: options.signal });
      const raw = (out.Reservations ?? []).flatMap((r) => r.Instances ?? []);
      const instances = await this.#normalise(raw, options.signal);
      const found = instances.find((i) => i.id === id);
      if (!found) throw new NotFound('aws', 'get', 'InvalidInstanceID.NotFound', `The instance ID '${id}' does not exist`);
      return found;
    });
  }

  async create(request: CreateInstanceRequest, options: LongOperationOptions = {}): Promise<Instance> {
    checkCreateRequest('aws', request);
    const tags: Record<string, string> = { Name: request.name, ...request.tags };
    checkAwsTags('create', tags);
    const userData = request.userData === undefined ? undefined : Buffer.from(request.userData, 'utf8');
    if (userData && userData.length > USER_DATA_LIMIT_BYTES) {
      throw new InvalidRequestError('aws', 'create', 'InvalidParameterValue', `userData: ${userData.length} bytes, over EC2's limit of ${USER_DATA_LIMIT_BYTES}`);
    }
    const progress = progressReporter('create', '', options.onProgress);
    const zone = request.zone ?? this.#defaultZone;
    const accepted = await this.#call('create', options.signal, async () => {
      const out = await this.client.send(
        new RunInstancesCommand({
          ImageId: request.image,
          InstanceType: request.type as _InstanceType,
          MinCount: 1,
          MaxCount: 1,
          ClientToken: request.idempotencyToken ?? randomUUID(),
          Placement: zone ? { AvailabilityZone: zone } : undefined,
          UserData: userData?.toString('base64'),
          InstanceMarketOptions: request.spot ? { MarketType: 'spot', SpotOptions: { SpotInstanceType: 'one-time', InstanceInterruptionBehavior: 'terminate' } } : undefined,
          TagSpecifications: [{ ResourceType: 'instance', Tags: toAwsTags(tags) }],
        }),
        { abortSignal: options.signal },
      );
      const instance = out.Instances?.[0];
      if (!instance?.InstanceId) throw new ProviderError('aws', 'create', 'EmptyResponse', 'RunInstances returned no instance');
      return instance;
    });
    const id = accepted.InstanceId as string;
    progress.setInstanceId(id);
    const providerState = accepted.State?.Name ?? 'pending';
    progress.report('accepted', EC2_TO_STATE[providerState] ?? 'pending', providerState);
    return this.#finish('create', id, progress, options);
  }

  start(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#changeState('start', id, options, (ids) => this.client.send(new StartInstancesCommand({ InstanceIds: ids }), { abortSignal: options.signal }).then((o) => o.StartingInstances));
  }

  stop(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#changeState('stop', id, options, (ids) => this.client.send(new StopInstancesCommand({ InstanceIds: ids }), { abortSignal: options.signal }).then((o) => o.StoppingInstances));
  }

  terminate(id: string, options: LongOperationOptions = {}): Promise<Instance> {
    return this.#changeState('terminate', id, options, (ids) =>
      this.client.send(new TerminateInstancesCommand({ InstanceIds: ids }), { abortSignal: options.signal }).then((o) => o.TerminatingInstances),
    );
  }

  async #changeState(
    operation: LongOperation,
    id: string,
    options: LongOperationOptions,
    send: (ids: string[]) => Promise<InstanceStateChange[] | undefined>,
  ): Promise<Instance> {
    checkInstanceId(id, operation);
    const progress = progressReporter(operation, id, options.onProgress);
    const changes = await this.#call(operation, options.signal, () => send([id]));
    const providerState = changes?.find((c) => c.InstanceId === id)?.CurrentState?.Name ?? 'unknown';
    progress.report('accepted', EC2_TO_STATE[providerState] ?? 'pending', providerState);
    return this.#finish(operation, id, progress, options);
  }

  /** Waits (unless told not to) for the operation's target state, then returns the fresh record. */
  async #finish(operation: LongOperation, id: string, progress: ProgressReporter, options: LongOperationOptions): Promise<Instance> {
    if (options.wait !== false) await this.#waitFor(operation, id, progress, options.signal);
    const instance = await this.get(id, { signal: options.signal });
    if (options.wait !== false) progress.report('done', instance.state, instance.providerState);
    return instance;
  }

  async #waitFor(operation: LongOperation, id: string, progress: ProgressReporter, signal: AbortSignal | undefined): Promise<void> {
    const target = TARGET_STATE[operation];
    if (target === 'pending' || target === 'stopping') throw new Error(`no waiter for ${target}`);
    const stopWaiting = new AbortController();
    const waitSignal = signal ? AbortSignal.any([signal, stopWaiting.signal]) : stopWaiting.signal;
    let lastState = 'unknown';
    let fatal: unknown;
    const unobserve = this.#observeStates(id, (observation) => {
      if ('error' in observation) {
        // Waiters retry every error until they time out; a credentials failure will not heal, so stop now.
        if (isCredentialsCode(awsErrorCode(observation.error))) {
          fatal = observation.error;
          stopWaiting.abort();
        }
        return;
      }
      lastState = observation.providerState;
      progress.report('waiting', observation.state, observation.providerState);
    });
    try {
      await WAITERS[target](
        {
          client: this.client,
          minDelay: this.#waiter.minDelaySeconds,
          maxDelay: this.#waiter.maxDelaySeconds,
          maxWaitTime: this.#waiter.maxWaitSeconds,
          abortSignal: waitSignal,
        },
        { InstanceIds: [id] },
      );
    } catch (error) {
      if (fatal !== undefined) throw mapAwsError(fatal, operation, this.#credentialSource, id);
      const name = (error as { name?: string }).name;
      const options = { cause: error, instanceId: id };
      if (name === 'AbortError' || signal?.aborted) {
        throw new CancelledError('aws', operation, 'Cancelled', `stopped waiting for ${id} to be ${target} (last seen ${lastState}); the request itself was accepted`, options);
      }
      if (name === 'TimeoutError') {
        throw new WaitTimeoutError('aws', operation, 'WaitTimeout', `${id} not ${target} after ${this.#waiter.maxWaitSeconds} s (last seen ${lastState})`, options);
      }
      throw new IncorrectStateError('aws', operation, 'UnexpectedState', `${id} reached state ${lastState} while waiting for ${target}`, options);
    } finally {
      unobserve();
    }
  }

  async setTags(id: string, tags: Tags, options: CallOptions = {}): Promise<void> {
    checkInstanceId(id, 'setTags');
    checkAwsTags('setTags', tags);
    if (Object.keys(tags).length === 0) return;
    await this.#call('setTags', options.signal, () => this.client.send(new CreateTagsCommand({ Resources: [id], Tags: toAwsTags(tags) }), { abortSignal: options.signal }));
  }

  async setType(id: string, type: string, options: CallOptions = {}): Promise<Instance> {
    checkInstanceId(id, 'setType');
    await this.#call('setType', options.signal, () => this.client.send(new ModifyInstanceAttributeCommand({ InstanceId: id, InstanceType: { Value: type } }), { abortSignal: options.signal }));
    return this.get(id, options);
  }

  async listInstanceTypes(query: InstanceTypeQuery = {}, options: CallOptions = {}): Promise<InstanceTypeInfo[]> {
    return this.#call('listInstanceTypes', options.signal, async () => {
      const infos: InstanceTypeInfo[] = [];
      const input = query.types && query.types.length > 0 ? { InstanceTypes: query.types.map((t) => t as _InstanceType) } : {};
      for await (const page of paginateDescribeInstanceTypes({ client: this.client, pageSize: 100 }, input, { abortSignal: options.signal })) {
        for (const raw of page.InstanceTypes ?? []) {
          const info = toTypeInfo(raw);
          if (info) {
            this.#types.set(info.name, info);
            infos.push(info);
          }
        }
      }
      return infos;
    });
  }

  async zoneHealth(options: CallOptions = {}): Promise<ZoneHealth[]> {
    return this.#call('zoneHealth', options.signal, async () => {
      const out = await this.client.send(new DescribeAvailabilityZonesCommand({}), { abortSignal: options.signal });
      return (out.AvailabilityZones ?? []).map((zone) => {
        const providerStatus = zone.State ?? 'unknown';
        const status: ZoneStatus = providerStatus === 'available' || providerStatus === 'information' ? 'available' : providerStatus === 'impaired' || providerStatus === 'constrained' ? 'impaired' : 'unavailable';
        return {
          zone: zone.ZoneName ?? 'unknown',
          region: zone.RegionName ?? this.region,
          status,
          providerStatus,
          messages: (zone.Messages ?? []).flatMap((m) => (m.Message ? [m.Message] : [])),
        };
      });
    });
  }

  async spotPrices(query: SpotPriceQuery, options: CallOptions = {}): Promise<SpotPrice[]> {
    return this.#call('spotPrices', options.signal, async () => {
      const latest = new Map<string, SpotPrice>();
      const zones = query.zones && query.zones.length > 0 ? query.zones : [undefined];
      for (const zone of zones) {
        // StartTime = now asks for the price in effect now: one entry per type and zone.
        const input = { InstanceTypes: query.types.map((t) => t as _InstanceType), ProductDescriptions: ['Linux/UNIX'], StartTime: new Date(), AvailabilityZone: zone };
        for await (const page of paginateDescribeSpotPriceHistory({ client: this.client, pageSize: 1000 }, input, { abortSignal: options.signal })) {
          for (const entry of page.SpotPriceHistory ?? []) {
            if (!entry.InstanceType || !entry.AvailabilityZone || entry.SpotPrice === undefined) continue;
            const price: SpotPrice = { type: entry.InstanceType, zone: entry.AvailabilityZone, pricePerHour: Number(entry.SpotPrice), timestamp: entry.Timestamp ?? new Date(0) };
            const key = `${price.type}/${price.zone}`;
            const seen = latest.get(key);
            if (!seen || seen.timestamp < price.timestamp) latest.set(key, price);
          }
        }
      }
      return [...latest.values()];
    });
  }

  /** Utilisation of the instances asked about, from CloudWatch (cloudwatch.ts). */
  async usage(query: UsageQuery, options: CallOptions = {}): Promise<UsageSample[]> {
    this.#cloudwatch ??= import('./cloudwatch.ts').then(
      ({ CloudWatchUsage }) =>
        new CloudWatchUsage({
          region: this.region,
          credentials: this.client.config.credentials,
          credentialSource: this.#credentialSource,
          maxAttempts: this.#options.maxAttempts ?? DEFAULT_AWS_MAX_ATTEMPTS,
          ...(this.#options.cloudwatchEndpoint === undefined ? {} : { endpoint: this.#options.cloudwatchEndpoint }),
          ...(this.#observer === undefined ? {} : { observer: this.#observer }),
        }),
    );
    return (await this.#cloudwatch).usage(query, options);
  }

  async close(): Promise<void> {
    void this.#cloudwatch?.then((c) => c.close());
    this.client.destroy();
  }

  // --- normalisation --------------------------------------------------------------

  async #normalise(raw: Ec2Instance[], signal: AbortSignal | undefined): Promise<Instance[]> {
    await this.#learnTypes(raw.flatMap((i) => (i.InstanceType ? [i.InstanceType] : [])), signal);
    return raw.map((i) => this.#toInstance(i));
  }

  /** Sizes of types not seen yet, in one call; an unknown or retired type is remembered as unknown, not fatal. */
  async #learnTypes(types: string[], signal: AbortSignal | undefined): Promise<void> {
    const unknown = [...new Set(types)].filter((t) => !this.#types.has(t));
    if (unknown.length === 0) return;
    try {
      const out = await this.client.send(new DescribeInstanceTypesCommand({ InstanceTypes: unknown.map((t) => t as _InstanceType) }), { abortSignal: signal });
      for (const raw of out.InstanceTypes ?? []) {
        const info = toTypeInfo(raw);
        if (info) this.#types.set(info.name, info);
      }
      for (const t of unknown) if (!this.#types.has(t)) this.#types.set(t, null);
    } catch (error) {
      const code = awsErrorCode(error);
      if (code === 'InvalidInstanceType') {
        for (const t of unknown) this.#types.set(t, null);
        return;
      }
      if (code === 'AbortError' || isCredentialsCode(code)) throw error;
      // Sizes are an enrichment: a throttled catalogue call must not fail the inventory.
    }
  }

  #toInstance(raw: Ec2Instance): Instance {
    const tags = fromAwsTags(raw.Tags);
    const providerState = raw.State?.Name ?? 'unknown';
    const type = raw.InstanceType ?? 'unknown';
    const info = this.#types.get(type);
    const cpu = raw.CpuOptions;
    const vcpusFromCpu = cpu?.CoreCount !== undefined && cpu.ThreadsPerCore !== undefined ? cpu.CoreCount * cpu.ThreadsPerCore : null;
    return {
      id: raw.InstanceId ?? 'unknown',
      name: tags.Name ?? raw.InstanceId ?? 'unknown',
      provider: 'aws',
      region: this.region,
      zone: raw.Placement?.AvailabilityZone ?? 'unknown',
      type,
      vcpus: info?.vcpus ?? vcpusFromCpu,
      memoryMiB: info?.memoryMiB ?? null,
      state: EC2_TO_STATE[providerState] ?? 'pending',
      providerState,
      tags,
      spot: raw.InstanceLifecycle === 'spot',
      launchTime: raw.LaunchTime ?? null,
      image: raw.ImageId ?? null,
      privateIp: raw.PrivateIpAddress || null,
      publicIp: raw.PublicIpAddress || null,
    };
  }
}

function describeCredentialSource(credentials: AwsCredentialSource): string {
  if (credentials.source === 'static') return `static access key ${credentials.accessKeyId.slice(0, 4)}… from the dwcp config`;
  if (credentials.source === 'env') return 'the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)';
  const profile = credentials.profile ?? process.env.AWS_PROFILE ?? 'default';
  return `the AWS default credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile '${profile}' in ~/.aws/credentials and ~/.aws/config, SSO, web identity, container or instance role)`;
}

/**
 * The `env` source. Read when the SDK first needs credentials, not at
 * construction, and failing as the SDK's own providers fail (a
 * CredentialsProviderError), so the error mapping names the source.
 */
async function credentialsFromEnv(): Promise<{ accessKeyId: string; secretAccessKey: string; sessionToken?: string }> {
  const accessKeyId = process.env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = process.env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    const error = new Error('AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set');
    error.name = 'CredentialsProviderError';
    throw error;
  }
  const sessionToken = process.env.AWS_SESSION_TOKEN;
  return sessionToken ? { accessKeyId, secretAccessKey, sessionToken } : { accessKeyId, secretAccessKey };
}

function checkInstanceId(id: string, operation: string): void {
  if (typeof id !== 'string' || !/^i-[0-9a-f]{8,17}$/.test(id)) {
    throw new InvalidRequestError('aws', operation, 'InvalidInstanceID.Malformed', `id: ${JSON.stringify(id)} is not an EC2 instance id (i- and 8 or 17 hex digits)`);
  }
}

function toAwsTags(tags: Tags): Tag[] {
  return Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
}

function fromAwsTags(tags: Tag[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const tag of tags ?? []) if (tag.Key !== undefined) out[tag.Key] = tag.Value ?? '';
  return out;
}

function toTypeInfo(raw: Ec2InstanceTypeInfo): InstanceTypeInfo | null {
  const vcpus = raw.VCpuInfo?.DefaultVCpus;
  const memoryMiB = raw.MemoryInfo?.SizeInMiB;
  if (!raw.InstanceType || vcpus === undefined || memoryMiB === undefined) return null;
  return {
    name: raw.InstanceType,
    vcpus,
    memoryMiB,
    architectures: raw.ProcessorInfo?.SupportedArchitectures ?? [],
    spot: raw.SupportedUsageClasses?.includes('spot') ?? false,
  };
}
