/**
 * The Migration admin service (migration.proto) as the admin client exposes
 * it: the `.migration` sub-client, responses in the .proto's snake_case.
 *
 * Invariant (as for the rest of the admin client): every response has every
 * field, proto3 `optional` fields absent on the wire become null.
 */
import type { MigrationInfo, MigrationRef, MigrationStartRequest, MigrationStartResponse, ServiceCall, OptionalWire as Wire } from './schema.ts';
import { nullIfAbsent as opt } from './schema.ts';

export interface MigrationClient {
  start(request: MigrationStartRequest): Promise<MigrationStartResponse>;
  list(vms: string[]): Promise<MigrationInfo[]>;
  status(request: MigrationRef): Promise<MigrationInfo>;
  cancel(request: MigrationRef): Promise<MigrationInfo>;
}

function infoFromWire(m: Wire<MigrationInfo>): MigrationInfo {
  return {
    id: m.id ?? '',
    vm: m.vm ?? '',
    mode: m.mode ?? '',
    source_region: m.source_region ?? '',
    source_provider: m.source_provider ?? '',
    source_generation: m.source_generation ?? '0',
    target_region: m.target_region ?? '',
    target_provider: m.target_provider ?? '',
    target_generation: m.target_generation ?? '0',
    phase: m.phase ?? '',
    result: opt(m.result),
    reason: opt(m.reason),
    bytes: m.bytes ?? '0',
    rounds: m.rounds ?? 0,
    downtime_ms: opt(m.downtime_ms),
    max_downtime_ms: opt(m.max_downtime_ms),
    started_at: m.started_at ?? '',
    updated_at: m.updated_at ?? '',
    ended_at: opt(m.ended_at),
    waiting: opt(m.waiting),
    transfer_step: opt(m.transfer_step),
    transfer_status: opt(m.transfer_status),
    transfer_bytes: opt(m.transfer_bytes),
  };
}

export function migrationClient(call: ServiceCall): MigrationClient {
  return {
    start: async (request) => {
      const r = await call<MigrationStartRequest, Wire<Omit<MigrationStartResponse, 'migration'>> & { migration?: Wire<MigrationInfo> | null }>('Start', request);
      return { ok: r.ok ?? false, migration: r.migration === undefined || r.migration === null ? null : infoFromWire(r.migration), code: r.code ?? '', message: r.message ?? '', plan: [...(r.plan ?? [])] };
    },
    list: async (vms) => ((await call<{ vms: string[] }, { migrations?: Wire<MigrationInfo>[] }>('List', { vms })).migrations ?? []).map(infoFromWire),
    status: async (request) => infoFromWire(await call<MigrationRef, Wire<MigrationInfo>>('Status', request)),
    cancel: async (request) => infoFromWire(await call<MigrationRef, Wire<MigrationInfo>>('Cancel', request)),
  };
}
