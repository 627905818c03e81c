/**
 * The admin socket's Dr service (dr.proto): protect and unprotect a VM (log
 * commands, so any node holding a replica of the federation log can take
 * them) and the DR status of protected VMs as this node sees them.
 * Requests are checked at the edge (names, durations, the failback mode) and
 * refusals name the field; the log's refusals come back as coded errors
 * with its sentence.
 */
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { FleetResult } from '../fleet/commands.ts';
import { DR_FAILBACK_MODES, DR_RETENTION_RANGE_MS, DR_RPO_RANGE_MS, DR_RTO_RANGE_MS } from '../fleet/protection.ts';
import type { FleetSeat } from '../fleet/seat.ts';
import { drStatusOf, type DrFacts, type DrVmStatus } from '../dr/status.ts';
import { asyncUnary, invalidArgument as invalid, nameField as name, requireTimeout } from './call.ts';
import type { AdminServiceRegistration } from './server.ts';
import { DR_SERVICE, loadAdminPackage, type DrProtectRequest, type DrVmRef } from './schema.ts';

export interface DrAdminOptions {
  /** This node's part in desired state; null when it holds no replica of the federation log. */
  seat: FleetSeat | null;
  /** What this node knows of a VM's backups and last failover (the DR driver's); absent: nothing. */
  facts?: (vm: string) => Omit<DrFacts, 'now'>;
  defaultTimeoutMs: number;
  log: Logger;
}

const MAX_FILTERS = 256;
const NO_FACTS = { lastBackupAt: null, rtoMeasuredMs: null };


/** A uint64 duration field (a decimal string on the wire): 0 means the default. */
function duration(field: string, raw: string | number, range: readonly [number, number]): number | undefined {
  const ms = Number(raw);
  if (ms === 0) return undefined;
  if (!Number.isSafeInteger(ms) || ms < range[0] || ms > range[1]) throw invalid(`${field}: ${raw} ms is not from ${range[0]} to ${range[1]} ms`);
  return ms;
}

function refusal(result: Extract<FleetResult, { ok: false }>): DwcpError {
  const code = result.code === 'unknown_vm' || result.code === 'unknown_region' ? 'not_found' : 'rejected';
  return new DwcpError(code, `${result.code}: ${result.message}`, { retryable: result.code === 'stale_generation' });
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

export function drStatusToWire(s: DrVmStatus): Record<string, unknown> {
  return {
    vm: s.vm,
    state: s.state,
    region: s.region ?? '',
    generation: String(s.generation),
    dr_region: s.drRegion ?? '',
    dr_provider: s.drProvider ?? '',
    rpo_target_ms: String(s.rpoTargetMs),
    rto_target_ms: String(s.rtoTargetMs),
    retention_ms: String(s.retentionMs),
    failback: s.failback,
    failed_over_from: s.failedOver?.from,
    failover_reason: s.failedOver?.reason,
    failed_over_at: s.failedOver === null ? undefined : iso(s.failedOver.at),
    last_backup_at: s.lastBackupAt === null ? undefined : iso(s.lastBackupAt),
    rpo_now_ms: s.rpoNowMs === null ? undefined : String(s.rpoNowMs),
    rpo_over: s.rpoOver,
    rto_measured_ms: s.rtoMeasuredMs === null ? undefined : String(s.rtoMeasuredMs),
    restored_backup: s.restored?.key,
    restored_backup_at: s.restored === null ? undefined : iso(s.restored.takenAt),
    data_loss_ms: s.restored === null ? undefined : String(s.restored.dataLossMs),
  };
}

export function drServiceRegistration(opts: DrAdminOptions): AdminServiceRegistration {
  function seat(): FleetSeat {
    if (opts.seat === null) throw new DwcpError('unsupported', 'this node holds no replica of the federation log, so it cannot protect VMs or show their DR status');
    return opts.seat;
  }

  function statusOf(vm: string, now: number): Record<string, unknown> {
    const state = seat().state;
    const record = state.vm(vm);
    if (record === undefined || record.deleted) throw new DwcpError('not_found', `vm: no VM named ${vm}`);
    return drStatusToWire(drStatusOf(record, state.migrationOf(vm), { now, ...(opts.facts?.(vm) ?? NO_FACTS) }));
  }

  async function protect(r: DrProtectRequest): Promise<Record<string, unknown>> {
    const vm = name('vm', r.vm);
    const drRegion = name('dr_region', r.dr_region);
    const drProvider = name('dr_provider', r.dr_provider, true);
    const failback = r.failback === '' ? undefined : r.failback;
    if (failback !== undefined && !(DR_FAILBACK_MODES as readonly string[]).includes(failback)) throw invalid(`failback: ${JSON.stringify(r.failback)} is not one of ${DR_FAILBACK_MODES.join(', ')}`);
    const rpoMs = duration('rpo_ms', r.rpo_ms, DR_RPO_RANGE_MS);
    const rtoMs = duration('rto_ms', r.rto_ms, DR_RTO_RANGE_MS);
    const retentionMs = duration('retention_ms', r.retention_ms, DR_RETENTION_RANGE_MS);
    const command = {
      kind: 'protect' as const,
      vm,
      drRegion,
      ...(drProvider === '' ? {} : { drProvider }),
      ...(rpoMs === undefined ? {} : { rpoMs }),
      ...(rtoMs === undefined ? {} : { rtoMs }),
      ...(retentionMs === undefined ? {} : { retentionMs }),
      ...(failback === undefined ? {} : { failback: failback as (typeof DR_FAILBACK_MODES)[number] }),
    };
    const result = await seat().command(command, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return statusOf(vm, Date.now());
  }

  async function unprotect(r: DrVmRef): Promise<Record<string, unknown>> {
    const vm = name('vm', r.vm);
    const result = await seat().command({ kind: 'unprotect', vm }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return statusOf(vm, Date.now());
  }

  async function status(r: { vms: string[] }): Promise<Record<string, unknown>> {
    if (r.vms.length > MAX_FILTERS) throw invalid(`vms: at most ${MAX_FILTERS}`);
    r.vms.forEach((v, i) => name(`vms[${i}]`, v));
    const now = Date.now();
    const state = seat().state;
    const names = r.vms.length > 0 ? [...new Set(r.vms)].sort() : state.vms().filter((vm) => !vm.deleted && vm.protection !== null).map((vm) => vm.name);
    return { vms: names.map((vm) => statusOf(vm, now)), at: iso(now) };
  }

  return {
    name: DR_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Protect: asyncUnary(opts.log, 'Protect', protect),
      Unprotect: asyncUnary(opts.log, 'Unprotect', unprotect),
      Status: asyncUnary(opts.log, 'Status', status),
    },
  };
}
