/**
 * The Dr admin service (dr.proto) as the admin client exposes it: the `.dr`
 * sub-client, responses in the .proto's snake_case.
 *
 * Invariant (as for the rest of the admin client): every response has every
 * field, proto3 `optional` fields absent on the wire become null.
 */
import type { DrProtectRequest, DrStatusResponse, DrTestResponse, DrVmRef, DrVmStatusInfo, ServiceCall, OptionalWire as Wire } from './schema.ts';
import { nullIfAbsent as opt } from './schema.ts';

export interface DrClient {
  protect(request: DrProtectRequest): Promise<DrVmStatusInfo>;
  unprotect(request: DrVmRef): Promise<DrVmStatusInfo>;
  status(vms: string[]): Promise<DrStatusResponse>;
  test(request: DrVmRef): Promise<DrTestResponse>;
}

function statusFromWire(s: Wire<DrVmStatusInfo>): DrVmStatusInfo {
  return {
    vm: s.vm ?? '',
    state: s.state ?? '',
    region: s.region ?? '',
    generation: s.generation ?? '0',
    dr_region: s.dr_region ?? '',
    dr_provider: s.dr_provider ?? '',
    rpo_target_ms: s.rpo_target_ms ?? '0',
    rto_target_ms: s.rto_target_ms ?? '0',
    retention_ms: s.retention_ms ?? '0',
    failback: s.failback ?? '',
    failed_over_from: opt(s.failed_over_from),
    failover_reason: opt(s.failover_reason),
    failed_over_at: opt(s.failed_over_at),
    last_backup_at: opt(s.last_backup_at),
    rpo_now_ms: opt(s.rpo_now_ms),
    rpo_over: s.rpo_over ?? false,
    rto_measured_ms: opt(s.rto_measured_ms),
    restored_backup: opt(s.restored_backup),
    restored_backup_at: opt(s.restored_backup_at),
    data_loss_ms: opt(s.data_loss_ms),
  };
}

export function drClient(call: ServiceCall): DrClient {
  return {
    protect: async (request) => statusFromWire(await call<DrProtectRequest, Wire<DrVmStatusInfo>>('Protect', request)),
    unprotect: async (request) => statusFromWire(await call<DrVmRef, Wire<DrVmStatusInfo>>('Unprotect', request)),
    status: async (vms) => {
      const r = await call<{ vms: string[] }, { vms?: Wire<DrVmStatusInfo>[]; at?: string }>('Status', { vms });
      return { vms: (r.vms ?? []).map(statusFromWire), at: r.at ?? '' };
    },
    test: async (request) => {
      const r = await call<DrVmRef, Partial<DrTestResponse>>('Test', request);
      return {
        vm: r.vm ?? '',
        test_vm: r.test_vm ?? '',
        region: r.region ?? '',
        provider: r.provider ?? '',
        restored_from: r.restored_from ?? '',
        rto_ms: r.rto_ms ?? '0',
        liveness: r.liveness ?? '',
        torn_down: r.torn_down ?? false,
        production_untouched: r.production_untouched ?? false,
        network: r.network ?? '',
      };
    },
  };
}
