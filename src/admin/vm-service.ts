/**
 * The admin socket's Vm service (vm.proto) over the CloudInventory: checks
 * each request at the edge (states, pricing model, hours, required fields;
 * errors name the field), bounds every call by its timeout (an AbortSignal
 * the providers honour), and turns provider failures into the gRPC status an
 * operator's script can branch on (see vm.proto): the cloud's own message
 * travels verbatim in the details. Console streams a guest's serial log
 * (file-tail.ts) at the pace the client reads it, until the client cancels.
 */
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { CloudInventory, InventoryEntry, ProviderStatus } from '../cloud/inventory.ts';
import { HOURS_PER_MONTH, PRICING_MODELS } from '../cloud/pricing/catalog.ts';
import {
  CancelledError,
  INSTANCE_STATES,
  type InstanceState,
} from '../cloud/provider.ts';
import { asyncStreaming, asyncUnary, requireTimeout, send } from './call.ts';
import { tailFile } from './file-tail.ts';
import { loadAdminPackage } from './schema.ts';
import type { AdminServiceRegistration } from './server.ts';
import { VM_SERVICE, type CreateInstanceRequest, type EstimateCostRequest, type EstimateCostResponse, type ListInstancesRequest, type ListTypesRequest, type VmConsoleRequest, type VmInstanceRequest } from './schema.ts';

/** Reads answer from memory or one listing; long operations wait for a cloud state change. */
export const DEFAULT_READ_TIMEOUT_MS = 30_000;
export const DEFAULT_OPERATION_TIMEOUT_MS = 600_000;

export interface VmServiceOptions {
  inventory: CloudInventory;
  log: Logger;
}

function invalid(message: string): DwcpError {
  return new DwcpError('invalid', message);
}

/** proto3 `optional` fields are left out rather than sent as null. */
function present<T extends Record<string, unknown>>(fields: T): { [K in keyof T]: Exclude<T[K], null> | undefined } {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== null)) as { [K in keyof T]: Exclude<T[K], null> | undefined };
}

function instanceToWire({ provider, instance: i }: InventoryEntry) {
  return present({
    provider,
    kind: i.provider,
    id: i.id,
    name: i.name,
    region: i.region,
    zone: i.zone,
    type: i.type,
    vcpus: i.vcpus,
    memory_mib: i.memoryMiB,
    state: i.state,
    provider_state: i.providerState,
    tags: { ...i.tags },
    spot: i.spot,
    launch_time: i.launchTime?.toISOString() ?? null,
    image: i.image,
    private_ip: i.privateIp,
    public_ip: i.publicIp,
  });
}

function statusToWire(s: ProviderStatus) {
  return present({
    name: s.name,
    kind: s.kind,
    region: s.region,
    description: s.description,
    synced_at: s.syncedAt?.toISOString() ?? null,
    restored: s.restored,
    last_error: s.lastError,
    instances: s.instances,
    pending_creates: s.pendingCreates,
  });
}

function states(raw: readonly string[]): InstanceState[] {
  return raw.map((s, i) => {
    const state = INSTANCE_STATES.find((x) => x === s);
    if (state === undefined) throw invalid(`states[${i}]: ${JSON.stringify(s)} is not one of ${INSTANCE_STATES.join('|')}`);
    return state;
  });
}

function required(field: string, value: string): string {
  if (value.trim() === '') throw invalid(`${field}: required`);
  return value;
}

/**
 * A failure as the status an operator can act on: provider, inventory and
 * pricing errors are DwcpErrors and keep their code and the cloud's message;
 * only a cancelled provider call is rephrased, since the signal was this
 * call's own (its timeout, or the daemon stopping) and a retry may succeed.
 * `call` is the request's timeout and signal, to say which.
 */
function failure(err: unknown, call?: { timeoutMs: number; signal: AbortSignal }): unknown {
  if (!(err instanceof CancelledError)) return err;
  if (call === undefined) return new DwcpError('unavailable', err.message, { cause: err });
  const timedOut = call.signal.reason instanceof DOMException && call.signal.reason.name === 'TimeoutError';
  const why = timedOut ? `did not finish within the ${call.timeoutMs} ms timeout` : 'was cut short: dwcpd is stopping';
  return new DwcpError('unavailable', `${err.message}; the call ${why}, and anything the cloud accepted goes on`, { cause: err });
}

export function vmServiceRegistration(opts: VmServiceOptions): AdminServiceRegistration {
  const { inventory, log } = opts;

  /** Runs `work` under the request's timeout; its signal fires when the timeout passes. */
  async function bounded<T>(rawTimeout: number, fallbackMs: number, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const timeoutMs = requireTimeout(rawTimeout, fallbackMs);
    const signal = AbortSignal.timeout(timeoutMs);
    try {
      return await work(signal);
    } catch (err) {
      throw failure(err, { timeoutMs, signal });
    }
  }

  const change = (operation: 'start' | 'stop' | 'terminate') => (r: VmInstanceRequest) =>
    bounded(r.timeout_ms, DEFAULT_OPERATION_TIMEOUT_MS, async (signal) => {
      const entry = await inventory.change(operation, required('id', r.id), { provider: r.provider, signal, ...(r.keep_disk === true ? { keepDisk: true } : {}) });
      return { instance: instanceToWire(entry) };
    });

  return {
    name: VM_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      ListInstances: asyncUnary(log, 'ListInstances', (r: ListInstancesRequest) =>
        bounded(r.timeout_ms, DEFAULT_READ_TIMEOUT_MS, async (signal) => {
          const out = await inventory.list({ providers: r.providers, states: states(r.states), refresh: r.refresh, signal });
          return { instances: out.instances.map(instanceToWire), providers: out.statuses.map(statusToWire) };
        }),
      ),
      CreateInstance: asyncUnary(log, 'CreateInstance', (r: CreateInstanceRequest) =>
        bounded(r.timeout_ms, DEFAULT_OPERATION_TIMEOUT_MS, async (signal) => {
          const request = {
            name: required('name', r.name),
            type: required('type', r.type),
            image: required('image', r.image),
            tags: r.tags,
            spot: r.spot,
            ...(r.zone !== '' ? { zone: r.zone } : {}),
            ...(r.user_data !== '' ? { userData: r.user_data } : {}),
          };
          const out = await inventory.create(r.provider, request, { signal });
          return present({ instance: instanceToWire(out), warning: out.warning });
        }),
      ),
      StartInstance: asyncUnary(log, 'StartInstance', change('start')),
      StopInstance: asyncUnary(log, 'StopInstance', change('stop')),
      TerminateInstance: asyncUnary(log, 'TerminateInstance', change('terminate')),
      ListTypes: asyncUnary(log, 'ListTypes', (r: ListTypesRequest) =>
        bounded(r.timeout_ms, DEFAULT_READ_TIMEOUT_MS, async (signal) => {
          const out = await inventory.types({ providers: r.providers, signal });
          return {
            types: out.types.map((t) =>
              present({
                provider: t.provider,
                kind: t.kind,
                region: t.region,
                name: t.type.name,
                vcpus: t.type.vcpus,
                memory_mib: t.type.memoryMiB,
                architectures: [...t.type.architectures],
                spot: t.type.spot,
                on_demand_hourly: t.onDemandHourly,
              }),
            ),
            failures: out.failures,
          };
        }),
      ),
      Console: asyncStreaming<Omit<VmConsoleRequest, 'tail_bytes'> & { tail_bytes: number | string }>(log, 'Console', async (call) => {
        const r = call.request;
        const tailBytes = Number(r.tail_bytes);
        if (!Number.isSafeInteger(tailBytes) || tailBytes < 0) throw invalid(`tail_bytes: ${String(r.tail_bytes)} is not a byte count`);
        const target = inventory.console(required('vm', r.vm), { provider: r.provider });
        const ended = new AbortController();
        call.on('cancelled', () => ended.abort());
        await send(call, { vm: { provider: target.provider, id: target.id, name: target.name } });
        for await (const data of tailFile(target.path, { tailBytes, follow: r.follow, signal: ended.signal })) {
          if (call.cancelled) return;
          await send(call, { data });
        }
        call.end();
      }),
      EstimateCost: asyncUnary(log, 'EstimateCost', async (r: EstimateCostRequest): Promise<EstimateCostResponse> => {
        const model = r.model === '' ? 'on-demand' : PRICING_MODELS.find((m) => m === r.model);
        if (model === undefined) throw invalid(`model: ${JSON.stringify(r.model)} is not one of ${PRICING_MODELS.join('|')}`);
        const hours = r.hours === 0 ? HOURS_PER_MONTH : r.hours;
        try {
          const e = inventory.catalog.estimate({ provider: required('provider', r.provider), region: required('region', r.region), type: required('type', r.type), model, hours });
          return {
            provider: e.provider,
            region: e.region,
            type: e.type,
            model: e.model,
            currency: e.currency,
            hourly: e.hourly,
            hours: e.hours,
            total: e.total,
            monthly: e.monthly,
            as_of: e.asOf,
            source: e.source,
            basis: e.basis,
            live: e.live,
          };
        } catch (err) {
          throw failure(err);
        }
      }),
    },
  };
}
