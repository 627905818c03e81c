/**
 * The admin socket's Migration service (migration.proto): start (or plan)
 * a migration, list, show and cancel migrations, on any node that holds a
 * replica of the federation log. Requests are checked at the edge (names,
 * modes, the downtime bound) and refusals name the field; the log's
 * refusals come back as coded errors with its sentence.
 */
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import type { FleetResult } from '../fleet/commands.ts';
import { MIGRATION_MAX_DOWNTIME_MS, MIGRATION_MODES, compareMigrations, type FleetMigration, type MigrationMode } from '../fleet/migrations.ts';
import type { FleetSeat } from '../fleet/seat.ts';
import { asyncUnary, invalidArgument as invalid, nameField as name, requireTimeout } from './call.ts';
import type { AdminServiceRegistration } from './server.ts';
import { MIGRATION_SERVICE, loadAdminPackage, type MigrationRef, type MigrationStartRequest } from './schema.ts';

export interface MigrationAdminOptions {
  /** This node's part in desired state; null when it holds no replica of the federation log. */
  seat: FleetSeat | null;
  defaultTimeoutMs: number;
  log: Logger;
}

const MAX_FILTERS = 64;
const ID = /^m[1-9][0-9]{0,15}$/;


function migrationRef(r: MigrationRef): string {
  if (!ID.test(r.id)) throw invalid(`id: ${JSON.stringify(r.id)} is not a migration id (m and a number, e.g. m12)`);
  return r.id;
}

/** A refusal of the log as the coded error dwcpctl prints. */
function refusal(result: Extract<FleetResult, { ok: false }>): DwcpError {
  const code = result.code === 'unknown_vm' || result.code === 'unknown_migration' ? 'not_found' : result.code === 'insufficient_capacity' || result.code === 'migration_limit' ? 'exhausted' : 'rejected';
  return new DwcpError(code, `${result.code}: ${result.message}`, { retryable: result.code === 'migration_limit' || result.code === 'stale_generation' });
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

export function migrationServiceRegistration(opts: MigrationAdminOptions): AdminServiceRegistration {
  function seat(): FleetSeat {
    if (opts.seat === null) throw new DwcpError('unsupported', 'this node holds no replica of the federation log, so it cannot start or show migrations');
    return opts.seat;
  }

  function toWire(m: FleetMigration): Record<string, unknown> {
    const progress = m.result === null ? seat().migrationProgress(m.id) : undefined;
    const transfer = progress?.transfer ?? null;
    return {
      id: m.id,
      vm: m.vm,
      mode: m.mode,
      source_region: m.source.region,
      source_provider: m.source.provider,
      source_generation: String(m.source.generation),
      target_region: m.target.region,
      target_provider: m.target.provider,
      target_generation: String(m.target.generation),
      phase: m.phase,
      result: m.result ?? undefined,
      reason: m.reason ?? undefined,
      bytes: String(m.facts.bytes ?? 0),
      rounds: m.facts.rounds ?? 0,
      downtime_ms: m.facts.downtimeMs === undefined ? undefined : String(m.facts.downtimeMs),
      max_downtime_ms: m.maxDowntimeMs ?? undefined,
      started_at: iso(m.startedAt),
      updated_at: iso(m.updatedAt),
      ended_at: m.endedAt === null ? undefined : iso(m.endedAt),
      waiting: progress?.waiting,
      transfer_step: transfer?.step,
      transfer_status: transfer?.status,
      transfer_bytes: transfer === null ? undefined : String(transfer.bytes),
    };
  }

  function find(id: string): FleetMigration {
    const m = seat().state.migration(id);
    if (m === undefined) throw new DwcpError('not_found', `id: no migration ${id} is under way or remembered`);
    return m;
  }

  async function start(r: MigrationStartRequest): Promise<Record<string, unknown>> {
    const vm = name('vm', r.vm);
    if (r.purpose !== '' && r.purpose !== 'failback') throw invalid(`purpose: ${JSON.stringify(r.purpose)} is not failback (or empty)`);
    const failback = r.purpose === 'failback';
    // A failback goes where the VM failed over from: the region (and provider) may be left to the log's record.
    const home = failback ? seat().state.vm(vm)?.protection?.failedOver?.from : undefined;
    if (failback && home === undefined) throw new DwcpError('rejected', `vm: ${vm} is not failed over (nothing to fail back)`);
    const region = name('region', r.region === '' && home !== undefined ? home.region : r.region);
    const provider = name('provider', r.provider === '' && home !== undefined && region === home.region ? home.provider : r.provider, true);
    const mode = (r.mode === '' ? 'cold' : r.mode) as MigrationMode;
    if (!MIGRATION_MODES.includes(mode)) throw invalid(`mode: ${JSON.stringify(r.mode)} is not one of ${MIGRATION_MODES.join(', ')}`);
    if (r.max_downtime_ms !== 0 && mode !== 'live') throw invalid(`max_downtime_ms: only a live migration has a downtime limit (mode is ${mode})`);
    if (r.max_downtime_ms < 0 || r.max_downtime_ms > MIGRATION_MAX_DOWNTIME_MS) throw invalid(`max_downtime_ms: ${r.max_downtime_ms} is not from 1 to ${MIGRATION_MAX_DOWNTIME_MS}`);
    const request = { vm, region, mode, ...(provider === '' ? {} : { provider }), ...(r.max_downtime_ms === 0 ? {} : { maxDowntimeMs: r.max_downtime_ms }), ...(failback ? { purpose: 'failback' as const } : {}) };
    if (r.dry_run) {
      const plan = seat().planMigration(request);
      return plan.ok ? { ok: true, code: '', message: '', plan: plan.lines } : { ok: false, code: plan.code, message: plan.message, plan: plan.lines };
    }
    const { plan, result } = await seat().migrate(request, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!plan.ok) throw refusal(plan);
    if (result === null || !result.ok) throw refusal(result ?? { ok: false, code: 'invalid_command', message: 'no answer' });
    return { ok: true, migration: toWire(find(result.migration ?? '')), code: '', message: '', plan: plan.lines };
  }

  async function list(r: { vms: string[] }): Promise<Record<string, unknown>> {
    if (r.vms.length > MAX_FILTERS) throw invalid(`vms: at most ${MAX_FILTERS}`);
    r.vms.forEach((v, i) => name(`vms[${i}]`, v));
    const state = seat().state;
    const wanted = new Set(r.vms);
    const all = [...state.migrationHistory(), ...state.migrations()].sort(compareMigrations).filter((m) => wanted.size === 0 || wanted.has(m.vm));
    return { migrations: all.map(toWire) };
  }

  async function status(r: MigrationRef): Promise<Record<string, unknown>> {
    return toWire(find(migrationRef(r)));
  }

  async function cancel(r: MigrationRef): Promise<Record<string, unknown>> {
    const id = migrationRef(r);
    const result = await seat().cancelMigration(id, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return toWire(find(id));
  }

  return {
    name: MIGRATION_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Start: asyncUnary(opts.log, 'Start', start),
      List: asyncUnary(opts.log, 'List', list),
      Status: asyncUnary(opts.log, 'Status', status),
      Cancel: asyncUnary(opts.log, 'Cancel', cancel),
    },
  };
}
