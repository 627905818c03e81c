/**
 * A fake Amazon EC2 endpoint speaking the real Query API on loopback, so that
 * tests (and `npm run fake-clouds`) drive the real `@aws-sdk/client-ec2` over
 * HTTP: form-encoded `Action=…&Version=2016-11-15` requests in, XML in EC2's
 * own shapes out (`<DescribeInstancesResponse xmlns=…><reservationSet><item>…`),
 * errors as `<Response><Errors><Error><Code>…` with EC2's HTTP statuses.
 *
 * Served: DescribeInstances (MaxResults/NextToken pages, filters
 * instance-state-name, tag:K, tag-key, instance-id, instance-type,
 * availability-zone), RunInstances (TagSpecifications, ClientToken idempotency,
 * spot), Start/Stop/TerminateInstances, CreateTags, DescribeInstanceTypes,
 * DescribeAvailabilityZones, DescribeSpotPriceHistory.
 *
 * Invariants:
 * - State persists across calls for the server's lifetime; instance ids are
 *   never reused; terminated instances stay visible, as on EC2.
 * - State changes complete asynchronously: a call moves the instance to its
 *   transitional state (pending, stopping, shutting-down) and a timer finishes
 *   the transition after `transitionDelayMs`, so clients must poll (waiters).
 * - Signatures are not verified, but a SigV4 Authorization header is required
 *   and its credential scope must name this region: a client without
 *   credentials, or with an access key marked expired, fails as it would on AWS.
 * - Injected faults are answered before any state changes, so a failed call
 *   has no effect (RunInstances capacity errors launch nothing).
 */
import type http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { BodyTooLargeError, listenLoopback, readBody, type LoopbackServer } from './http.ts';
import { CallLog, FaultPlan, TransitionTimers } from './faults.ts';
import { AddressPool, slicePage } from './pagination.ts';
import { document, type XmlNode } from './xml.ts';

export const EC2_API_VERSION = '2016-11-15';
const XMLNS = `http://ec2.amazonaws.com/doc/${EC2_API_VERSION}/`;

export interface Ec2ErrorSpec {
  code: string;
  message: string;
  status: number;
}

/** Shorthands for the faults tests need most; any EC2 error can be given in full. */
export type Ec2Fault = 'throttle' | 'capacity' | 'unavailable' | Ec2ErrorSpec;

export function ec2FaultError(fault: Ec2Fault, action: string): Ec2ErrorSpec {
  switch (fault) {
    case 'throttle':
      return { code: 'RequestLimitExceeded', message: 'Request limit exceeded.', status: 503 };
    case 'capacity':
      return {
        code: 'InsufficientInstanceCapacity',
        message: `We currently do not have sufficient capacity in the Availability Zone you requested (${action}). Our system will be working on provisioning additional capacity.`,
        status: 500,
      };
    case 'unavailable':
      return { code: 'Unavailable', message: 'The server is overloaded and cannot handle the request.', status: 503 };
    default:
      return fault;
  }
}

export interface Ec2TypeSpec {
  vcpus: number;
  threadsPerCore: number;
  memoryMiB: number;
  architecture: 'x86_64' | 'arm64';
  /** On-demand USD/hour in us-east-1, the base of the fake spot prices. */
  onDemandHourly: number;
}

/** Real sizes of a few common types; the fake refuses others as EC2 refuses unknown types. */
export const EC2_INSTANCE_TYPES: Readonly<Record<string, Ec2TypeSpec>> = {
  't3.micro': { vcpus: 2, threadsPerCore: 2, memoryMiB: 1024, architecture: 'x86_64', onDemandHourly: 0.0104 },
  't3.small': { vcpus: 2, threadsPerCore: 2, memoryMiB: 2048, architecture: 'x86_64', onDemandHourly: 0.0208 },
  't3.medium': { vcpus: 2, threadsPerCore: 2, memoryMiB: 4096, architecture: 'x86_64', onDemandHourly: 0.0416 },
  't3.large': { vcpus: 2, threadsPerCore: 2, memoryMiB: 8192, architecture: 'x86_64', onDemandHourly: 0.0832 },
  't3.xlarge': { vcpus: 4, threadsPerCore: 2, memoryMiB: 16384, architecture: 'x86_64', onDemandHourly: 0.1664 },
  'm5.large': { vcpus: 2, threadsPerCore: 2, memoryMiB: 8192, architecture: 'x86_64', onDemandHourly: 0.096 },
  'm5.xlarge': { vcpus: 4, threadsPerCore: 2, memoryMiB: 16384, architecture: 'x86_64', onDemandHourly: 0.192 },
  'm5.2xlarge': { vcpus: 8, threadsPerCore: 2, memoryMiB: 32768, architecture: 'x86_64', onDemandHourly: 0.384 },
  'c5.large': { vcpus: 2, threadsPerCore: 2, memoryMiB: 4096, architecture: 'x86_64', onDemandHourly: 0.085 },
  'c5.xlarge': { vcpus: 4, threadsPerCore: 2, memoryMiB: 8192, architecture: 'x86_64', onDemandHourly: 0.17 },
  'r5.large': { vcpus: 2, threadsPerCore: 2, memoryMiB: 16384, architecture: 'x86_64', onDemandHourly: 0.126 },
  'm6g.large': { vcpus: 2, threadsPerCore: 1, memoryMiB: 8192, architecture: 'arm64', onDemandHourly: 0.077 },
  'c7g.large': { vcpus: 2, threadsPerCore: 1, memoryMiB: 4096, architecture: 'arm64', onDemandHourly: 0.0725 },
};

export type Ec2StateName = 'pending' | 'running' | 'shutting-down' | 'terminated' | 'stopping' | 'stopped';
const STATE_CODES: Readonly<Record<Ec2StateName, number>> = {
  pending: 0,
  running: 16,
  'shutting-down': 32,
  terminated: 48,
  stopping: 64,
  stopped: 80,
};

export interface Ec2InstanceRecord {
  instanceId: string;
  reservationId: string;
  imageId: string;
  instanceType: string;
  zone: string;
  state: Ec2StateName;
  tags: Map<string, string>;
  spot: boolean;
  launchTime: Date;
  privateIp: string;
  publicIp: string | null;
  /** Base64, as sent. */
  userData: string | null;
  clientToken: string | null;
  stateReason: { code: string; message: string } | null;
}

export type Ec2ZoneState = 'available' | 'information' | 'impaired' | 'unavailable';

export interface FakeEc2Options {
  region?: string;
  /** Zone names; default REGION + a, b, c. */
  zones?: readonly string[];
  /** How long pending/stopping/shutting-down last. */
  transitionDelayMs?: number;
  accountId?: string;
  port?: number;
}

class Ec2ApiError extends Error {
  readonly code: string;
  readonly status: number;
  constructor(spec: Ec2ErrorSpec) {
    super(spec.message);
    this.code = spec.code;
    this.status = spec.status;
  }
}

const invalidParameter = (message: string): Ec2ApiError => new Ec2ApiError({ code: 'InvalidParameterValue', message, status: 400 });
const missingParameter = (name: string): Ec2ApiError =>
  new Ec2ApiError({ code: 'MissingParameter', message: `The request must contain the parameter ${name}`, status: 400 });

// ---------------------------------------------------------------------------
// Query parameters: `Filter.1.Value.2=x` becomes a tree walked by name.

class QueryNode {
  value: string | undefined;
  readonly children = new Map<string, QueryNode>();

  static parse(params: URLSearchParams): QueryNode {
    const root = new QueryNode();
    for (const [key, value] of params) {
      let node: QueryNode = root;
      for (const part of key.split('.')) {
        let child = node.children.get(part);
        if (!child) {
          child = new QueryNode();
          node.children.set(part, child);
        }
        node = child;
      }
      node.value = value;
    }
    return root;
  }

  str(name: string): string | undefined {
    return this.children.get(name)?.value;
  }

  int(name: string): number | undefined {
    const raw = this.str(name);
    if (raw === undefined) return undefined;
    const n = Number(raw);
    if (!Number.isInteger(n)) throw invalidParameter(`Value (${raw}) for parameter ${name} is invalid. Expected an integer.`);
    return n;
  }

  /** `Name.1`, `Name.2`, … as nodes in index order. */
  nodes(name: string): QueryNode[] {
    const list = this.children.get(name);
    if (!list) return [];
    return [...list.children.entries()].sort(([a], [b]) => Number(a) - Number(b)).map(([, node]) => node);
  }

  list(name: string): string[] {
    return this.nodes(name).flatMap((n) => (n.value === undefined ? [] : [n.value]));
  }
}

// ---------------------------------------------------------------------------

export class FakeEc2Server {
  readonly region: string;
  readonly zones: readonly string[];
  readonly faults = new FaultPlan<Ec2Fault>();
  readonly calls = new CallLog();
  transitionDelayMs: number;

  readonly #accountId: string;
  readonly #instances = new Map<string, Ec2InstanceRecord>();
  readonly #clientTokens = new Map<string, string>(); // ClientToken -> reservationId
  readonly #zoneStates = new Map<string, { state: Ec2ZoneState; messages: string[] }>();
  readonly #expiredKeys = new Set<string>();
  readonly #timers = new TransitionTimers();
  readonly #addresses = new AddressPool();
  #http: LoopbackServer | undefined;

  private constructor(options: FakeEc2Options) {
    this.region = options.region ?? 'us-east-1';
    this.zones = options.zones ?? ['a', 'b', 'c'].map((s) => `${this.region}${s}`);
    this.transitionDelayMs = options.transitionDelayMs ?? 50;
    this.#accountId = options.accountId ?? '123456789012';
    for (const zone of this.zones) this.#zoneStates.set(zone, { state: 'available', messages: [] });
  }

  static async start(options: FakeEc2Options = {}): Promise<FakeEc2Server> {
    const fake = new FakeEc2Server(options);
    fake.#http = await listenLoopback((req, res) => void fake.#handle(req, res), options.port ?? 0);
    return fake;
  }

  get url(): string {
    if (!this.#http) throw new Error('fake EC2 server not started');
    return this.#http.url;
  }

  async close(): Promise<void> {
    this.#timers.clear();
    await this.#http?.close();
  }

  /** Requests signed with this access key id fail with RequestExpired from now on. */
  expireAccessKey(accessKeyId: string): void {
    this.#expiredKeys.add(accessKeyId);
  }

  setZoneState(zone: string, state: Ec2ZoneState, messages: string[] = []): void {
    if (!this.#zoneStates.has(zone)) throw new Error(`fake EC2: unknown zone ${zone}`);
    this.#zoneStates.set(zone, { state, messages });
  }

  instance(id: string): Ec2InstanceRecord | undefined {
    return this.#instances.get(id);
  }

  instances(): Ec2InstanceRecord[] {
    return [...this.#instances.values()];
  }

  /** Instances that exist at once in `running`, as if launched earlier; for tests that need a fleet. */
  seed(count: number, template: { instanceType?: string; zone?: string; tags?: Record<string, string> } = {}): Ec2InstanceRecord[] {
    const reservationId = this.#newId('r');
    const created: Ec2InstanceRecord[] = [];
    for (let i = 0; i < count; i++) {
      const record = this.#newInstance(reservationId, {
        imageId: 'ami-0seed000000000000',
        instanceType: template.instanceType ?? 't3.micro',
        zone: template.zone ?? this.zones[0] ?? `${this.region}a`,
        tags: new Map(Object.entries(template.tags ?? {})),
        spot: false,
        userData: null,
        clientToken: null,
      });
      record.state = 'running';
      record.publicIp = this.#ip('54.0');
      created.push(record);
    }
    return created;
  }

  // -------------------------------------------------------------------------

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const requestId = randomUUID();
    let action = 'unknown';
    try {
      const raw = req.method === 'POST' ? await readBody(req) : new URL(req.url ?? '/', 'http://x').search.slice(1);
      const params = QueryNode.parse(new URLSearchParams(raw));
      action = params.str('Action') ?? 'unknown';
      this.#authorize(req);
      if (params.str('Action') === undefined) throw missingParameter('Action');
      const version = params.str('Version');
      if (version === undefined) throw missingParameter('Version');
      if (version !== EC2_API_VERSION) throw new Ec2ApiError({ code: 'NoSuchVersion', message: `An invalid or unsupported API version (${version}) was specified.`, status: 400 });
      const fault = this.faults.take(action);
      if (fault !== undefined) throw new Ec2ApiError(ec2FaultError(fault, action));
      const body = this.#dispatch(action, params);
      res.writeHead(200, { 'content-type': 'text/xml;charset=UTF-8' });
      res.end(document(`${action}Response`, { requestId, ...body }, XMLNS));
      this.calls.record({ action, status: 200 });
    } catch (error) {
      const apiError =
        error instanceof Ec2ApiError
          ? error
          : error instanceof BodyTooLargeError
            ? new Ec2ApiError({ code: 'RequestEntityTooLarge', message: error.message, status: 413 })
            : new Ec2ApiError({ code: 'InternalError', message: 'An internal error has occurred', status: 500 });
      res.writeHead(apiError.status, { 'content-type': 'text/xml;charset=UTF-8' });
      res.end(document('Response', { Errors: { Error: { Code: apiError.code, Message: apiError.message } }, RequestID: requestId }));
      this.calls.record({ action, status: apiError.status, code: apiError.code });
    }
  }

  #authorize(req: http.IncomingMessage): void {
    const header = req.headers.authorization;
    if (!header) throw new Ec2ApiError({ code: 'MissingAuthenticationToken', message: 'Request is missing Authentication Token', status: 401 });
    const match = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/\d{8}\/([^/]+)\/ec2\/aws4_request,/.exec(header);
    if (!match) throw new Ec2ApiError({ code: 'AuthFailure', message: 'AWS was not able to validate the provided access credentials', status: 401 });
    const [, accessKeyId = '', scopeRegion = ''] = match;
    if (scopeRegion !== this.region) {
      throw new Ec2ApiError({ code: 'AuthFailure', message: `Credential should be scoped to a valid region, not '${scopeRegion}'.`, status: 401 });
    }
    if (this.#expiredKeys.has(accessKeyId)) throw new Ec2ApiError({ code: 'RequestExpired', message: 'Request has expired.', status: 400 });
  }

  #dispatch(action: string, params: QueryNode): Record<string, XmlNode> {
    switch (action) {
      case 'DescribeInstances':
        return this.#describeInstances(params);
      case 'RunInstances':
        return this.#runInstances(params);
      case 'StartInstances':
        return this.#changeState(params, 'start');
      case 'StopInstances':
        return this.#changeState(params, 'stop');
      case 'TerminateInstances':
        return this.#changeState(params, 'terminate');
      case 'CreateTags':
        return this.#createTags(params);
      case 'ModifyInstanceAttribute':
        return this.#modifyInstanceAttribute(params);
      case 'DescribeInstanceTypes':
        return this.#describeInstanceTypes(params);
      case 'DescribeAvailabilityZones':
        return this.#describeAvailabilityZones(params);
      case 'DescribeSpotPriceHistory':
        return this.#describeSpotPriceHistory(params);
      default:
        throw new Ec2ApiError({ code: 'InvalidAction', message: `The action ${action} is not valid for this web service.`, status: 400 });
    }
  }

  // --- instances -------------------------------------------------------------

  #findInstances(ids: string[]): Ec2InstanceRecord[] {
    const malformed = ids.filter((id) => !/^i-[0-9a-f]{8,17}$/.test(id));
    if (malformed.length > 0) {
      throw new Ec2ApiError({ code: 'InvalidInstanceID.Malformed', message: `Invalid id: "${malformed[0]}"`, status: 400 });
    }
    const missing = ids.filter((id) => !this.#instances.has(id));
    if (missing.length > 0) {
      const list = missing.map((id) => `'${id}'`).join(', ');
      throw new Ec2ApiError({
        code: 'InvalidInstanceID.NotFound',
        message: missing.length === 1 ? `The instance ID ${list} does not exist` : `The instance IDs ${list} do not exist`,
        status: 400,
      });
    }
    return ids.map((id) => this.#instances.get(id) as Ec2InstanceRecord);
  }

  #describeInstances(params: QueryNode): Record<string, XmlNode> {
    const ids = params.list('InstanceId');
    const maxResults = params.int('MaxResults');
    const token = params.str('NextToken');
    if (ids.length > 0 && maxResults !== undefined) {
      throw new Ec2ApiError({ code: 'InvalidParameterCombination', message: 'The parameter instancesSet cannot be used with the parameter maxResults', status: 400 });
    }
    if (maxResults !== undefined && (maxResults < 5 || maxResults > 1000)) {
      throw invalidParameter(`Value ( ${maxResults} ) for parameter maxResults is invalid. Expecting a value greater than 5.`);
    }
    const matchers = params.nodes('Filter').map((f) => instanceFilter(f.str('Name') ?? '', f.list('Value')));
    const candidates = ids.length > 0 ? this.#findInstances(ids) : [...this.#instances.values()];
    const matching = candidates.filter((i) => matchers.every((m) => m(i)));
    const { page, nextToken } = paginate('DescribeInstances', matching, maxResults, token);
    // Instances launched together share a reservation; keep them together within the page.
    const reservations = new Map<string, Ec2InstanceRecord[]>();
    for (const instance of page) reservations.set(instance.reservationId, [...(reservations.get(instance.reservationId) ?? []), instance]);
    return {
      reservationSet: [...reservations.entries()].map(([reservationId, instances]) => this.#reservationXml(reservationId, instances)),
      nextToken,
    };
  }

  #reservationXml(reservationId: string, instances: Ec2InstanceRecord[]): Record<string, XmlNode> {
    return { reservationId, ownerId: this.#accountId, groupSet: [], instancesSet: instances.map((i, index) => instanceXml(i, index)) };
  }

  #runInstances(params: QueryNode): Record<string, XmlNode> {
    const imageId = params.str('ImageId');
    if (!imageId) throw missingParameter('ImageId');
    if (!/^ami-[0-9a-z]+$/.test(imageId)) throw new Ec2ApiError({ code: 'InvalidAMIID.Malformed', message: `Invalid id: "${imageId}" (expecting "ami-...")`, status: 400 });
    const minCount = params.int('MinCount');
    const maxCount = params.int('MaxCount');
    if (minCount === undefined) throw missingParameter('MinCount');
    if (maxCount === undefined) throw missingParameter('MaxCount');
    if (minCount < 1 || maxCount < minCount) throw invalidParameter(`Invalid count: MinCount ${minCount}, MaxCount ${maxCount}`);
    const instanceType = params.str('InstanceType') ?? 'm1.small';
    if (!EC2_INSTANCE_TYPES[instanceType]) throw invalidParameter(`The instance type '${instanceType}' does not exist`);
    const zone = params.children.get('Placement')?.str('AvailabilityZone') ?? this.zones[0] ?? `${this.region}a`;
    if (!this.zones.includes(zone)) throw invalidParameter(`Invalid availability zone: [${zone}]`);
    const zoneState = this.#zoneStates.get(zone)?.state;
    if (zoneState === 'unavailable' || zoneState === 'impaired') {
      throw new Ec2ApiError(ec2FaultError('capacity', `RunInstances in ${zone}`));
    }
    const userData = params.str('UserData') ?? null;
    if (userData !== null && Buffer.from(userData, 'base64').length > 16 * 1024) throw invalidParameter('User data is limited to 16384 bytes');
    const tags = new Map<string, string>();
    for (const spec of params.nodes('TagSpecification')) {
      if (spec.str('ResourceType') !== 'instance') continue;
      for (const tag of spec.nodes('Tag')) {
        const key = tag.str('Key');
        if (!key) throw missingParameter('TagSpecification.N.Tag.N.Key');
        tags.set(key, tag.str('Value') ?? '');
      }
    }
    checkTagSet(tags);
    const clientToken = params.str('ClientToken') ?? null;
    if (clientToken !== null) {
      const existing = this.#clientTokens.get(clientToken);
      if (existing !== undefined) {
        const instances = [...this.#instances.values()].filter((i) => i.reservationId === existing);
        return this.#reservationXml(existing, instances);
      }
    }
    const spot = params.children.get('InstanceMarketOptions')?.str('MarketType') === 'spot';
    const reservationId = this.#newId('r');
    if (clientToken !== null) this.#clientTokens.set(clientToken, reservationId);
    const instances: Ec2InstanceRecord[] = [];
    for (let i = 0; i < maxCount; i++) {
      const record = this.#newInstance(reservationId, { imageId, instanceType, zone, tags: new Map(tags), spot, userData, clientToken });
      this.#transition(record, 'pending', 'running');
      instances.push(record);
    }
    return this.#reservationXml(reservationId, instances);
  }

  #newInstance(
    reservationId: string,
    fields: Pick<Ec2InstanceRecord, 'imageId' | 'instanceType' | 'zone' | 'tags' | 'spot' | 'userData' | 'clientToken'>,
  ): Ec2InstanceRecord {
    const record: Ec2InstanceRecord = {
      instanceId: this.#newId('i'),
      reservationId,
      ...fields,
      state: 'pending',
      launchTime: new Date(),
      privateIp: this.#ip('172.31'),
      publicIp: null,
      stateReason: null,
    };
    this.#instances.set(record.instanceId, record);
    return record;
  }

  #changeState(params: QueryNode, change: 'start' | 'stop' | 'terminate'): Record<string, XmlNode> {
    const ids = params.list('InstanceId');
    if (ids.length === 0) throw missingParameter('InstanceId');
    const instances = this.#findInstances(ids);
    // Validate all before changing any, so a refused call has no effect.
    for (const instance of instances) {
      if (!allowedFrom(change, instance.state)) {
        const verb = change === 'start' ? 'started' : 'stopped';
        throw new Ec2ApiError({ code: 'IncorrectInstanceState', message: `The instance '${instance.instanceId}' is not in a state from which it can be ${verb}.`, status: 400 });
      }
    }
    const changes = instances.map((instance) => {
      const previous = instance.state;
      if (change === 'start' && previous === 'stopped') {
        instance.stateReason = null;
        this.#transition(instance, 'pending', 'running');
      } else if (change === 'stop' && previous === 'running') {
        instance.stateReason = { code: 'Client.UserInitiatedShutdown', message: 'Client.UserInitiatedShutdown: User initiated shutdown' };
        this.#transition(instance, 'stopping', 'stopped');
      } else if (change === 'terminate' && previous !== 'terminated' && previous !== 'shutting-down') {
        instance.stateReason = { code: 'Client.UserInitiatedShutdown', message: 'Client.UserInitiatedShutdown: User initiated shutdown' };
        this.#transition(instance, 'shutting-down', 'terminated');
      }
      return { instanceId: instance.instanceId, currentState: stateXml(instance.state), previousState: stateXml(previous) };
    });
    return { instancesSet: changes };
  }

  /** Moves to `now` at once and to `then` after the delay, as EC2 does behind the API. */
  #transition(instance: Ec2InstanceRecord, now: Ec2StateName, then: Ec2StateName): void {
    instance.state = now;
    if (now === 'stopping' || now === 'shutting-down') instance.publicIp = null;
    this.#timers.after(instance.instanceId, this.transitionDelayMs, () => {
      instance.state = then;
      if (then === 'running') {
        instance.publicIp = this.#ip('54.0');
        instance.launchTime = new Date();
      }
    });
  }

  /** Only the instance type, as EC2: the instance must be stopped and the type one EC2 knows. */
  #modifyInstanceAttribute(params: QueryNode): Record<string, XmlNode> {
    const id = params.str('InstanceId');
    if (id === undefined) throw missingParameter('InstanceId');
    const type = params.children.get('InstanceType')?.str('Value');
    if (type === undefined) throw new Ec2ApiError({ code: 'InvalidParameterCombination', message: 'This fake modifies only InstanceType.Value', status: 400 });
    const [instance] = this.#findInstances([id]);
    if (instance === undefined) throw missingParameter('InstanceId');
    if (!EC2_INSTANCE_TYPES[type]) throw new Ec2ApiError({ code: 'InvalidInstanceAttributeValue', message: `Value (${type}) for parameter instanceType is invalid.`, status: 400 });
    if (instance.state !== 'stopped') {
      throw new Ec2ApiError({ code: 'IncorrectInstanceState', message: `The instance '${instance.instanceId}' is not in the 'stopped' state.`, status: 400 });
    }
    instance.instanceType = type;
    return { return: true };
  }

  #createTags(params: QueryNode): Record<string, XmlNode> {
    const ids = params.list('ResourceId');
    if (ids.length === 0) throw missingParameter('ResourceId');
    const tags = params.nodes('Tag').map((t) => [t.str('Key') ?? '', t.str('Value') ?? ''] as const);
    if (tags.length === 0) throw missingParameter('Tag');
    const instances = this.#findInstances(ids);
    for (const instance of instances) {
      const merged = new Map(instance.tags);
      for (const [key, value] of tags) merged.set(key, value);
      checkTagSet(merged);
    }
    for (const instance of instances) for (const [key, value] of tags) instance.tags.set(key, value);
    return { return: true };
  }

  // --- catalogue ---------------------------------------------------------------

  #describeInstanceTypes(params: QueryNode): Record<string, XmlNode> {
    const wanted = params.list('InstanceType');
    const unknown = wanted.filter((t) => !EC2_INSTANCE_TYPES[t]);
    if (unknown.length > 0) throw new Ec2ApiError({ code: 'InvalidInstanceType', message: `The following supplied instance types do not exist: [${unknown.join(', ')}]`, status: 400 });
    const maxResults = params.int('MaxResults');
    if (maxResults !== undefined && (maxResults < 5 || maxResults > 100)) throw invalidParameter('MaxResults must be between 5 and 100');
    const names = wanted.length > 0 ? wanted : Object.keys(EC2_INSTANCE_TYPES);
    const { page, nextToken } = paginate('DescribeInstanceTypes', names, maxResults, params.str('NextToken'));
    return {
      instanceTypeSet: page.map((name) => {
        const spec = EC2_INSTANCE_TYPES[name] as Ec2TypeSpec;
        return {
          instanceType: name,
          currentGeneration: true,
          supportedUsageClasses: ['on-demand', 'spot'],
          processorInfo: { supportedArchitectures: [spec.architecture] },
          vCpuInfo: { defaultVCpus: spec.vcpus, defaultCores: spec.vcpus / spec.threadsPerCore, defaultThreadsPerCore: spec.threadsPerCore },
          memoryInfo: { sizeInMiB: spec.memoryMiB },
        };
      }),
      nextToken,
    };
  }

  #describeAvailabilityZones(params: QueryNode): Record<string, XmlNode> {
    const wanted = params.list('ZoneName');
    const zones = wanted.length > 0 ? this.zones.filter((z) => wanted.includes(z)) : this.zones;
    return {
      availabilityZoneInfo: zones.map((zone, index) => {
        const health = this.#zoneStates.get(zone) ?? { state: 'available', messages: [] };
        return {
          zoneName: zone,
          zoneId: `${this.region.replace(/-/g, '').slice(0, 4)}-az${index + 1}`,
          zoneState: health.state,
          regionName: this.region,
          zoneType: 'availability-zone',
          optInStatus: 'opt-in-not-required',
          messageSet: health.messages.map((message) => ({ message })),
        };
      }),
    };
  }

  #describeSpotPriceHistory(params: QueryNode): Record<string, XmlNode> {
    const types = params.list('InstanceType');
    const zoneParam = params.str('AvailabilityZone');
    if (zoneParam !== undefined && !this.zones.includes(zoneParam)) throw invalidParameter(`Invalid availability zone: [${zoneParam}]`);
    const zones = zoneParam ? [zoneParam] : this.zones;
    const now = new Date();
    const entries = (types.length > 0 ? types : Object.keys(EC2_INSTANCE_TYPES))
      .filter((t) => EC2_INSTANCE_TYPES[t])
      .flatMap((type) =>
        zones.map((zone) => ({
          availabilityZone: zone,
          instanceType: type,
          productDescription: 'Linux/UNIX',
          // A fixed discount per zone, so prices differ by zone and stay reproducible.
          spotPrice: ((EC2_INSTANCE_TYPES[type] as Ec2TypeSpec).onDemandHourly * (0.3 + 0.05 * this.zones.indexOf(zone))).toFixed(6),
          timestamp: now,
        })),
      );
    const { page, nextToken } = paginate('DescribeSpotPriceHistory', entries, params.int('MaxResults'), params.str('NextToken'));
    return { spotPriceHistorySet: page, nextToken };
  }

  // --- ids -------------------------------------------------------------------

  #newId(prefix: string): string {
    return `${prefix}-${randomBytes(9).toString('hex').slice(0, 17)}`;
  }

  #ip(prefix: string): string {
    return this.#addresses.take(prefix);
  }
}

function allowedFrom(change: 'start' | 'stop' | 'terminate', state: Ec2StateName): boolean {
  switch (change) {
    case 'start':
      return state === 'stopped' || state === 'pending' || state === 'running';
    case 'stop':
      return state === 'running' || state === 'stopping' || state === 'stopped';
    case 'terminate':
      return true;
  }
}

function checkTagSet(tags: Map<string, string>): void {
  if (tags.size > 50) throw new Ec2ApiError({ code: 'TagLimitExceeded', message: 'The maximum number of Tags for a resource has been reached.', status: 400 });
  for (const [key, value] of tags) {
    if (key.toLowerCase().startsWith('aws:')) throw invalidParameter(`Tag keys starting with 'aws:' are reserved for internal use`);
    if (key.length > 128) throw invalidParameter(`Tag key exceeds the maximum length of 128 characters`);
    if (value.length > 256) throw invalidParameter(`Tag value exceeds the maximum length of 256 characters`);
  }
}

function stateXml(state: Ec2StateName): Record<string, XmlNode> {
  return { code: STATE_CODES[state], name: state };
}

function instanceXml(i: Ec2InstanceRecord, launchIndex: number): Record<string, XmlNode> {
  const spec = EC2_INSTANCE_TYPES[i.instanceType];
  return {
    instanceId: i.instanceId,
    imageId: i.imageId,
    instanceState: stateXml(i.state),
    privateDnsName: `ip-${i.privateIp.replace(/\./g, '-')}.ec2.internal`,
    dnsName: i.publicIp ? `ec2-${i.publicIp.replace(/\./g, '-')}.compute-1.amazonaws.com` : '',
    reason: i.stateReason ? `User initiated` : '',
    amiLaunchIndex: launchIndex,
    instanceType: i.instanceType,
    launchTime: i.launchTime,
    placement: { availabilityZone: i.zone, tenancy: 'default' },
    monitoring: { state: 'disabled' },
    privateIpAddress: i.privateIp,
    ipAddress: i.publicIp,
    architecture: spec?.architecture,
    rootDeviceType: 'ebs',
    instanceLifecycle: i.spot ? 'spot' : undefined,
    clientToken: i.clientToken,
    tagSet: i.tags.size > 0 ? [...i.tags].map(([key, value]) => ({ key, value })) : undefined,
    cpuOptions: spec ? { coreCount: spec.vcpus / spec.threadsPerCore, threadsPerCore: spec.threadsPerCore } : undefined,
    stateReason: i.stateReason,
  };
}

type InstanceMatcher = (i: Ec2InstanceRecord) => boolean;

function instanceFilter(name: string, values: string[]): InstanceMatcher {
  if (values.length === 0) throw invalidParameter(`The filter '${name}' requires at least one value`);
  const oneOf = (value: string | undefined): boolean => value !== undefined && values.includes(value);
  if (name.startsWith('tag:')) {
    const key = name.slice(4);
    return (i) => oneOf(i.tags.get(key));
  }
  switch (name) {
    case 'instance-state-name':
      return (i) => oneOf(i.state);
    case 'instance-state-code':
      return (i) => oneOf(String(STATE_CODES[i.state]));
    case 'tag-key':
      return (i) => [...i.tags.keys()].some((k) => values.includes(k));
    case 'instance-id':
      return (i) => oneOf(i.instanceId);
    case 'instance-type':
      return (i) => oneOf(i.instanceType);
    case 'availability-zone':
      return (i) => oneOf(i.zone);
    case 'client-token':
      return (i) => oneOf(i.clientToken ?? undefined);
    default:
      throw invalidParameter(`The filter '${name}' is invalid`);
  }
}

function paginate<T>(scope: string, items: readonly T[], maxResults: number | undefined, token: string | undefined): { page: T[]; nextToken: string | undefined } {
  const result = slicePage(scope, items, maxResults ?? items.length, token);
  if (!result) throw invalidParameter('Unable to parse pagination token');
  return result;
}
