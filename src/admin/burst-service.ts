/**
 * The admin socket's Burst service (burst.proto): burst groups' status on any
 * node, and setting or deleting a group in the federation log. Requests are
 * checked at the edge (the group against its schema, names) and refusals
 * name the field; the log's refusals come back as coded errors with its
 * sentence.
 */
import { DwcpError } from '../errors.ts';
import type { Logger } from '../log.ts';
import { BurstGroupSpecSchema, type BurstGroupSpec } from '../burst/group.ts';
import type { BurstGroupStatus } from '../burst/status.ts';
import type { FleetCommandInput, FleetResult } from '../fleet/commands.ts';
import { fleetName } from '../fleet/spec.ts';
import { formatIssue, pathString } from '../config/issues.ts';
import { asyncUnary, requireTimeout } from './call.ts';
import type { AdminServiceRegistration } from './server.ts';
import { BURST_SERVICE, loadAdminPackage, type BurstGroupRef, type BurstGroupSetRequest } from './schema.ts';

export interface BurstAdminOptions {
  status(): BurstGroupStatus[];
  groups(): readonly BurstGroupSpec[];
  propose(command: FleetCommandInput, timeoutMs: number): Promise<FleetResult>;
  defaultTimeoutMs: number;
  log: Logger;
}

function refusal(result: Extract<FleetResult, { ok: false }>): DwcpError {
  return new DwcpError(result.code === 'unknown_burst_group' ? 'not_found' : 'rejected', `${result.code}: ${result.message}`);
}

export function burstServiceRegistration(opts: BurstAdminOptions): AdminServiceRegistration {
  async function status(): Promise<Record<string, unknown>> {
    return { groups_json: JSON.stringify(opts.status()) };
  }

  async function setGroup(r: BurstGroupSetRequest): Promise<Record<string, unknown>> {
    let raw: unknown;
    try {
      raw = JSON.parse(r.group_json);
    } catch {
      throw new DwcpError('invalid', 'group_json: not JSON');
    }
    const parsed = BurstGroupSpecSchema.safeParse(raw, { reportInput: true });
    if (!parsed.success) throw new DwcpError('invalid', parsed.error.issues.map((i) => formatIssue(i, (path) => pathString(['group', ...path]))).join('; '));
    const result = await opts.propose({ kind: 'set-burst-group', group: parsed.data }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return { groups_json: JSON.stringify(opts.status().filter((g) => g.name === parsed.data.name)) };
  }

  async function deleteGroup(r: BurstGroupRef): Promise<Record<string, unknown>> {
    if (!fleetName.safeParse(r.name).success) throw new DwcpError('invalid', `name: ${JSON.stringify(r.name)} is not a burst group name (a lowercase DNS label)`);
    if (!opts.groups().some((g) => g.name === r.name)) throw new DwcpError('not_found', `name: no burst group named ${r.name}`);
    const result = await opts.propose({ kind: 'delete-burst-group', name: r.name }, requireTimeout(r.timeout_ms, opts.defaultTimeoutMs));
    if (!result.ok) throw refusal(result);
    return { name: r.name, timeout_ms: 0 };
  }

  return {
    name: BURST_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Status: asyncUnary(opts.log, 'Status', status),
      SetGroup: asyncUnary(opts.log, 'SetGroup', setGroup),
      DeleteGroup: asyncUnary(opts.log, 'DeleteGroup', deleteGroup),
    },
  };
}
