/**
 * The admin API's schema, shared by the daemon's services and the admin
 * client (dwcpctl, tests): the .proto files and the one parsed package, the
 * service names, and every request and response message as TypeScript sees
 * it, in the .proto's snake_case.
 *
 * Invariants:
 * - One type per message. A response type is what the client returns: every
 *   field present, proto3 `optional` fields absent on the wire as null,
 *   uint64 as numbers (they stay far below 2^53). A service may send such a
 *   value as it is (the loader encodes null as absent).
 * - Imports nothing from the client or the services, so each side imports
 *   this module and never the other (no import cycle among src/admin files),
 *   and dwcpctl does not load the server's dependencies.
 */
import { fileURLToPath } from 'node:url';
import { loadSync, type Options, type PackageDefinition, type ServiceDefinition } from '@grpc/proto-loader';

/** Protobuf package of every admin service. */
export const ADMIN_PACKAGE = 'dwcp.admin.v1';
export const ADMIN_SERVICE = `${ADMIN_PACKAGE}.Admin`;
export const KV_SERVICE = `${ADMIN_PACKAGE}.Kv`;
export const RAFT_SERVICE = `${ADMIN_PACKAGE}.Raft`;
export const PBFT_SERVICE = `${ADMIN_PACKAGE}.Pbft`;
export const VM_SERVICE = `${ADMIN_PACKAGE}.Vm`;
export const BLOB_SERVICE = `${ADMIN_PACKAGE}.Blob`;
export const STATE_SERVICE = `${ADMIN_PACKAGE}.State`;
export const FLEET_SERVICE = `${ADMIN_PACKAGE}.Fleet`;
export const IMAGE_SERVICE = `${ADMIN_PACKAGE}.Image`;
export const MIGRATION_SERVICE = `${ADMIN_PACKAGE}.Migration`;
export const POLICY_SERVICE = `${ADMIN_PACKAGE}.Policy`;
export const DR_SERVICE = `${ADMIN_PACKAGE}.Dr`;

/** The admin .proto files, relative to this directory; a new sibling service adds its file here. */
export const COST_SERVICE = `${ADMIN_PACKAGE}.Cost`;
export const BURST_SERVICE = `${ADMIN_PACKAGE}.Burst`;

/** The admin .proto files, relative to this directory; a new sibling service adds its file here. */
export const ADMIN_PROTO_FILES = ['admin.proto', 'kv.proto', 'raft.proto', 'pbft.proto', 'vm.proto', 'blob.proto', 'state.proto', 'fleet.proto', 'image.proto', 'migration.proto', 'policy.proto', 'dr.proto', 'cost.proto', 'burst.proto'];

/**
 * snake_case field names as in the .proto, int64 as strings (no silent
 * precision loss above 2^53), defaults filled in for every non-optional field.
 */
export const PROTO_LOADER_OPTIONS: Options = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
};

let adminPackage: PackageDefinition | undefined;

/** Parsed once per process (~20 ms of CPU): every client and service registration shares it. */
export function loadAdminPackage(): PackageDefinition {
  adminPackage ??= loadSync(
    ADMIN_PROTO_FILES.map((f) => fileURLToPath(new URL(f, import.meta.url))),
    // includeDirs: image.proto imports blob.proto by its bare name.
    { ...PROTO_LOADER_OPTIONS, includeDirs: [fileURLToPath(new URL('.', import.meta.url))] },
  );
  return adminPackage;
}

/** A service definition from a loaded package, or a clear error if the name is not a service there. */
export function serviceDefinition(pkg: PackageDefinition, name: string): ServiceDefinition {
  const def = pkg[name];
  if (def === undefined || 'format' in def) throw new Error(`admin service ${name} is not defined in the loaded .proto files`);
  return def as ServiceDefinition;
}

/** A response as proto-loader hands it over: any field may be absent (proto3 `optional`, or a message not set). */
export type OptionalWire<T> = { [K in keyof T]?: T[K] | undefined };

/** An absent proto3 `optional` field as the admin client's null. */
export const nullIfAbsent = <T>(v: T | undefined | null): T | null => (v === undefined ? null : v);

export interface MemberInfo {
  name: string;
  peer_id: string;
  region: string;
  provider: string;
  trust: string;
  addrs: string[];
  connected: boolean;
  rtt_ms: number | null;
  link_mode: string;
  last_seen: string | null;
  last_error: string | null;
  phi: number | null;
  health: string;
}

export interface StatusResponse {
  name: string;
  peer_id: string;
  region: string;
  provider: string;
  trust: string;
  federation: string;
  version: string;
  listen_addrs: string[];
  started_at: string;
  uptime_seconds: number;
  members: MemberInfo[];
  scopes: ScopeInfo[];
}

/** Which log serves a write scope: raft | pbft | none. */
export interface ScopeInfo {
  scope: string;
  protocol: string;
  replicas: number;
}

export interface MembersResponse {
  members: MemberInfo[];
}

export type StatusRequest = Record<string, never>;
export type MembersRequest = Record<string, never>;

/**
 * One unary call on one admin service, as the client hands it to a
 * sub-client (vm-client.ts, blob-client.ts, state-client.ts): the method's
 * name, its request and response messages; `serverTimeoutMs` is the
 * request's own timeout, when it carries one.
 */
export type ServiceCall = <Req, Res>(method: string, request: Req, serverTimeoutMs?: number) => Promise<Res>;

// ---------------------------------------------------------------- Kv, Raft, Pbft

export interface KvWriteOptions {
  scope: string;
  client_id: string;
  seq: number;
  timeout_ms: number;
  /** strong (default) | quorum | local | eventual: see kv.proto. */
  consistency?: string;
  /** Geo levels only: expire the value this many ms after the write (0: never). */
  ttl_ms?: number;
}

export interface KvItem {
  key: string;
  value: Uint8Array;
  revision: number;
  create_revision: number;
  /** Geo levels: the region whose write the value is, and its HLC stamp ("wallMs.logical"); "" otherwise. */
  region: string;
  hlc: string;
}

export interface KvWriteResponse {
  ok: boolean;
  revision: number;
  reason: string;
  current_revision: number;
  prev: KvItem | null;
  leader: string;
  consistency: string;
  /** Geo levels: regions holding the write durably when it returned, of all regions. */
  regions_acked: number;
  regions_total: number;
}

export interface KvGetRequest {
  key: string;
  consistency: string;
  scope: string;
  prefix: boolean;
  limit: number;
  timeout_ms: number;
}

export interface KvGetResponse {
  items: KvItem[];
  applied_index: number;
  /** Geo levels: regions whose copies the answer merges, of all regions. */
  regions_answered: number;
  regions_total: number;
}

export interface RaftProgress {
  id: string;
  match: number;
  next: number;
  state: string;
  learner: boolean;
  recent_active: boolean;
}

export interface RaftStatusResponse {
  id: string;
  role: string;
  term: number;
  leader: string;
  commit_index: number;
  applied_index: number;
  last_index: number;
  last_term: number;
  snapshot_index: number;
  voters: string[];
  learners: string[];
  progress: RaftProgress[];
  pending_proposals: number;
}

export interface RaftMember {
  id: string;
  role: string;
  leader: boolean;
}

export interface RaftMembersResponse {
  members: RaftMember[];
}

export interface PbftStatusResponse {
  id: string;
  view: number;
  active: boolean;
  primary: string;
  f: number;
  replicas: string[];
  last_executed: number;
  stable_checkpoint: number;
  high_watermark: number;
  pending_requests: number;
  view_changes: number;
  client_in_flight: number;
  drops: { kind: string; count: number; byzantine: boolean }[];
}

// ---------------------------------------------------------------- Vm

export interface VmInstance {
  provider: string;
  kind: string;
  id: string;
  name: string;
  region: string;
  zone: string;
  type: string;
  vcpus: number | null;
  memory_mib: number | null;
  state: string;
  provider_state: string;
  tags: Record<string, string>;
  spot: boolean;
  launch_time: string | null;
  image: string | null;
  private_ip: string | null;
  public_ip: string | null;
}

export interface VmProviderStatus {
  name: string;
  kind: string;
  region: string;
  description: string;
  synced_at: string | null;
  restored: boolean;
  last_error: string | null;
  instances: number;
  pending_creates: number;
}

export interface ListInstancesRequest {
  providers: string[];
  states: string[];
  refresh: boolean;
  timeout_ms: number;
}

export interface ListInstancesResponse {
  instances: VmInstance[];
  providers: VmProviderStatus[];
}

export interface CreateInstanceRequest {
  provider: string;
  name: string;
  type: string;
  image: string;
  zone: string;
  tags: Record<string, string>;
  spot: boolean;
  user_data: string;
  timeout_ms: number;
}

export interface VmInstanceRequest {
  provider: string;
  id: string;
  timeout_ms: number;
  /** TerminateInstance only; absent from older clients (false). */
  keep_disk?: boolean;
}

export interface VmInstanceResponse {
  instance: VmInstance;
  warning: string | null;
}

export interface VmInstanceType {
  provider: string;
  kind: string;
  region: string;
  name: string;
  vcpus: number;
  memory_mib: number;
  architectures: string[];
  spot: boolean;
  on_demand_hourly: number | null;
}

export interface ListTypesRequest {
  providers: string[];
  timeout_ms: number;
}

export interface VmConsoleRequest {
  provider: string;
  vm: string;
  follow: boolean;
  tail_bytes: number;
}

/** The first message names the VM; the rest carry what its serial console wrote. */
export type VmConsoleMessage = { part: 'vm'; vm: { provider: string; id: string; name: string } } | { part: 'data'; data: Uint8Array };

export interface ListTypesResponse {
  types: VmInstanceType[];
  failures: { provider: string; message: string }[];
}

export interface EstimateCostRequest {
  provider: string;
  region: string;
  type: string;
  model: string;
  hours: number;
}

export interface EstimateCostResponse {
  provider: string;
  region: string;
  type: string;
  model: string;
  currency: string;
  hourly: number;
  hours: number;
  total: number;
  monthly: number;
  as_of: string;
  source: string;
  basis: string;
  live: boolean;
}

// ---------------------------------------------------------------- State

export interface RegionCount {
  region: string;
  count: number;
}

export interface CrdtEntry {
  key: string;
  type: string;
  value_json: string;
  clock: RegionCount[];
  expires_at: string | null;
}

export interface CrdtUpdateRequest {
  key: string;
  op: string;
  type: string;
  amount: number;
  element: string;
  field: string;
  value_json: string;
  consistency: string;
  timeout_ms: number;
  ttl_ms: number;
}

export interface CrdtUpdateResponse {
  entry: CrdtEntry;
  consistency: string;
  regions_acked: number;
  regions_total: number;
}

export interface CrdtGetRequest {
  key: string;
  type: string;
  consistency: string;
  timeout_ms: number;
}

export interface CrdtGetResponse {
  entries: CrdtEntry[];
  regions_answered: number;
  regions_total: number;
}

export interface RegionDigest {
  name: string;
  region: string;
  answered: boolean;
  digest: string;
  entries: number;
  clock: RegionCount[];
}

export interface StateDigestResponse {
  regions: RegionDigest[];
  converged: boolean;
}

// ---------------------------------------------------------------- Blob

/** How far a put or a transfer has got: the figures a progress message and a transfer's status share. */
export interface BlobProgressFigures {
  bytes_done: number;
  bytes_total: number;
  wire_bytes: number;
  rate_bytes_per_s: number | null;
  eta_seconds: number | null;
  elapsed_seconds: number;
}

export interface BlobProgress extends BlobProgressFigures {
  phase: string;
}

export interface BlobValue {
  key: string;
  version: string;
  size: number;
  chunks: number;
  stored_at: string;
  source: string;
}

export interface BlobSendResult {
  transfer_id: string;
  member: string;
  kind: string;
  needed_bytes: number;
  raw_bytes_sent: number;
  wire_bytes_sent: number;
  manifest_bytes_sent: number;
  reused_bytes: number;
  attempts: number;
  resumed: number;
  seconds: number;
  baseline_refuted: boolean;
  codecs: Record<string, number>;
  phase_seconds: Record<string, number>;
}

export interface BlobPutResult {
  stored: BlobValue;
  ingest_seconds: number;
  sent: BlobSendResult | null;
}

export interface BlobTransfer extends BlobProgressFigures {
  transfer_id: string;
  direction: string;
  member: string;
  key: string;
  version: string;
  kind: string;
  state: string;
  attempt: number;
  resumed: number;
  started_at: string;
  error: string | null;
}

export interface BlobStatusResponse {
  transfers: BlobTransfer[];
  values: BlobValue[];
  pack_bytes: number;
  packs: number;
  chunks: number;
}

export interface BlobCacheStatsResponse {
  hits: number;
  misses: number;
  evictions: number;
  expiries: number;
  refuted: number;
  bytes_saved: number;
  entries: number;
  capacity: number;
  ttl_ms: number;
  persist: boolean;
  hit_ratio: number | null;
}

export interface BlobPutRequest {
  path: string;
  key: string;
  to: string;
  streams: number;
}

// Fleet (fleet.proto): the fleet's observed state as every region sees it.

export interface FleetProvider {
  name: string;
  kind: string;
  location: string;
  capacity: { vcpus: number; memory_gib: number; disk_gib: number } | null;
  quota: { vcpus: number | null; instances: number | null } | null;
  used_vcpus: number;
  used_memory_mib: number;
  vms: number;
  last_error: string | null;
}

export interface FleetRegion {
  region: string;
  location: string | null;
  self: boolean;
  phi: number | null;
  health: string;
  report: string;
  report_age_seconds: number | null;
  provider_health: string | null;
  providers: FleetProvider[];
  vms_by_state: { state: string; count: number }[];
  vms: number;
  vcpus_used: number;
  /** vCPUs' worth of CPU recently used; null when no VM reports usage. */
  vcpus_busy: number | null;
  vcpus_total: number | null;
  memory_gib_used: number;
  memory_gib_total: number | null;
  price_per_hour: number;
  labels: Record<string, string>;
  jurisdiction: string | null;
  compliance: string[];
}

export interface FleetStatusResponse {
  self: string;
  now: string;
  stale_after_ms: number;
  regions: FleetRegion[];
  orphans: FleetVm[];
}

export interface FleetVmsRequest {
  regions: string[];
  labels: Record<string, string>;
}

export interface FleetVm {
  region: string;
  provider: string;
  id: string;
  name: string;
  type: string;
  zone: string;
  vcpus: number | null;
  memory_mib: number | null;
  state: string;
  last_state: string;
  tags: Record<string, string>;
  spot: boolean;
  launched_at: string | null;
  image: string | null;
  desired_vm: string | null;
  price_per_hour: number | null;
  report_age_seconds: number | null;
  /** Recent CPU and memory use as fractions (5 % steps); null when not measured. */
  cpu: number | null;
  memory: number | null;
}

// Fleet desired state (fleet.proto Place/Create/SetPower/Delete/ListDesired).

export interface FleetPlaceRequest {
  spec_json: string;
}

export interface FleetPlaceResponse {
  ok: boolean;
  region: string;
  provider: string;
  code: string;
  message: string;
  explain: string[];
  decision_json: string;
}

export interface FleetCreateRequest {
  spec_json: string;
  power: string;
  timeout_ms: number;
}

export interface FleetCreateResponse {
  vm: string;
  region: string;
  provider: string;
  /** uint64 as a decimal string (proto-loader longs: String). */
  generation: string;
  attempts: number;
  explain: string[];
}

export interface FleetPowerRequest {
  vm: string;
  power: string;
  timeout_ms: number;
}

export interface FleetVmRef {
  vm: string;
  timeout_ms: number;
}

export interface FleetDesiredRequest {
  vms: string[];
}

export interface FleetDesiredVm {
  name: string;
  vcpus: number;
  /** uint64 as a decimal string. */
  memory_bytes: string;
  image: string;
  power: string;
  region: string;
  provider: string;
  generation: string;
  deleted: boolean;
  status: string;
  reason: string | null;
  labels: Record<string, string>;
}

// Image (image.proto): the federation's guest images.

export interface ImageAddRequest {
  name: string;
  path: string;
  format: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  replace: boolean;
}

export interface ImagePartInfo {
  role: string;
  sha256: string;
  size: number;
  blob_version: string;
  local: boolean;
  path: string | null;
}

export interface ImageInfo {
  name: string;
  kind: string;
  format: string;
  sha256: string;
  size: number;
  virtual_size: number;
  cmdline: string;
  added_by: string;
  added_at: string;
  parts: ImagePartInfo[];
  holders: string[];
}

export interface ImageListResponse {
  images: ImageInfo[];
  problems: string[];
}

export interface ImagePullResponse {
  image: ImageInfo;
  seconds: number;
}

// Migrations (migration.proto).

export interface MigrationStartRequest {
  vm: string;
  region: string;
  provider: string;
  mode: string;
  max_downtime_ms: number;
  dry_run: boolean;
  timeout_ms: number;
  /** "" or "failback" (then region and provider default to where the VM failed over from). */
  purpose: string;
}

export interface MigrationInfo {
  id: string;
  vm: string;
  mode: string;
  source_region: string;
  source_provider: string;
  /** uint64 as a decimal string. */
  source_generation: string;
  target_region: string;
  target_provider: string;
  target_generation: string;
  phase: string;
  result: string | null;
  reason: string | null;
  bytes: string;
  rounds: number;
  downtime_ms: string | null;
  max_downtime_ms: number | null;
  started_at: string;
  updated_at: string;
  ended_at: string | null;
  waiting: string | null;
  transfer_step: string | null;
  transfer_status: string | null;
  transfer_bytes: string | null;
}

export interface MigrationStartResponse {
  ok: boolean;
  migration: MigrationInfo | null;
  code: string;
  message: string;
  plan: string[];
}

export interface MigrationRef {
  id: string;
  timeout_ms: number;
}

// Policy (policy.proto): the fleet's policy set, its dry run and its audit.

export interface PolicyDocumentWire {
  source: string;
  text: string;
}

export interface PolicyApplyRequest {
  documents: PolicyDocumentWire[];
  timeout_ms: number;
}

export interface PolicyApplyResponse {
  version: number;
  unchanged: boolean;
  policies: string[];
  rules: number;
}

export interface PolicySummary {
  name: string;
  description: string;
  rules: number;
  deny: number;
  audit: number;
  warn: number;
}

export interface PolicyListResponse {
  version: number;
  policies: PolicySummary[];
}

export interface PolicyRuleInfo {
  name: string;
  selector_json: string;
  condition: string;
  effect: string;
  message: string;
}

export interface PolicyInfo {
  version: number;
  name: string;
  description: string;
  rules: PolicyRuleInfo[];
}

export interface PolicyViolationInfo {
  vm: string;
  region: string;
  provider: string;
  generation: number;
  operation: string;
  policy: string;
  rule: string;
  effect: string;
  message: string;
  error: string | null;
}

export interface PolicyTestResponse {
  current_version: number;
  proposed_version: number;
  vms: number;
  violations: PolicyViolationInfo[];
  already: number;
}

export interface PolicyViolationsResponse {
  version: number;
  vms: number;
  violations: PolicyViolationInfo[];
}

// Disaster recovery (dr.proto).

export interface DrProtectRequest {
  vm: string;
  dr_region: string;
  dr_provider: string;
  /** uint64 as a decimal string (or a number from a caller); 0: the default. */
  rpo_ms: string | number;
  rto_ms: string | number;
  retention_ms: string | number;
  failback: string;
  timeout_ms: number;
}

export interface DrVmRef {
  vm: string;
  timeout_ms: number;
}

export interface DrVmStatusInfo {
  vm: string;
  state: string;
  region: string;
  /** uint64 as a decimal string. */
  generation: string;
  dr_region: string;
  dr_provider: string;
  rpo_target_ms: string;
  rto_target_ms: string;
  retention_ms: string;
  failback: string;
  failed_over_from: string | null;
  failover_reason: string | null;
  failed_over_at: string | null;
  last_backup_at: string | null;
  rpo_now_ms: string | null;
  rpo_over: boolean;
  rto_measured_ms: string | null;
  restored_backup: string | null;
  restored_backup_at: string | null;
  data_loss_ms: string | null;
}

export interface DrStatusResponse {
  vms: DrVmStatusInfo[];
  at: string;
}

export interface DrTestResponse {
  vm: string;
  test_vm: string;
  region: string;
  provider: string;
  restored_from: string;
  /** uint64 as a decimal string. */
  rto_ms: string;
  liveness: string;
  torn_down: boolean;
  production_untouched: boolean;
  network: string;
}
// ---------------------------------------------------------------------------
// Cost and budgets (cost.proto).

export interface CostReportRequest {
  by: string;
  month: string;
  top: number;
}

export interface CostReportResponse {
  report_json: string;
}

export interface BudgetSetRequest {
  budget_json: string;
  timeout_ms: number;
}

export interface BudgetInfo {
  budget_json: string;
}

export interface BudgetRef {
  name: string;
  timeout_ms: number;
}

// ---------------------------------------------------------------------------
// Cloud bursting (burst.proto).

export interface BurstStatusResponse {
  groups_json: string;
}

export interface BurstGroupSetRequest {
  group_json: string;
  timeout_ms: number;
}

export interface BurstGroupRef {
  name: string;
  timeout_ms: number;
}

// ---------------------------------------------------------------------------
// Cost optimiser (cost.proto Recommendations/Apply).

export interface RecommendationsRequest {
  refresh: boolean;
}

export interface RecommendationsResponse {
  recommendations_json: string;
}

export interface CostApplyRequest {
  id: string;
  confirm: boolean;
  timeout_ms: number;
}

export interface CostApplyResponse {
  result_json: string;
}
