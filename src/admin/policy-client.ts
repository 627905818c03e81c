/**
 * The Policy admin service (policy.proto) as the admin client exposes it:
 * the `.policy` sub-client, with the .proto's snake_case types.
 *
 * Invariant (as for the rest of the admin client): every response has every
 * field, proto3 `optional` fields absent on the wire become null, uint64
 * fields (versions, generations: far below 2^53) become numbers.
 */
import type { PolicyApplyResponse, PolicyDocumentWire, PolicyInfo, PolicyListResponse, PolicyTestResponse, PolicyViolationInfo, PolicyViolationsResponse, ServiceCall } from './schema.ts';

export interface PolicyClient {
  /** `timeoutMs` 0: the daemon's default. */
  apply(documents: PolicyDocumentWire[], timeoutMs: number): Promise<PolicyApplyResponse>;
  list(): Promise<PolicyListResponse>;
  show(name: string): Promise<PolicyInfo>;
  test(documents: PolicyDocumentWire[]): Promise<PolicyTestResponse>;
  violations(): Promise<PolicyViolationsResponse>;
}

type Num = string | number;
type WireViolation = Omit<PolicyViolationInfo, 'generation' | 'error'> & { generation: Num; error?: string };

function violationFromWire(v: WireViolation): PolicyViolationInfo {
  return {
    vm: v.vm,
    region: v.region,
    provider: v.provider,
    generation: Number(v.generation),
    operation: v.operation,
    policy: v.policy,
    rule: v.rule,
    effect: v.effect,
    message: v.message,
    error: v.error ?? null,
  };
}

export function policyClient(call: ServiceCall): PolicyClient {
  return {
    apply: async (documents, timeoutMs) => {
      const r = await call<object, Omit<PolicyApplyResponse, 'version'> & { version: Num }>('Apply', { documents, timeout_ms: timeoutMs }, timeoutMs === 0 ? undefined : timeoutMs);
      return { version: Number(r.version), unchanged: r.unchanged, policies: r.policies, rules: r.rules };
    },
    list: async () => {
      const r = await call<object, Omit<PolicyListResponse, 'version'> & { version: Num }>('List', {});
      return { version: Number(r.version), policies: r.policies.map((p) => ({ name: p.name, description: p.description, rules: p.rules, deny: p.deny, audit: p.audit, warn: p.warn })) };
    },
    show: async (name) => {
      const r = await call<object, Omit<PolicyInfo, 'version'> & { version: Num }>('Show', { name });
      return { version: Number(r.version), name: r.name, description: r.description, rules: r.rules.map((x) => ({ name: x.name, selector_json: x.selector_json, condition: x.condition, effect: x.effect, message: x.message })) };
    },
    test: async (documents) => {
      const r = await call<object, { current_version: Num; proposed_version: Num; vms: number; violations: WireViolation[]; already: number }>('Test', { documents });
      return { current_version: Number(r.current_version), proposed_version: Number(r.proposed_version), vms: r.vms, violations: r.violations.map(violationFromWire), already: r.already };
    },
    violations: async () => {
      const r = await call<object, { version: Num; vms: number; violations: WireViolation[] }>('Violations', {});
      return { version: Number(r.version), vms: r.vms, violations: r.violations.map(violationFromWire) };
    },
  };
}
