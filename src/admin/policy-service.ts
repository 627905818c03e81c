/**
 * The admin socket's Policy service (policy.proto) over this node's fleet
 * seat: Apply puts a new policy version into the federation log, List and
 * Show read the current one from this node's replica, Test dry-runs a
 * proposed version against the placed VMs, Violations lists what the
 * current version flags (the continuous audit).
 *
 * Invariants:
 * - Documents are checked at the edge (parsed, merged, compiled:
 *   src/policy/files.ts) before anything is proposed; a refusal names the
 *   document, the policy, the rule and the position in the condition.
 * - Apply proposes version current+1 on this node's replica; when another
 *   version came first (stale_policy_version) it re-reads and proposes
 *   again, at most APPLY_ATTEMPTS times: the operator's documents become
 *   the newest version, never an older one. A set equal to the current
 *   version's is not committed again.
 * - Test commits nothing: it compiles the documents and evaluates them
 *   against this node's replica.
 */
import type { Logger } from '../log.ts';
import { DwcpError } from '../errors.ts';
import { canonicalJson } from '../fleet/commands.ts';
import type { FleetSeat } from '../fleet/seat.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import { auditFleet, violationKey, type PolicyViolation } from '../fleet/policy-audit.ts';
import { compilePolicySet } from '../policy/compile.ts';
import { checkPolicyDocuments, POLICY_MAX_DOCUMENTS, type PolicyDocumentText } from '../policy/files.ts';
import type { PolicySpec } from '../policy/document.ts';
import { asyncUnary, requireTimeout } from './call.ts';
import { POLICY_SERVICE, loadAdminPackage, type PolicyApplyRequest, type PolicyDocumentWire } from './schema.ts';
import type { AdminServiceRegistration } from './server.ts';

export interface PolicyAdminOptions {
  /** This node's part in desired state; null when it holds no replica of the federation log. */
  seat: FleetSeat | null;
  defaultTimeoutMs: number;
  log: Logger;
}

/** Proposals of one Apply when other versions keep coming first. */
const APPLY_ATTEMPTS = 3;

function invalid(message: string): DwcpError {
  return new DwcpError('invalid', message);
}

function documentsOf(raw: readonly PolicyDocumentWire[]): PolicyDocumentText[] {
  if (raw.length === 0) throw invalid('documents: at least one policy document is required');
  if (raw.length > POLICY_MAX_DOCUMENTS) throw invalid(`documents: at most ${POLICY_MAX_DOCUMENTS}`);
  return raw.map((d, i) => ({ source: d.source === '' ? `documents[${i}]` : d.source, text: d.text }));
}

function violationToWire(v: PolicyViolation): Record<string, unknown> {
  return { vm: v.vm, region: v.region, provider: v.provider, generation: String(v.generation), operation: v.operation, policy: v.policy, rule: v.rule, effect: v.effect, message: v.message, error: v.error };
}

/** Placed VMs the audit judges: live and assigned. */
function placedCount(state: FleetState): number {
  return state.vms().filter((vm) => vm.assignment !== null && !vm.deleted).length;
}

function ruleCount(policies: readonly PolicySpec[]): number {
  return policies.reduce((n, p) => n + p.rules.length, 0);
}

export function policyServiceRegistration(opts: PolicyAdminOptions): AdminServiceRegistration {
  function seat(): FleetSeat {
    if (opts.seat === null) throw new DwcpError('unsupported', 'this node holds no replica of the federation log, so it has no policy set');
    return opts.seat;
  }

  async function apply(r: PolicyApplyRequest): Promise<Record<string, unknown>> {
    const documents = documentsOf(r.documents);
    const policies = checkPolicyDocuments(documents);
    const timeoutMs = requireTimeout(r.timeout_ms, opts.defaultTimeoutMs);
    const s = seat();
    const answer = (version: number, unchanged: boolean) => ({ version: String(version), unchanged, policies: policies.map((p) => p.name), rules: ruleCount(policies) });
    const reasons: string[] = [];
    for (let attempt = 0; attempt < APPLY_ATTEMPTS; attempt++) {
      const current = s.state.policy;
      if (current.version > 0 && canonicalJson(current.policies) === canonicalJson(policies)) return answer(current.version, true);
      const result = await s.log.commit({ kind: 'set-policy', version: current.version + 1, policies }, timeoutMs);
      if (result.ok) {
        opts.log.info({ version: result.policyVersion, policies: policies.map((p) => p.name), sources: documents.map((d) => d.source) }, 'fleet policy version applied');
        return answer(result.policyVersion ?? current.version + 1, false);
      }
      if (result.code === 'invalid_policy') throw invalid(result.message);
      if (result.code !== 'stale_policy_version') throw new DwcpError('rejected', `${result.code}: ${result.message}`);
      reasons.push(result.message);
    }
    throw new DwcpError('rejected', `stale_policy_version: other policy versions kept coming first (${reasons.join('; ')})`, { retryable: true });
  }

  async function list(): Promise<Record<string, unknown>> {
    const { version, policies } = seat().state.policy;
    const count = (p: PolicySpec, effect: string) => p.rules.filter((r) => r.effect === effect).length;
    return {
      version: String(version),
      policies: policies.map((p) => ({ name: p.name, description: p.description ?? '', rules: p.rules.length, deny: count(p, 'deny'), audit: count(p, 'audit'), warn: count(p, 'warn') })),
    };
  }

  async function show(r: { name: string }): Promise<Record<string, unknown>> {
    if (r.name === '') throw invalid('name: a policy name is required');
    const { version, policies } = seat().state.policy;
    const policy = policies.find((p) => p.name === r.name);
    if (policy === undefined) throw new DwcpError('not_found', `policy ${r.name} is not in policy version ${version}${policies.length === 0 ? ' (it has no policies)' : ` (it has ${policies.map((p) => p.name).join(', ')})`}`);
    return {
      version: String(version),
      name: policy.name,
      description: policy.description ?? '',
      rules: policy.rules.map((rule) => ({ name: rule.name, selector_json: JSON.stringify(rule.selector), condition: rule.condition, effect: rule.effect, message: rule.message })),
    };
  }

  async function test(r: { documents: PolicyDocumentWire[] }): Promise<Record<string, unknown>> {
    const policies = checkPolicyDocuments(documentsOf(r.documents));
    const s = seat();
    const state = s.state;
    const proposed = state.policy.version + 1;
    const violations = auditFleet(state, compilePolicySet({ version: proposed, policies }));
    const now = new Set(s.auditor.current().violations.map(violationKey));
    return {
      current_version: String(state.policy.version),
      proposed_version: String(proposed),
      vms: placedCount(state),
      violations: violations.map(violationToWire),
      already: violations.filter((v) => now.has(violationKey(v))).length,
    };
  }

  async function violations(): Promise<Record<string, unknown>> {
    const s = seat();
    const audit = s.auditor.current();
    return { version: String(audit.version), vms: placedCount(s.state), violations: audit.violations.map(violationToWire) };
  }

  return {
    name: POLICY_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Apply: asyncUnary(opts.log, 'Apply', apply),
      List: asyncUnary(opts.log, 'List', list),
      Show: asyncUnary(opts.log, 'Show', show),
      Test: asyncUnary(opts.log, 'Test', test),
      Violations: asyncUnary(opts.log, 'Violations', violations),
    },
  };
}
