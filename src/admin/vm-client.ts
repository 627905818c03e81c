/**
 * The Vm admin service (vm.proto) as the admin client exposes it: request
 * and response types in the .proto's snake_case, and the `.vm` sub-client
 * built on the client's call function.
 *
 * Invariant (as for the rest of the admin client): every response has every
 * field, proto3 `optional` fields absent on the wire become null, and the
 * decoder's extras (oneof markers) are dropped by rebuilding each message
 * field by field in .proto order.
 */
import type { CreateInstanceRequest, EstimateCostRequest, EstimateCostResponse, ListInstancesRequest, ListInstancesResponse, ListTypesRequest, ListTypesResponse, ServiceCall, VmConsoleMessage, VmConsoleRequest, VmInstance, VmInstanceRequest, VmInstanceResponse, VmInstanceType, VmProviderStatus } from './schema.ts';
import { serverStream, type StreamTransport } from './server-stream.ts';

export interface VmClient {
  listInstances(request: ListInstancesRequest): Promise<ListInstancesResponse>;
  createInstance(request: CreateInstanceRequest): Promise<VmInstanceResponse>;
  startInstance(request: VmInstanceRequest): Promise<VmInstanceResponse>;
  stopInstance(request: VmInstanceRequest): Promise<VmInstanceResponse>;
  terminateInstance(request: VmInstanceRequest): Promise<VmInstanceResponse>;
  listTypes(request: ListTypesRequest): Promise<ListTypesResponse>;
  estimateCost(request: EstimateCostRequest): Promise<EstimateCostResponse>;
  /**
   * A guest's serial console: `onVm` once with the VM it resolved to, then
   * `onData` with each piece in order; resolves when the daemon ends the
   * stream (at once without follow). A followed console may be silent for
   * long, so only an unfollowed one has a deadline between messages.
   */
  console(request: VmConsoleRequest, onData: (bytes: Uint8Array) => Promise<void> | void, onVm?: (vm: { provider: string; id: string; name: string }) => void): Promise<void>;
}

/** A message as proto-loader decodes it: proto3 optional fields may be missing. */
type Wire<T> = { [K in keyof T]: null extends T[K] ? Exclude<T[K], null> | undefined : T[K] };

function instanceFromWire(i: Wire<VmInstance>): VmInstance {
  return {
    provider: i.provider,
    kind: i.kind,
    id: i.id,
    name: i.name,
    region: i.region,
    zone: i.zone,
    type: i.type,
    vcpus: i.vcpus ?? null,
    memory_mib: i.memory_mib ?? null,
    state: i.state,
    provider_state: i.provider_state,
    tags: { ...i.tags },
    spot: i.spot,
    launch_time: i.launch_time ?? null,
    image: i.image ?? null,
    private_ip: i.private_ip ?? null,
    public_ip: i.public_ip ?? null,
  };
}

function statusFromWire(s: Wire<VmProviderStatus>): VmProviderStatus {
  return {
    name: s.name,
    kind: s.kind,
    region: s.region,
    description: s.description,
    synced_at: s.synced_at ?? null,
    restored: s.restored,
    last_error: s.last_error ?? null,
    instances: s.instances,
    pending_creates: s.pending_creates,
  };
}

function instanceResponseFromWire(r: { instance: Wire<VmInstance>; warning?: string }): VmInstanceResponse {
  return { instance: instanceFromWire(r.instance), warning: r.warning ?? null };
}

function typeFromWire(t: Wire<VmInstanceType>): VmInstanceType {
  return {
    provider: t.provider,
    kind: t.kind,
    region: t.region,
    name: t.name,
    vcpus: t.vcpus,
    memory_mib: t.memory_mib,
    architectures: t.architectures,
    spot: t.spot,
    on_demand_hourly: t.on_demand_hourly ?? null,
  };
}

export function vmClient(call: ServiceCall, stream: StreamTransport): VmClient {
  type InstanceWire = { instance: Wire<VmInstance>; warning?: string };
  const instanceCall = async <Req extends { timeout_ms: number }>(method: string, request: Req) =>
    instanceResponseFromWire(await call<Req, InstanceWire>(method, request, request.timeout_ms || undefined));
  return {
    listInstances: async (request) => {
      const res = await call<ListInstancesRequest, { instances: Wire<VmInstance>[]; providers: Wire<VmProviderStatus>[] }>('ListInstances', request, request.timeout_ms || undefined);
      return { instances: res.instances.map(instanceFromWire), providers: res.providers.map(statusFromWire) };
    },
    createInstance: (request) => instanceCall('CreateInstance', request),
    startInstance: (request) => instanceCall('StartInstance', request),
    stopInstance: (request) => instanceCall('StopInstance', request),
    terminateInstance: (request) => instanceCall('TerminateInstance', request),
    listTypes: async (request) => {
      const res = await call<ListTypesRequest, { types: Wire<VmInstanceType>[]; failures: { provider: string; message: string }[] }>('ListTypes', request, request.timeout_ms || undefined);
      return { types: res.types.map(typeFromWire), failures: res.failures.map((f) => ({ provider: f.provider, message: f.message })) };
    },
    console: (request, onData, onVm) =>
      serverStream<VmConsoleMessage>(
        stream,
        'Console',
        request,
        async (m) => {
          if (m.part === 'vm') onVm?.({ provider: m.vm.provider, id: m.vm.id, name: m.vm.name });
          else await onData(m.data);
        },
        request.follow ? null : stream.timeoutMs,
      ),
    estimateCost: async (request) => {
      const r = await call<EstimateCostRequest, EstimateCostResponse>('EstimateCost', request);
      return {
        provider: r.provider,
        region: r.region,
        type: r.type,
        model: r.model,
        currency: r.currency,
        hourly: r.hourly,
        hours: r.hours,
        total: r.total,
        monthly: r.monthly,
        as_of: r.as_of,
        source: r.source,
        basis: r.basis,
        live: r.live,
      };
    },
  };
}
