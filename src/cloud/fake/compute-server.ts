/**
 * A fake Google Compute Engine endpoint speaking the real REST API (JSON over
 * HTTP/1.1, the transport `@google-cloud/compute` uses with `fallback: 'rest'`)
 * on loopback, for tests and `npm run fake-clouds`.
 *
 * Served under /compute/v1/projects/{project}: instances list/aggregatedList/
 * get/insert/start/stop/delete/setLabels, machineTypes list/get, zones
 * list/get, zoneOperations get/wait; plus POST /v1/token, a Security Token
 * Service exchange, so that real `external_account` credentials (a JSON file
 * whose token_url points here) can authenticate through the real auth library.
 *
 * Invariants:
 * - Mutations return a zone Operation at once and finish it asynchronously
 *   after `transitionDelayMs`; clients poll zoneOperations get/wait, which
 *   long-polls until the operation is DONE or `operationWaitTimeoutMs` passes
 *   (the real API returns after at most two minutes, DONE or not).
 * - Capacity failures are asynchronous, as on GCE: the insert is accepted and
 *   its operation ends DONE with ZONE_RESOURCE_POOL_EXHAUSTED; the instance
 *   disappears.
 * - A repeated `requestId` returns the original operation (GCE's idempotency).
 * - Every call except the token exchange needs `Authorization: Bearer …`;
 *   after `revokeCredentials()` tokens and the exchange are refused.
 * - Errors use Google's JSON error format ({"error":{"code","message","errors":[{reason}]}})
 *   with 400/401/404/409/412/429/503.
 */
import type http from 'node:http';
import { randomBytes, randomUUID } from 'node:crypto';
import { BodyTooLargeError, listenLoopback, readBody, type LoopbackServer } from './http.ts';
import { CallLog, FaultPlan, TransitionTimers } from './faults.ts';
import { AddressPool, slicePage } from './pagination.ts';

/** selfLinks name the real API host, as GCE's do; clients only parse their last segments. */
const LINK_BASE = 'https://www.googleapis.com/compute/v1';

export interface ComputeErrorSpec {
  status: number;
  reason: string;
  message: string;
  /** Google's canonical status name, sent by newer frontends (e.g. RESOURCE_EXHAUSTED). */
  grpcStatus?: string;
}

/**
 * 'rateLimit' (429) and 'unavailable' (503) fail the HTTP call; 'capacity'
 * (for insert and start) is accepted and fails the operation asynchronously.
 */
export type ComputeFault = 'rateLimit' | 'unavailable' | 'capacity' | ComputeErrorSpec;

export type ComputeMethod =
  | 'instances.list'
  | 'instances.aggregatedList'
  | 'instances.get'
  | 'instances.insert'
  | 'instances.start'
  | 'instances.stop'
  | 'instances.delete'
  | 'instances.setLabels'
  | 'instances.setMachineType'
  | 'machineTypes.list'
  | 'machineTypes.get'
  | 'zones.list'
  | 'zones.get'
  | 'zoneOperations.get'
  | 'zoneOperations.wait'
  | 'sts.token';

export interface MachineTypeSpec {
  guestCpus: number;
  memoryMb: number;
  isSharedCpu: boolean;
  architecture: 'X86_64' | 'ARM64';
}

/** Real sizes of common machine types. */
export const GCE_MACHINE_TYPES: Readonly<Record<string, MachineTypeSpec>> = {
  'e2-micro': { guestCpus: 2, memoryMb: 1024, isSharedCpu: true, architecture: 'X86_64' },
  'e2-small': { guestCpus: 2, memoryMb: 2048, isSharedCpu: true, architecture: 'X86_64' },
  'e2-medium': { guestCpus: 2, memoryMb: 4096, isSharedCpu: true, architecture: 'X86_64' },
  'e2-standard-2': { guestCpus: 2, memoryMb: 8192, isSharedCpu: false, architecture: 'X86_64' },
  'e2-standard-4': { guestCpus: 4, memoryMb: 16384, isSharedCpu: false, architecture: 'X86_64' },
  'n2-standard-2': { guestCpus: 2, memoryMb: 8192, isSharedCpu: false, architecture: 'X86_64' },
  'n2-standard-4': { guestCpus: 4, memoryMb: 16384, isSharedCpu: false, architecture: 'X86_64' },
  'n2-standard-8': { guestCpus: 8, memoryMb: 32768, isSharedCpu: false, architecture: 'X86_64' },
  'c3-standard-4': { guestCpus: 4, memoryMb: 16384, isSharedCpu: false, architecture: 'X86_64' },
  't2a-standard-1': { guestCpus: 1, memoryMb: 4096, isSharedCpu: false, architecture: 'ARM64' },
};

export type GceStatus = 'PROVISIONING' | 'STAGING' | 'RUNNING' | 'STOPPING' | 'TERMINATED' | 'SUSPENDED';

export interface GceInstanceRecord {
  id: string;
  name: string;
  zone: string;
  machineType: string;
  status: GceStatus;
  labels: Record<string, string>;
  labelFingerprint: string;
  spot: boolean;
  sourceImage: string;
  metadata: { key: string; value: string }[];
  networkIP: string;
  natIP: string | null;
  creationTimestamp: Date;
  lastStartTimestamp: Date | null;
}

interface OperationRecord {
  id: string;
  name: string;
  zone: string;
  operationType: string;
  targetName: string;
  targetId: string;
  status: 'PENDING' | 'RUNNING' | 'DONE';
  progress: number;
  insertTime: Date;
  startTime: Date;
  endTime: Date | null;
  error: { code: string; message: string } | null;
  httpErrorStatusCode: number | null;
  waiters: (() => void)[];
}

export interface FakeComputeOptions {
  project?: string;
  region?: string;
  /** Zone names; default REGION-a, -b, -c, -f. */
  zones?: readonly string[];
  transitionDelayMs?: number;
  /** How long zoneOperations.wait holds a request before returning a not-yet-DONE operation. */
  operationWaitTimeoutMs?: number;
  port?: number;
}

class ComputeApiError extends Error {
  readonly spec: ComputeErrorSpec;
  constructor(spec: ComputeErrorSpec) {
    super(spec.message);
    this.spec = spec;
  }
}

export function computeFaultError(fault: Exclude<ComputeFault, 'capacity'>): ComputeErrorSpec {
  switch (fault) {
    case 'rateLimit':
      return { status: 429, reason: 'rateLimitExceeded', message: "Quota exceeded for quota metric 'Read requests' and limit 'Read requests per minute per region'", grpcStatus: 'RESOURCE_EXHAUSTED' };
    case 'unavailable':
      return { status: 503, reason: 'backendError', message: 'Internal error. Please try again or contact Google Support.', grpcStatus: 'UNAVAILABLE' };
    default:
      return fault;
  }
}

const notFound = (resource: string): ComputeApiError => new ComputeApiError({ status: 404, reason: 'notFound', message: `The resource '${resource}' was not found` });
const invalid = (field: string, why: string): ComputeApiError =>
  new ComputeApiError({ status: 400, reason: 'invalid', message: `Invalid value for field '${field}': ${why}` });

const NAME_RE = /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;
const LABEL_KEY_RE = /^[a-z][a-z0-9_-]{0,62}$/;
const LABEL_VALUE_RE = /^[a-z0-9_-]{0,63}$/;

const CAPACITY_ERROR = (zone: string, project: string) => ({
  code: 'ZONE_RESOURCE_POOL_EXHAUSTED',
  message: `The zone 'projects/${project}/zones/${zone}' does not have enough resources available to fulfill the request.  Try a different zone, or try again later.`,
});

type Json = Record<string, unknown>;

interface Route {
  method: string;
  pattern: RegExp;
  name: ComputeMethod;
  handle: (params: string[], url: URL, body: Json) => Json;
}

export class FakeComputeServer {
  readonly project: string;
  readonly region: string;
  readonly zones: readonly string[];
  readonly faults = new FaultPlan<ComputeFault>();
  readonly calls = new CallLog();
  transitionDelayMs: number;
  operationWaitTimeoutMs: number;

  readonly #instances = new Map<string, GceInstanceRecord>(); // key zone/name
  readonly #operations = new Map<string, OperationRecord>(); // key zone/name
  readonly #requestIds = new Map<string, string>(); // requestId -> operation key
  readonly #zoneStatus = new Map<string, 'UP' | 'DOWN'>();
  readonly #timers = new TransitionTimers();
  readonly #routes: Route[];
  #credentialsRevoked = false;
  #validTokens = new Set<string>();
  #http: LoopbackServer | undefined;
  #nextId = 1000n;
  readonly #addresses = new AddressPool();

  private constructor(options: FakeComputeOptions) {
    this.project = options.project ?? 'dwcp-test';
    this.region = options.region ?? 'us-central1';
    this.zones = options.zones ?? ['a', 'b', 'c', 'f'].map((s) => `${this.region}-${s}`);
    this.transitionDelayMs = options.transitionDelayMs ?? 50;
    this.operationWaitTimeoutMs = options.operationWaitTimeoutMs ?? 2_000;
    for (const zone of this.zones) this.#zoneStatus.set(zone, 'UP');
    this.#routes = this.#buildRoutes();
  }

  static async start(options: FakeComputeOptions = {}): Promise<FakeComputeServer> {
    const fake = new FakeComputeServer(options);
    fake.#http = await listenLoopback((req, res) => void fake.#handle(req, res), options.port ?? 0);
    return fake;
  }

  get url(): string {
    if (!this.#http) throw new Error('fake Compute server not started');
    return this.#http.url;
  }

  /** The STS endpoint to put in an external_account credentials file. */
  get tokenUrl(): string {
    return `${this.url}/v1/token`;
  }

  async close(): Promise<void> {
    this.#timers.clear();
    for (const op of this.#operations.values()) this.#wake(op);
    await this.#http?.close();
  }

  /** From now on, every issued token and every token exchange is refused, as for a deleted or expired identity. */
  revokeCredentials(): void {
    this.#credentialsRevoked = true;
    this.#validTokens.clear();
  }

  setZoneStatus(zone: string, status: 'UP' | 'DOWN'): void {
    if (!this.#zoneStatus.has(zone)) throw new Error(`fake Compute: unknown zone ${zone}`);
    this.#zoneStatus.set(zone, status);
  }

  instance(zone: string, name: string): GceInstanceRecord | undefined {
    return this.#instances.get(`${zone}/${name}`);
  }

  instances(): GceInstanceRecord[] {
    return [...this.#instances.values()];
  }

  /** RUNNING instances that exist at once, for tests that need a fleet. */
  seed(count: number, template: { zone?: string; machineType?: string; labels?: Record<string, string>; namePrefix?: string } = {}): GceInstanceRecord[] {
    const zone = template.zone ?? this.zones[0] ?? `${this.region}-a`;
    const created: GceInstanceRecord[] = [];
    for (let i = 0; i < count; i++) {
      const record = this.#newInstance({
        name: `${template.namePrefix ?? 'seed'}-${this.#nextId}`,
        zone,
        machineType: template.machineType ?? 'e2-small',
        labels: { ...template.labels },
        spot: false,
        sourceImage: 'projects/debian-cloud/global/images/family/debian-12',
        metadata: [],
      });
      record.status = 'RUNNING';
      record.natIP = this.#ip('34.1');
      record.lastStartTimestamp = new Date();
      created.push(record);
    }
    return created;
  }

  // -------------------------------------------------------------------------

  #buildRoutes(): Route[] {
    const p = '/compute/v1/projects/([^/]+)';
    const z = `${p}/zones/([^/]+)`;
    const route = (method: string, path: string, name: ComputeMethod, handle: Route['handle']): Route => ({ method, pattern: new RegExp(`^${path}$`), name, handle });
    return [
      route('GET', `${p}/aggregated/instances`, 'instances.aggregatedList', (_, url) => this.#aggregatedList(url)),
      route('GET', `${z}/instances`, 'instances.list', ([zone = ''], url) => this.#list(zone, url)),
      route('POST', `${z}/instances`, 'instances.insert', ([zone = ''], url, body) => this.#insert(zone, url, body)),
      route('GET', `${z}/instances/([^/]+)`, 'instances.get', ([zone = '', name = '']) => instanceJson(this.#find(zone, name), this.project)),
      route('DELETE', `${z}/instances/([^/]+)`, 'instances.delete', ([zone = '', name = ''], url) => this.#delete(zone, name, url)),
      route('POST', `${z}/instances/([^/]+)/start`, 'instances.start', ([zone = '', name = ''], url) => this.#start(zone, name, url)),
      route('POST', `${z}/instances/([^/]+)/stop`, 'instances.stop', ([zone = '', name = ''], url) => this.#stop(zone, name, url)),
      route('POST', `${z}/instances/([^/]+)/setLabels`, 'instances.setLabels', ([zone = '', name = ''], url, body) => this.#setLabels(zone, name, url, body)),
      route('POST', `${z}/instances/([^/]+)/setMachineType`, 'instances.setMachineType', ([zone = '', name = ''], url, body) => this.#setMachineType(zone, name, url, body)),
      route('GET', `${z}/machineTypes`, 'machineTypes.list', ([zone = ''], url) => this.#machineTypes(zone, url)),
      route('GET', `${z}/machineTypes/([^/]+)`, 'machineTypes.get', ([zone = '', type = '']) => this.#machineType(zone, type)),
      route('GET', `${p}/zones`, 'zones.list', (_, url) => this.#zonesList(url)),
      route('GET', `${z}`, 'zones.get', ([zone = '']) => this.#zoneJson(this.#checkZone(zone))),
      route('GET', `${z}/operations/([^/]+)`, 'zoneOperations.get', ([zone = '', op = '']) => this.#operationJson(this.#findOperation(zone, op))),
    ];
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    let method: ComputeMethod | 'unknown' = 'unknown';
    try {
      const url = new URL(req.url ?? '/', 'http://fake');
      const raw = req.method === 'POST' || req.method === 'PUT' || req.method === 'PATCH' ? await readBody(req) : '';
      if (req.method === 'POST' && url.pathname === '/v1/token') {
        method = 'sts.token';
        this.#reply(res, method, 200, this.#exchangeToken(raw));
        return;
      }
      this.#authorize(req);
      const waitMatch = /^\/compute\/v1\/projects\/([^/]+)\/zones\/([^/]+)\/operations\/([^/]+)\/wait$/.exec(url.pathname);
      if (req.method === 'POST' && waitMatch) {
        method = 'zoneOperations.wait';
        this.#checkProject(waitMatch[1] ?? '');
        this.#injectedFault(method);
        const op = await this.#waitOperation(waitMatch[2] ?? '', waitMatch[3] ?? '');
        this.#reply(res, method, 200, op);
        return;
      }
      for (const route of this.#routes) {
        const match = route.pattern.exec(url.pathname);
        if (!match || route.method !== req.method) continue;
        method = route.name;
        const [project = '', ...params] = match.slice(1);
        this.#checkProject(project);
        const capacity = this.#injectedFault(method);
        const body = raw === '' ? {} : parseJsonBody(raw);
        const result = route.handle(params, url, body);
        if (capacity) this.#failOperationWithCapacity(result);
        this.#reply(res, method, 200, result);
        return;
      }
      throw new ComputeApiError({ status: 404, reason: 'notFound', message: `No route for ${req.method} ${url.pathname}` });
    } catch (error) {
      const spec =
        error instanceof ComputeApiError
          ? error.spec
          : error instanceof BodyTooLargeError
            ? { status: 413, reason: 'requestTooLarge', message: error.message }
            : { status: 500, reason: 'backendError', message: `Internal error: ${String(error)}` };
      const body: Json = { code: spec.status, message: spec.message, errors: [{ message: spec.message, domain: 'global', reason: spec.reason }] };
      if (spec.grpcStatus) body.status = spec.grpcStatus;
      this.#reply(res, method, spec.status, { error: body }, spec.reason);
    }
  }

  #reply(res: http.ServerResponse, method: ComputeMethod | 'unknown', status: number, body: Json, code?: string): void {
    res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8' });
    res.end(JSON.stringify(body));
    this.calls.record(code === undefined ? { action: method, status } : { action: method, status, code });
  }

  /** Throws an injected HTTP fault; returns true when a capacity fault must fail the resulting operation. */
  #injectedFault(method: ComputeMethod): boolean {
    const fault = this.faults.take(method);
    if (fault === undefined) return false;
    if (fault === 'capacity') return true;
    throw new ComputeApiError(computeFaultError(fault));
  }

  #authorize(req: http.IncomingMessage): void {
    const header = req.headers.authorization;
    if (!header?.startsWith('Bearer ')) {
      throw new ComputeApiError({
        status: 401,
        reason: 'required',
        grpcStatus: 'UNAUTHENTICATED',
        message: 'Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.',
      });
    }
    const token = header.slice('Bearer '.length);
    // Tokens not issued here (e.g. a fixed test token) are accepted until credentials are revoked.
    if (this.#credentialsRevoked && !this.#validTokens.has(token)) {
      throw new ComputeApiError({ status: 401, reason: 'authError', grpcStatus: 'UNAUTHENTICATED', message: 'Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.' });
    }
  }

  #exchangeToken(raw: string): Json {
    const form = new URLSearchParams(raw);
    if (form.get('grant_type') !== 'urn:ietf:params:oauth:grant-type:token-exchange' || !form.get('subject_token')) {
      throw new ComputeApiError({ status: 400, reason: 'invalid_request', message: 'grant_type token-exchange and subject_token are required' });
    }
    if (this.#credentialsRevoked) throw new ComputeApiError({ status: 400, reason: 'invalid_grant', message: 'The subject token is invalid or has expired.' });
    const token = `ya29.fake-${randomUUID()}`;
    this.#validTokens.add(token);
    return { access_token: token, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: 3600 };
  }

  #checkProject(project: string): void {
    if (decodeURIComponent(project) !== this.project) throw notFound(`projects/${project}`);
  }

  #checkZone(zone: string): string {
    if (!this.#zoneStatus.has(zone)) throw notFound(`projects/${this.project}/zones/${zone}`);
    return zone;
  }

  #find(zone: string, name: string): GceInstanceRecord {
    this.#checkZone(zone);
    const record = this.#instances.get(`${zone}/${name}`);
    if (!record) throw notFound(`projects/${this.project}/zones/${zone}/instances/${name}`);
    return record;
  }

  // --- listing -----------------------------------------------------------------

  #matching(url: URL, zone?: string): GceInstanceRecord[] {
    const filter = url.searchParams.get('filter');
    const predicate = filter ? parseFilter(filter) : () => true;
    return [...this.#instances.values()].filter((i) => (zone === undefined || i.zone === zone) && predicate(i));
  }

  #list(zone: string, url: URL): Json {
    this.#checkZone(zone);
    const { page, nextPageToken } = paginate(`list/${zone}`, this.#matching(url, zone), url);
    return {
      kind: 'compute#instanceList',
      id: `projects/${this.project}/zones/${zone}/instances`,
      items: page.map((i) => instanceJson(i, this.project)),
      nextPageToken,
      selfLink: `${LINK_BASE}/projects/${this.project}/zones/${zone}/instances`,
    };
  }

  #aggregatedList(url: URL): Json {
    const { page, nextPageToken } = paginate('aggregated', this.#matching(url), url);
    const items: Record<string, Json> = {};
    for (const zone of this.zones) {
      const inZone = page.filter((i) => i.zone === zone);
      items[`zones/${zone}`] =
        inZone.length > 0
          ? { instances: inZone.map((i) => instanceJson(i, this.project)) }
          : { warning: { code: 'NO_RESULTS_ON_PAGE', message: 'There are no results for scope', data: [{ key: 'scope', value: `zones/${zone}` }] } };
    }
    return { kind: 'compute#instanceAggregatedList', id: `projects/${this.project}/aggregated/instances`, items, nextPageToken, selfLink: `${LINK_BASE}/projects/${this.project}/aggregated/instances` };
  }

  // --- mutations -----------------------------------------------------------------

  #insert(zone: string, url: URL, body: Json): Json {
    this.#checkZone(zone);
    const replay = this.#replay(url);
    if (replay) return replay;
    const name = body.name;
    if (typeof name !== 'string' || !NAME_RE.test(name)) {
      throw invalid('resource.name', `'${String(name)}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'`);
    }
    const machineType = lastSegment(body.machineType);
    if (!machineType) throw invalid('resource.machineType', 'required');
    if (!GCE_MACHINE_TYPES[machineType]) throw invalid('resource.machineType', `Machine type with name '${machineType}' does not exist in zone '${zone}'.`);
    const disks = Array.isArray(body.disks) ? (body.disks as Json[]) : [];
    const sourceImage = (disks[0]?.initializeParams as Json | undefined)?.sourceImage;
    if (typeof sourceImage !== 'string' || sourceImage === '') throw invalid('resource.disks[0].initializeParams.sourceImage', 'a boot disk with a source image is required');
    if (this.#instances.has(`${zone}/${name}`)) {
      throw new ComputeApiError({ status: 409, reason: 'alreadyExists', message: `The resource 'projects/${this.project}/zones/${zone}/instances/${name}' already exists` });
    }
    const labels = checkLabels(body.labels);
    const scheduling = (body.scheduling ?? {}) as Json;
    const metadataItems = Array.isArray((body.metadata as Json | undefined)?.items) ? ((body.metadata as Json).items as Json[]) : [];
    const record = this.#newInstance({
      name,
      zone,
      machineType,
      labels,
      spot: scheduling.provisioningModel === 'SPOT' || scheduling.preemptible === true,
      sourceImage,
      metadata: metadataItems.map((m) => ({ key: String(m.key), value: String(m.value ?? '') })),
    });
    const op = this.#newOperation(zone, 'insert', record, url);
    if (this.#zoneStatus.get(zone) === 'DOWN') {
      this.#finishLater(op, () => this.#instances.delete(`${zone}/${name}`), CAPACITY_ERROR(zone, this.project));
    } else {
      this.#finishLater(op, () => {
        record.status = 'RUNNING';
        record.natIP = this.#ip('34.1');
        record.lastStartTimestamp = new Date();
      });
    }
    return this.#operationJson(op);
  }

  #start(zone: string, name: string, url: URL): Json {
    const record = this.#find(zone, name);
    const replay = this.#replay(url);
    if (replay) return replay;
    if (record.status === 'STOPPING') {
      throw new ComputeApiError({ status: 400, reason: 'resourceNotReady', message: `The resource 'projects/${this.project}/zones/${zone}/instances/${name}' is not ready` });
    }
    const op = this.#newOperation(zone, 'start', record, url);
    if (record.status === 'TERMINATED' || record.status === 'SUSPENDED') {
      record.status = 'STAGING';
      this.#finishLater(op, () => {
        record.status = 'RUNNING';
        record.natIP = this.#ip('34.1');
        record.lastStartTimestamp = new Date();
      });
    } else {
      this.#finishNow(op);
    }
    return this.#operationJson(op);
  }

  #stop(zone: string, name: string, url: URL): Json {
    const record = this.#find(zone, name);
    const replay = this.#replay(url);
    if (replay) return replay;
    const op = this.#newOperation(zone, 'stop', record, url);
    if (record.status === 'RUNNING' || record.status === 'STAGING' || record.status === 'PROVISIONING') {
      record.status = 'STOPPING';
      this.#finishLater(op, () => {
        record.status = 'TERMINATED';
        record.natIP = null;
      });
    } else {
      this.#finishNow(op);
    }
    return this.#operationJson(op);
  }

  #delete(zone: string, name: string, url: URL): Json {
    const record = this.#find(zone, name);
    const replay = this.#replay(url);
    if (replay) return replay;
    const op = this.#newOperation(zone, 'delete', record, url);
    record.status = 'STOPPING';
    this.#finishLater(op, () => this.#instances.delete(`${zone}/${name}`));
    return this.#operationJson(op);
  }

  #setLabels(zone: string, name: string, url: URL, body: Json): Json {
    const record = this.#find(zone, name);
    const replay = this.#replay(url);
    if (replay) return replay;
    if (body.labelFingerprint !== record.labelFingerprint) {
      throw new ComputeApiError({ status: 412, reason: 'conditionNotMet', message: 'Labels fingerprint either invalid or resource labels have changed' });
    }
    record.labels = checkLabels(body.labels);
    record.labelFingerprint = fingerprint();
    const op = this.#newOperation(zone, 'setLabels', record, url);
    this.#finishNow(op);
    return this.#operationJson(op);
  }

  /** As GCE: only a TERMINATED (stopped) instance changes its machine type. */
  #setMachineType(zone: string, name: string, url: URL, body: Json): Json {
    const record = this.#find(zone, name);
    const replay = this.#replay(url);
    if (replay) return replay;
    const machineType = lastSegment(typeof body.machineType === 'string' ? body.machineType : undefined);
    if (!machineType || !GCE_MACHINE_TYPES[machineType]) throw invalid('machineType', `Machine type with name '${machineType ?? ''}' does not exist in zone '${zone}'.`);
    if (record.status !== 'TERMINATED') {
      throw new ComputeApiError({ status: 400, reason: 'resourceNotReady', message: `The resource 'projects/${this.project}/zones/${zone}/instances/${name}' is not ready: it must be stopped to change its machine type` });
    }
    record.machineType = machineType;
    const op = this.#newOperation(zone, 'setMachineType', record, url);
    this.#finishNow(op);
    return this.#operationJson(op);
  }

  #newInstance(fields: Pick<GceInstanceRecord, 'name' | 'zone' | 'machineType' | 'labels' | 'spot' | 'sourceImage' | 'metadata'>): GceInstanceRecord {
    const record: GceInstanceRecord = {
      ...fields,
      id: String(this.#nextId++),
      status: 'PROVISIONING',
      labelFingerprint: fingerprint(),
      networkIP: this.#ip('10.128'),
      natIP: null,
      creationTimestamp: new Date(),
      lastStartTimestamp: null,
    };
    this.#instances.set(`${record.zone}/${record.name}`, record);
    return record;
  }

  // --- operations ------------------------------------------------------------------

  #replay(url: URL): Json | undefined {
    const requestId = url.searchParams.get('requestId');
    const key = requestId ? this.#requestIds.get(requestId) : undefined;
    const op = key ? this.#operations.get(key) : undefined;
    return op ? this.#operationJson(op) : undefined;
  }

  #newOperation(zone: string, operationType: string, target: GceInstanceRecord, url: URL): OperationRecord {
    const now = new Date();
    const op: OperationRecord = {
      id: String(this.#nextId++),
      name: `operation-${now.getTime()}-${randomBytes(6).toString('hex')}`,
      zone,
      operationType,
      targetName: target.name,
      targetId: target.id,
      status: 'RUNNING',
      progress: 0,
      insertTime: now,
      startTime: now,
      endTime: null,
      error: null,
      httpErrorStatusCode: null,
      waiters: [],
    };
    this.#operations.set(`${zone}/${op.name}`, op);
    const requestId = url.searchParams.get('requestId');
    if (requestId) this.#requestIds.set(requestId, `${zone}/${op.name}`);
    return op;
  }

  #finishNow(op: OperationRecord): void {
    op.status = 'DONE';
    op.progress = 100;
    op.endTime = new Date();
  }

  #finishLater(op: OperationRecord, effect: () => void, error?: { code: string; message: string }): void {
    this.#timers.after(`${op.zone}/${op.targetName}`, this.transitionDelayMs, () => {
      effect();
      this.#finishNow(op);
      if (error) {
        op.error = error;
        op.httpErrorStatusCode = 503;
      }
      this.#wake(op);
    });
  }

  /** An injected capacity fault: the accepted insert/start fails when its operation completes. */
  #failOperationWithCapacity(result: Json): void {
    const op = this.#operations.get(`${lastSegment(result.zone) ?? ''}/${String(result.name)}`);
    if (!op) return;
    const key = `${op.zone}/${op.targetName}`;
    const record = this.#instances.get(key);
    const undo = op.operationType === 'insert' ? () => this.#instances.delete(key) : () => record && (record.status = 'TERMINATED');
    op.status = 'RUNNING';
    op.progress = 0;
    op.endTime = null;
    this.#finishLater(op, undo, CAPACITY_ERROR(op.zone, this.project));
  }

  #findOperation(zone: string, name: string): OperationRecord {
    this.#checkZone(zone);
    const op = this.#operations.get(`${zone}/${name}`);
    if (!op) throw notFound(`projects/${this.project}/zones/${zone}/operations/${name}`);
    return op;
  }

  async #waitOperation(zone: string, name: string): Promise<Json> {
    const op = this.#findOperation(zone, name);
    if (op.status !== 'DONE') {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.operationWaitTimeoutMs);
        timer.unref();
        op.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.#operationJson(op);
  }

  #wake(op: OperationRecord): void {
    for (const wake of op.waiters.splice(0)) wake();
  }

  #operationJson(op: OperationRecord): Json {
    const zoneLink = `${LINK_BASE}/projects/${this.project}/zones/${op.zone}`;
    const json: Json = {
      kind: 'compute#operation',
      id: op.id,
      name: op.name,
      zone: zoneLink,
      operationType: op.operationType,
      targetLink: `${zoneLink}/instances/${op.targetName}`,
      targetId: op.targetId,
      status: op.status,
      user: 'dwcp@fake.iam.gserviceaccount.com',
      progress: op.progress,
      insertTime: rfc3339(op.insertTime),
      startTime: rfc3339(op.startTime),
      selfLink: `${zoneLink}/operations/${op.name}`,
    };
    if (op.endTime) json.endTime = rfc3339(op.endTime);
    if (op.error) {
      json.error = { errors: [op.error] };
      json.httpErrorStatusCode = op.httpErrorStatusCode;
      json.httpErrorMessage = 'SERVICE UNAVAILABLE';
    }
    return json;
  }

  // --- catalogue --------------------------------------------------------------------

  #machineTypes(zone: string, url: URL): Json {
    this.#checkZone(zone);
    const { page, nextPageToken } = paginate(`machineTypes/${zone}`, Object.keys(GCE_MACHINE_TYPES), url);
    return { kind: 'compute#machineTypeList', items: page.map((name) => this.#machineType(zone, name)), nextPageToken };
  }

  #machineType(zone: string, name: string): Json {
    this.#checkZone(zone);
    const spec = GCE_MACHINE_TYPES[name];
    if (!spec) throw notFound(`projects/${this.project}/zones/${zone}/machineTypes/${name}`);
    return {
      kind: 'compute#machineType',
      id: String(Object.keys(GCE_MACHINE_TYPES).indexOf(name) + 1),
      name,
      description: `${spec.guestCpus} vCPUs, ${spec.memoryMb / 1024} GB RAM`,
      guestCpus: spec.guestCpus,
      memoryMb: spec.memoryMb,
      isSharedCpu: spec.isSharedCpu,
      architecture: spec.architecture,
      zone,
      selfLink: `${LINK_BASE}/projects/${this.project}/zones/${zone}/machineTypes/${name}`,
    };
  }

  #zonesList(url: URL): Json {
    const { page, nextPageToken } = paginate('zones', [...this.zones], url);
    return { kind: 'compute#zoneList', items: page.map((zone) => this.#zoneJson(zone)), nextPageToken };
  }

  #zoneJson(zone: string): Json {
    return {
      kind: 'compute#zone',
      id: String(this.zones.indexOf(zone) + 2000),
      name: zone,
      status: this.#zoneStatus.get(zone) ?? 'UP',
      region: `${LINK_BASE}/projects/${this.project}/regions/${this.region}`,
      selfLink: `${LINK_BASE}/projects/${this.project}/zones/${zone}`,
    };
  }

  #ip(prefix: string): string {
    return this.#addresses.take(prefix);
  }
}

// ---------------------------------------------------------------------------

function instanceJson(i: GceInstanceRecord, project: string): Json {
  const zoneLink = `${LINK_BASE}/projects/${project}/zones/${i.zone}`;
  const accessConfigs = i.natIP ? [{ kind: 'compute#accessConfig', type: 'ONE_TO_ONE_NAT', name: 'External NAT', natIP: i.natIP }] : [];
  return {
    kind: 'compute#instance',
    id: i.id,
    creationTimestamp: rfc3339(i.creationTimestamp),
    name: i.name,
    machineType: `${zoneLink}/machineTypes/${i.machineType}`,
    status: i.status,
    zone: zoneLink,
    networkInterfaces: [{ kind: 'compute#networkInterface', name: 'nic0', network: `${LINK_BASE}/projects/${project}/global/networks/default`, networkIP: i.networkIP, accessConfigs }],
    disks: [{ kind: 'compute#attachedDisk', boot: true, autoDelete: true, source: `${zoneLink}/disks/${i.name}` }],
    metadata: { kind: 'compute#metadata', fingerprint: 'fake', items: i.metadata },
    labels: i.labels,
    labelFingerprint: i.labelFingerprint,
    scheduling: i.spot ? { provisioningModel: 'SPOT', preemptible: true, automaticRestart: false, onHostMaintenance: 'TERMINATE' } : { provisioningModel: 'STANDARD', preemptible: false, automaticRestart: true, onHostMaintenance: 'MIGRATE' },
    lastStartTimestamp: i.lastStartTimestamp ? rfc3339(i.lastStartTimestamp) : undefined,
    selfLink: `${zoneLink}/instances/${i.name}`,
  };
}

/** GCE's timestamp format: RFC 3339 with a numeric offset. */
function rfc3339(date: Date): string {
  return date.toISOString().replace('Z', '-00:00');
}

function fingerprint(): string {
  return randomBytes(8).toString('base64');
}

function lastSegment(value: unknown): string | undefined {
  if (typeof value !== 'string' || value === '') return undefined;
  return value.slice(value.lastIndexOf('/') + 1);
}

function parseJsonBody(raw: string): Json {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    throw new ComputeApiError({ status: 400, reason: 'parseError', message: 'Parse Error' });
  }
  // Calls without a request body (start, stop) send the JSON string "".
  if (parsed === '' || parsed === null) return {};
  if (typeof parsed !== 'object' || Array.isArray(parsed)) throw new ComputeApiError({ status: 400, reason: 'parseError', message: 'Parse Error' });
  return parsed as Json;
}

function checkLabels(raw: unknown): Record<string, string> {
  if (raw === undefined || raw === null) return {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw invalid('labels', 'must be a map');
  const labels: Record<string, string> = {};
  const entries = Object.entries(raw as Record<string, unknown>);
  if (entries.length > 64) throw invalid('labels', 'at most 64 labels');
  for (const [key, value] of entries) {
    if (!LABEL_KEY_RE.test(key)) throw invalid(`labels.${key}`, 'Label keys must start with a lowercase letter and contain only lowercase letters, digits, _ and -, at most 63 characters');
    if (typeof value !== 'string' || !LABEL_VALUE_RE.test(value)) throw invalid(`labels.${key}`, 'Label values may contain only lowercase letters, digits, _ and -, at most 63 characters');
    labels[key] = value;
  }
  return labels;
}

function paginate<T>(scope: string, items: readonly T[], url: URL): { page: T[]; nextPageToken: string | undefined } {
  const maxRaw = url.searchParams.get('maxResults');
  const max = maxRaw === null ? 500 : Number(maxRaw);
  if (!Number.isInteger(max) || max < 0 || max > 500) throw invalid('maxResults', `${maxRaw}; must be from 0 to 500`);
  const result = slicePage(scope, items, max === 0 ? 500 : max, url.searchParams.get('pageToken') ?? undefined);
  if (!result) throw invalid('pageToken', 'not a page token of this listing');
  return { page: result.page, nextPageToken: result.nextToken };
}

// --- filter expressions ------------------------------------------------------------
// The subset of GCE's list filter the provider sends: comparisons `field = value` /
// `field != value` on name, status, zone and labels.KEY, grouped with parentheses
// and joined with AND / OR (juxtaposition is AND; AND binds tighter than OR).

type Predicate = (i: GceInstanceRecord) => boolean;

function parseFilter(text: string): Predicate {
  const tokens = text.match(/\(|\)|!=|=|"(?:[^"\\]|\\.)*"|[^\s()=!"]+/g) ?? [];
  let pos = 0;
  const peek = (): string | undefined => tokens[pos];
  const next = (): string => {
    const token = tokens[pos++];
    if (token === undefined) throw invalid('filter', `unexpected end of expression in '${text}'`);
    return token;
  };
  const parseOr = (): Predicate => {
    const terms = [parseAnd()];
    while (peek() === 'OR') {
      next();
      terms.push(parseAnd());
    }
    return (i) => terms.some((t) => t(i));
  };
  const parseAnd = (): Predicate => {
    const terms = [parseTerm()];
    while (peek() !== undefined && peek() !== ')' && peek() !== 'OR') {
      if (peek() === 'AND') next();
      terms.push(parseTerm());
    }
    return (i) => terms.every((t) => t(i));
  };
  const parseTerm = (): Predicate => {
    if (peek() === '(') {
      next();
      const inner = parseOr();
      if (next() !== ')') throw invalid('filter', `missing ')' in '${text}'`);
      return inner;
    }
    const field = next();
    const op = next();
    if (op !== '=' && op !== '!=') throw invalid('filter', `unsupported operator '${op}' in '${text}'`);
    let value = next();
    if (value.startsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, '$1');
    const read = fieldReader(field, text);
    return op === '=' ? (i) => read(i) === value : (i) => read(i) !== value;
  };
  const predicate = parseOr();
  if (pos !== tokens.length) throw invalid('filter', `unexpected '${tokens[pos]}' in '${text}'`);
  return predicate;
}

function fieldReader(field: string, text: string): (i: GceInstanceRecord) => string | undefined {
  if (field.startsWith('labels.')) {
    const key = field.slice('labels.'.length);
    return (i) => i.labels[key];
  }
  switch (field) {
    case 'name':
      return (i) => i.name;
    case 'status':
      return (i) => i.status;
    case 'zone':
      return (i) => i.zone;
    default:
      throw invalid('filter', `unsupported field '${field}' in '${text}'`);
  }
}
