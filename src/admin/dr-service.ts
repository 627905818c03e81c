/**
 * The admin socket's Dr service (dr.proto): protect and unprotect a VM (log
 * commands, so any node holding a replica of the federation log can take
 * them), the DR status of protected VMs as this node sees them, and a DR
 * test (src/dr/drill.ts: an isolated copy in the DR region, created through
 * the fleet, seen running, measured, deleted).
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
import type { FleetView } from '../fleet/fleet-view.ts';
import { planDrTest, productionOf } from '../dr/drill.ts';
import { randomBytes } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { DR_SERVICE, loadAdminPackage, type DrProtectRequest, type DrVmRef } from './schema.ts';

export interface DrAdminOptions {
  /** This node's part in desired state; null when it holds no replica of the federation log. */
  seat: FleetSeat | null;
  /** What this node knows of a VM's backups and last failover (the DR driver's); absent: nothing. */
  facts?: (vm: string) => Omit<DrFacts, 'now'>;
  defaultTimeoutMs: number;
  /** The fleet as this node sees it (where a DR test's copy is seen running); absent: dr test is not offered. */
  view?: () => FleetView;
  log: Logger;
}

/** How often a DR test looks at the fleet view for its copy. */
const DR_TEST_POLL_MS = 200;
const DR_TEST_DEFAULT_TIMEOUT_MS = 10 * 60_000;

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

  /** The DR test's copy as the fleet view shows it at its region: running, failed (with the reason), or not yet. */
  function copyState(view: FleetView, region: string, vm: string): { running: boolean; failed: string | null; live: boolean } {
    const copy = view.vms.find((v) => v.region === region && v.desiredVm === vm);
    const failed = view.regions.find((r) => r.region === region)?.failed.find((f) => f.vm === vm);
    return { running: copy?.shownState === 'running', failed: failed === undefined ? null : (failed.reason ?? 'failed'), live: copy !== undefined && copy.lastState !== 'terminated' };
  }

  async function test(r: DrVmRef): Promise<Record<string, unknown>> {
    const view = opts.view;
    if (view === undefined) throw new DwcpError('unsupported', 'this node cannot see the fleet, so it cannot run a DR test');
    const vm = name('vm', r.vm);
    const s = seat();
    const timeoutMs = r.timeout_ms === 0 ? DR_TEST_DEFAULT_TIMEOUT_MS : r.timeout_ms;
    const deadline = performance.now() + timeoutMs;
    const remaining = (floor: number): number => Math.max(floor, Math.ceil(deadline - performance.now()));
    const plan = planDrTest(s.state.vm(vm), vm, (region, provider) => s.state.region(region)?.providers.find((p) => p.name === provider)?.kind, randomBytes(2).toString('hex'));
    const before = productionOf(s.state.vm(vm));
    const testVm = plan.spec.name;
    const started = performance.now();
    const created = await s.create(plan.spec, 'running', remaining(1));
    if (!created.ok) throw new DwcpError('rejected', `dr test of ${vm}: ${testVm} could not be placed at ${plan.region}/${plan.provider} (${created.code}): ${created.reasons.join('; ')}`);
    opts.log.info({ vm, testVm, region: plan.region, provider: plan.provider }, 'DR test: isolated copy created');
    let rtoMs: number | null = null;
    let failure: string | null = null;
    try {
      while (performance.now() < deadline) {
        const seen = copyState(view(), plan.region, testVm);
        if (seen.running) {
          rtoMs = Math.round(performance.now() - started);
          break;
        }
        if (seen.failed !== null) {
          failure = seen.failed;
          break;
        }
        await delay(DR_TEST_POLL_MS);
      }
    } finally {
      // Torn down whatever happened: the copy is deleted (the DR region's reconciler terminates it).
      const deleted = await s.command({ kind: 'delete', vm: testVm }, remaining(5_000));
      if (!deleted.ok) opts.log.warn({ vm, testVm, code: deleted.code, err: deleted.message }, 'DR test: deleting the isolated copy was refused');
    }
    let tornDown = false;
    while (!tornDown && performance.now() < deadline + 60_000) {
      tornDown = !copyState(view(), plan.region, testVm).live;
      if (!tornDown) await delay(DR_TEST_POLL_MS);
    }
    const untouched = productionOf(s.state.vm(vm)) === before;
    opts.log.info({ vm, testVm, rtoMs, failure, tornDown, untouched }, 'DR test: done');
    if (rtoMs === null) throw new DwcpError(failure === null ? 'timeout' : 'rejected', `dr test of ${vm}: ${testVm} at ${plan.region}/${plan.provider} ${failure === null ? `was not running within ${timeoutMs} ms` : `failed: ${failure}`} (deleted again)`);
    return {
      vm,
      test_vm: testVm,
      region: plan.region,
      provider: plan.provider,
      restored_from: plan.restoredFrom,
      rto_ms: String(rtoMs),
      liveness: `reported running by ${plan.region}'s reconciler (qemu: QEMU's run state over QMP)`,
      torn_down: tornDown,
      production_untouched: untouched,
      network: 'none (the provider gives guests no network interface)',
    };
  }

  return {
    name: DR_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Protect: asyncUnary(opts.log, 'Protect', protect),
      Unprotect: asyncUnary(opts.log, 'Unprotect', unprotect),
      Status: asyncUnary(opts.log, 'Status', status),
      Test: asyncUnary(opts.log, 'Test', test),
    },
  };
}
