/**
 * The typed admin client, used by dwcpctl and by tests: one channel to the
 * daemon's socket, and the messages of schema.ts as callers see them.
 *
 * Invariants: every response a caller sees has every field present, with
 * proto3 `optional` fields that were absent on the wire turned into null, so
 * "unknown" is explicit and never confused with 0 or "". Every call carries a
 * deadline. Every failure becomes one AdminClientError whose message is a
 * single line saying what went wrong in operator terms (missing socket,
 * daemon down, permission, timeout) rather than a raw gRPC status, and whose
 * code and retryability are the daemon's own (status.ts), not read from text.
 *
 * The schema lives in schema.ts, which the services import too; this file
 * imports no service, so dwcpctl does not load the server's dependencies.
 */
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/proto-loader';
import { probeSocket } from './socket.ts';
import { DwcpError, type DwcpErrorCode, type DwcpErrorOptions } from '../errors.ts';
import { fromStatus } from './status.ts';
import { vmClient, type VmClient } from './vm-client.ts';
import { blobClient, type BlobClient } from './blob-client.ts';
import type { StreamTransport } from './server-stream.ts';
import { stateClient, type StateClient } from './state-client.ts';
import { fleetClient, type FleetClient } from './fleet-client.ts';
import { imageClient, type ImageClient } from './image-client.ts';
import { migrationClient, type MigrationClient } from './migration-client.ts';
import { policyClient, type PolicyClient } from './policy-client.ts';
import { ADMIN_SERVICE, BLOB_SERVICE, FLEET_SERVICE, IMAGE_SERVICE, MIGRATION_SERVICE, DR_SERVICE, KV_SERVICE, POLICY_SERVICE, COST_SERVICE, BURST_SERVICE, PBFT_SERVICE, RAFT_SERVICE, STATE_SERVICE, VM_SERVICE, loadAdminPackage, serviceDefinition, type KvGetRequest, type KvGetResponse, type KvItem, type KvWriteOptions, type KvWriteResponse, type MemberInfo, type MembersRequest, type MembersResponse, type PbftStatusResponse, type RaftMembersResponse, type RaftProgress, type RaftStatusResponse, type ServiceCall, type StatusRequest, type StatusResponse } from './schema.ts';
import { drClient, type DrClient } from './dr-client.ts';
import { costClient, type CostClient } from './cost-client.ts';
import { burstClient, type BurstClient } from './burst-client.ts';

/** A member as proto-loader decodes it: optional fields are absent rather than null. */
type WireMember = Omit<MemberInfo, 'rtt_ms' | 'last_seen' | 'last_error' | 'phi'> & {
  rtt_ms?: number;
  last_seen?: string;
  last_error?: string;
  phi?: number;
};
type WireStatus = Omit<StatusResponse, 'members'> & { members: WireMember[] };
interface WireMembers {
  members: WireMember[];
}

/** Rebuilt field by field so the key order is the .proto order and decoder extras (oneof markers) drop out. */
function memberFromWire(m: WireMember): MemberInfo {
  return {
    name: m.name,
    peer_id: m.peer_id,
    region: m.region,
    provider: m.provider,
    trust: m.trust,
    addrs: m.addrs,
    connected: m.connected,
    rtt_ms: m.rtt_ms ?? null,
    link_mode: m.link_mode,
    last_seen: m.last_seen ?? null,
    last_error: m.last_error ?? null,
    phi: m.phi ?? null,
    health: m.health,
  };
}

function statusFromWire(s: WireStatus): StatusResponse {
  return {
    name: s.name,
    peer_id: s.peer_id,
    region: s.region,
    provider: s.provider,
    trust: s.trust,
    federation: s.federation,
    version: s.version,
    listen_addrs: s.listen_addrs,
    started_at: s.started_at,
    uptime_seconds: s.uptime_seconds,
    members: s.members.map(memberFromWire),
    scopes: s.scopes ?? [],
  };
}

// ---------------------------------------------------------------- Kv and Raft

/** uint64 fields arrive as decimal strings (PROTO_LOADER_OPTIONS); log indices and revisions stay far below 2^53. */
type Wire<T> = { [K in keyof T]: T[K] extends number ? string | number : T[K] };

function num(value: string | number): number {
  return typeof value === 'number' ? value : Number(value);
}

function itemFromWire(i: Wire<KvItem>): KvItem {
  return { key: i.key, value: i.value, revision: num(i.revision), create_revision: num(i.create_revision), region: i.region, hlc: i.hlc };
}

function writeFromWire(w: Omit<Wire<KvWriteResponse>, 'prev'> & { prev?: Wire<KvItem> }): KvWriteResponse {
  return {
    ok: w.ok,
    revision: num(w.revision),
    reason: w.reason,
    current_revision: num(w.current_revision),
    prev: w.prev === undefined ? null : itemFromWire(w.prev),
    leader: w.leader,
    consistency: w.consistency,
    regions_acked: num(w.regions_acked),
    regions_total: num(w.regions_total),
  };
}

function raftStatusFromWire(s: Omit<Wire<RaftStatusResponse>, 'progress'> & { progress: Wire<RaftProgress>[] }): RaftStatusResponse {
  return {
    id: s.id,
    role: s.role,
    term: num(s.term),
    leader: s.leader,
    commit_index: num(s.commit_index),
    applied_index: num(s.applied_index),
    last_index: num(s.last_index),
    last_term: num(s.last_term),
    snapshot_index: num(s.snapshot_index),
    voters: s.voters,
    learners: s.learners,
    progress: s.progress.map((p) => ({ ...p, match: num(p.match), next: num(p.next) })),
    pending_proposals: num(s.pending_proposals),
  };
}

export interface KvClient {
  put(key: string, value: Uint8Array, options: KvWriteOptions): Promise<KvWriteResponse>;
  delete(key: string, options: KvWriteOptions): Promise<KvWriteResponse>;
  cas(key: string, expectedRevision: number, value: Uint8Array, options: KvWriteOptions): Promise<KvWriteResponse>;
  get(request: KvGetRequest): Promise<KvGetResponse>;
}

export interface RaftClient {
  status(): Promise<RaftStatusResponse>;
  members(): Promise<RaftMembersResponse>;
  addMember(id: string, timeoutMs: number): Promise<RaftMembersResponse>;
  removeMember(id: string, timeoutMs: number): Promise<RaftMembersResponse>;
  transferLeader(to: string, timeoutMs: number): Promise<{ leader: string }>;
}

/**
 * A failed admin call as the client sees it: the daemon's DwcpError (code,
 * retryability, details read back from the status's trailers, status.ts) or
 * the client's own verdict (no daemon, no answer in time), which is never
 * retryable: the client cannot know whether the daemon acted.
 */
export class AdminClientError extends DwcpError {
  /** The gRPC status of the failed call, null when the failure was before any call. */
  readonly grpcCode: grpc.status | null;
  constructor(code: DwcpErrorCode, message: string, grpcCode: grpc.status | null, options: DwcpErrorOptions = { retryable: false }) {
    super(code, message.replace(/\s*\n\s*/g, '; '), options);
    this.grpcCode = grpcCode;
  }
}

export interface PbftClient {
  status(): Promise<PbftStatusResponse>;
}

export interface AdminClient {
  readonly socketPath: string;
  status(): Promise<StatusResponse>;
  members(): Promise<MembersResponse>;
  readonly kv: KvClient;
  readonly raft: RaftClient;
  readonly pbft: PbftClient;
  readonly vm: VmClient;
  readonly blob: BlobClient;
  readonly state: StateClient;
  readonly fleet: FleetClient;
  readonly image: ImageClient;
  readonly migration: MigrationClient;
  readonly policy: PolicyClient;
  readonly dr: DrClient;
  readonly cost: CostClient;
  readonly burst: BurstClient;
  close(): void;
}

export interface ConnectOptions {
  /** Deadline of each call, from when it is made. */
  timeoutMs: number;
  /**
   * Let a call wait for the connection until its deadline instead of failing
   * at once while the channel is between attempts (gRPC wait-for-ready). For
   * callers that know the daemon is (re)starting; dwcpctl keeps the default
   * so a missing daemon is reported at once.
   */
  waitForReady?: boolean;
}

function isServiceError(err: unknown): err is grpc.ServiceError {
  return err instanceof Error && typeof (err as Partial<grpc.ServiceError>).code === 'number';
}

/**
 * Turns a failed call into the reason an operator needs. UNAVAILABLE means the
 * channel could not reach anything, so the socket itself is probed to say why.
 */
async function explainFailure(err: unknown, socketPath: string, method: string, timeoutMs: number): Promise<AdminClientError> {
  if (!isServiceError(err)) return new AdminClientError('internal', `${method} failed: ${String(err)}`, null);
  if (err.code === grpc.status.DEADLINE_EXCEEDED) {
    return new AdminClientError('timeout', `daemon at ${socketPath} did not answer ${method} within ${timeoutMs} ms (deadline exceeded)`, err.code);
  }
  // The daemon's own verdict, when it gave one: code and retryability from the trailers, never from the text.
  const verdict = fromStatus(err);
  if (err.code === grpc.status.UNAVAILABLE) {
    const probe = await probeSocket(socketPath);
    const unreachable = (message: string) => new AdminClientError('unreachable', message, err.code);
    switch (probe.state) {
      case 'missing':
        return unreachable(`no daemon socket at ${socketPath} (is dwcpd running? set --socket or DWCP_SOCKET)`);
      case 'stale':
        return unreachable(`daemon is not running: connection refused at ${socketPath} (socket left by a stopped dwcpd)`);
      case 'denied':
        return unreachable(`permission denied on admin socket ${socketPath} (run as the daemon's user or root)`);
      case 'not-socket':
        return unreachable(`${socketPath} is ${probe.kind}, not a daemon socket (set --socket or DWCP_SOCKET)`);
      default:
        // The daemon answered: UNAVAILABLE is its own verdict (no leader, no quorum), spelled out in the details.
        return new AdminClientError(verdict.code, `${method}: ${err.details}`, err.code, verdict);
    }
  }
  return new AdminClientError(verdict.code, `${method} failed with ${grpc.status[err.code]}: ${err.details}`, err.code, verdict);
}

/** How much longer than a request's own timeout the client waits, so the daemon's explanation arrives first. */
const SERVER_ANSWER_MARGIN_MS = 1000;

/** Opens a channel to the daemon; connection happens on the first call, so this never throws on a bad path. */
export function connectAdmin(socketPath: string, opts: ConnectOptions): AdminClient {
  const pkg = loadAdminPackage();
  // Every service of the loaded package: a sibling service needs only its file in ADMIN_PROTO_FILES.
  const services = new Map(Object.keys(pkg).filter((name) => !('format' in (pkg[name] ?? {}))).map((name) => [name, serviceDefinition(pkg, name)]));
  const client = new grpc.Client(`unix:${socketPath}`, grpc.credentials.createInsecure());

  /**
   * One call; `timeoutMs` is the request's own server-side timeout when it
   * carries one, and the call's deadline then leaves the server room to say
   * why it gave up rather than the client cutting it off first.
   */
  function call<Req, Res>(service: string, methodName: string, request: Req, serverTimeoutMs?: number): Promise<Res> {
    const method = services.get(service)?.[methodName] as MethodDefinition<Req, Res> | undefined;
    if (method === undefined) return Promise.reject(new AdminClientError('internal', `${methodName} is not a method of ${service}`, null));
    const deadlineMs = serverTimeoutMs === undefined ? opts.timeoutMs : serverTimeoutMs + SERVER_ANSWER_MARGIN_MS;
    return new Promise<Res>((resolve, reject) => {
      client.makeUnaryRequest(
        method.path,
        method.requestSerialize,
        method.responseDeserialize,
        request,
        new grpc.Metadata({ waitForReady: opts.waitForReady === true }),
        { deadline: Date.now() + deadlineMs },
        (err, value) => {
          if (err || value === undefined) {
            explainFailure(err ?? new Error('empty response'), socketPath, methodName, deadlineMs).then(reject, reject);
          } else {
            resolve(value);
          }
        },
      );
    });
  }

  /** What a server-streaming call of `service` needs (server-stream.ts). */
  const streamTransport = (service: string): StreamTransport => ({
    client,
    method: (name) => services.get(service)?.[name] as MethodDefinition<unknown, unknown> | undefined,
    explain: (err, method, timeoutMs) => explainFailure(err, socketPath, method, timeoutMs),
    timeoutMs: opts.timeoutMs,
  });
  const serviceCall =
    (service: string): ServiceCall =>
    (method, request, serverTimeoutMs) =>
      call(service, method, request, serverTimeoutMs);
  const unary = <Req, Res>(methodName: string, request: Req) => call<Req, Res>(ADMIN_SERVICE, methodName, request);
  type WireWrite = Parameters<typeof writeFromWire>[0];
  const write = async <Req extends { key: string; options: KvWriteOptions }>(method: string, request: Req) =>
    writeFromWire(await call<Req, WireWrite>(KV_SERVICE, method, request, request.options.timeout_ms || opts.timeoutMs));
  type WireRaftMembers = RaftMembersResponse;
  const raftCall = serviceCall(RAFT_SERVICE);

  return {
    socketPath,
    status: async () => statusFromWire(await unary<StatusRequest, WireStatus>('Status', {})),
    members: async () => ({ members: (await unary<MembersRequest, WireMembers>('Members', {})).members.map(memberFromWire) }),
    kv: {
      put: (key, value, options) => write('Put', { key, value, options }),
      delete: (key, options) => write('Delete', { key, options }),
      cas: (key, expectedRevision, value, options) => write('Cas', { key, expected_revision: expectedRevision, value, options }),
      get: async (request) => {
        const res = await call<KvGetRequest, { items: Wire<KvItem>[]; applied_index: string; regions_answered: number; regions_total: number }>(
          KV_SERVICE,
          'Get',
          request,
          request.timeout_ms || opts.timeoutMs,
        );
        return { items: res.items.map(itemFromWire), applied_index: num(res.applied_index), regions_answered: res.regions_answered, regions_total: res.regions_total };
      },
    },
    raft: {
      status: async () => raftStatusFromWire(await raftCall('Status', {})),
      members: () => raftCall<object, WireRaftMembers>('Members', {}),
      addMember: (id, timeoutMs) => raftCall<object, WireRaftMembers>('AddMember', { id, timeout_ms: timeoutMs }, timeoutMs),
      removeMember: (id, timeoutMs) => raftCall<object, WireRaftMembers>('RemoveMember', { id, timeout_ms: timeoutMs }, timeoutMs),
      transferLeader: (to, timeoutMs) => raftCall<object, { leader: string }>('TransferLeader', { to, timeout_ms: timeoutMs }, timeoutMs),
    },
    pbft: {
      status: async () => {
        type WireDrop = Wire<PbftStatusResponse['drops'][number]>;
        const s = await call<object, Omit<Wire<PbftStatusResponse>, 'drops'> & { drops: WireDrop[] }>(PBFT_SERVICE, 'Status', {});
        return {
          ...s,
          view: num(s.view),
          f: num(s.f),
          last_executed: num(s.last_executed),
          stable_checkpoint: num(s.stable_checkpoint),
          high_watermark: num(s.high_watermark),
          pending_requests: num(s.pending_requests),
          view_changes: num(s.view_changes),
          client_in_flight: num(s.client_in_flight),
          drops: s.drops.map((d) => ({ ...d, count: num(d.count) })),
        };
      },
    },
    vm: vmClient(serviceCall(VM_SERVICE), streamTransport(VM_SERVICE)),
    blob: blobClient({ ...streamTransport(BLOB_SERVICE), unary: serviceCall(BLOB_SERVICE) }),
    image: imageClient({ ...streamTransport(IMAGE_SERVICE), unary: serviceCall(IMAGE_SERVICE) }),
    state: stateClient(serviceCall(STATE_SERVICE)),
    fleet: fleetClient(serviceCall(FLEET_SERVICE)),
    migration: migrationClient(serviceCall(MIGRATION_SERVICE)),
    policy: policyClient(serviceCall(POLICY_SERVICE)),
    dr: drClient(serviceCall(DR_SERVICE)),
    cost: costClient(serviceCall(COST_SERVICE)),
    burst: burstClient(serviceCall(BURST_SERVICE)),
    close: () => client.close(),
  };
}
