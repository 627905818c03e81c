/**
 * The continuous audit: auditFleet flags placed VMs a (tightened) policy set
 * forbids where they are, by deny and audit; the auditor recomputes only when
 * the replica changed, exports dwcp_policy_violations{policy,effect} (zeroes
 * included) and logs one decision line per violation of its own region when
 * it appears and when it clears, never again while it stands; placement
 * denials are logged once per (region, provider, rule) per request.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { Registry } from 'prom-client';
import { AuditMemo, AuditRun, auditFleet } from '../../src/fleet/policy-audit.ts';
import { PolicyAuditor } from '../../src/fleet/policy-auditor.ts';
import { PolicyDecisionLog, RequestDenials, MAX_DENIAL_LINES_PER_REQUEST, placementDenials } from '../../src/fleet/policy-decisions.ts';
import { createPolicyMetrics } from '../../src/fleet/policy-metrics.ts';
import { buildPlacementView, place } from '../../src/fleet/placement.ts';
import { compilePolicySet } from '../../src/policy/compile.ts';
import { createLogger } from '../../src/log.ts';
import { assign, create, localProvider, machineWith, registerRegion, setPolicy, spec } from './fleet-fixtures.ts';
import type { FleetCommand } from '../../src/fleet/commands.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';

const EU_ONLY = { condition: "region.jurisdiction == 'eu'", selector: { labels: { 'data-class': 'personal' } }, message: 'personal data stays in the EU' };

function must(m: FleetStateMachine, ...commands: FleetCommand[]): void {
  for (const c of commands) {
    const r = m.apply(c);
    if (!r.ok) throw new Error(`${c.kind}: ${r.message}`);
  }
}

/** eu and us; pii (personal) on us and web on us, placed before any policy. */
function fleet(): FleetStateMachine {
  const m = machineWith(registerRegion('eu', [localProvider(8, 32)], { jurisdiction: 'eu' }), registerRegion('us', [localProvider(8, 32)], { jurisdiction: 'us' }));
  must(m, create(spec('pii', { labels: { 'data-class': 'personal' } })), assign('pii', 'us', 1), create(spec('web')), assign('web', 'us', 1));
  return m;
}

function capture(): { lines: Record<string, unknown>[]; decisions: PolicyDecisionLog } {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { lines, decisions: new PolicyDecisionLog(createLogger('info', sink)) };
}

describe('auditFleet', () => {
  it('flags a VM placed before a policy that now forbids it, by effect; others and deleted VMs are not', () => {
    const m = fleet();
    expect(auditFleet(m, m.policy.evaluator)).toEqual([]);
    must(m, setPolicy(1, [{ ...EU_ONLY, effect: 'audit' }, { condition: 'vm.vcpus <= 1', message: 'small only' }]));
    expect(auditFleet(m, m.policy.evaluator)).toEqual([
      { vm: 'pii', region: 'us', provider: 'local', generation: 1, operation: 'place', policy: 'p', rule: 'r2', effect: 'deny', message: 'small only' },
      { vm: 'pii', region: 'us', provider: 'local', generation: 1, operation: 'place', policy: 'p', rule: 'r1', effect: 'audit', message: 'personal data stays in the EU' },
      { vm: 'web', region: 'us', provider: 'local', generation: 1, operation: 'place', policy: 'p', rule: 'r2', effect: 'deny', message: 'small only' },
    ]);
    must(m, { kind: 'delete', vm: 'web' });
    expect(auditFleet(m, m.policy.evaluator).map((v) => v.vm)).toEqual(['pii', 'pii']);
  });

  it('judges a proposed set without applying it (policy test), and a condition that errors flags with the error', () => {
    const m = fleet();
    const proposed = compilePolicySet({ version: 1, policies: [{ name: 'owner', rules: [{ name: 'team', selector: {}, condition: "vm.labels['team'] != ''", effect: 'deny', message: 'a team label' }] }] });
    const v = auditFleet(m, proposed);
    expect(v.map((x) => [x.vm, x.effect, x.error])).toEqual([
      ['pii', 'deny', 'No such key: team'],
      ['web', 'deny', 'No such key: team'],
    ]);
    expect(m.policy.version).toBe(0);
  });
});

describe('auditFleet with a memo', () => {
  it('answers as without one through moves, deletes, re-declarations and new versions, re-judging only what changed', () => {
    const m = fleet();
    const memo = new AuditMemo();
    const same = () => expect(auditFleet(m, m.policy.evaluator, memo)).toEqual(auditFleet(m, m.policy.evaluator));
    same();
    must(m, setPolicy(1, [EU_ONLY, { condition: "region.labels['tier'] == 'gold'", effect: 'audit', message: 'gold only' }]));
    same();
    const judged = memo.judged.get('web');
    must(m, { kind: 'assign', vm: 'pii', region: 'eu', provider: 'local', generation: 2 });
    same();
    // web did not change: its judgement is the very same object.
    expect(memo.judged.get('web')).toBe(judged);
    must(m, registerRegion('us', [localProvider(8, 32)], { jurisdiction: 'us', labels: { tier: 'gold' } }));
    same();
    expect(memo.judged.get('web')).not.toBe(judged);
    must(m, { kind: 'delete', vm: 'web' });
    same();
    expect([...memo.judged.keys()]).toEqual(['pii']);
    must(m, setPolicy(2, []));
    same();
  });
});

/** n VMs over eu and us, none of them allowed where it is by EU_ONLY (every one personal, on us). */
function bigFleet(n: number): FleetStateMachine {
  const m = machineWith(registerRegion('eu', [localProvider(100_000, 1_000_000)], { jurisdiction: 'eu' }), registerRegion('us', [localProvider(100_000, 1_000_000)], { jurisdiction: 'us' }));
  for (let i = 0; i < n; i++) must(m, create(spec(`vm${i}`, { vcpus: 1, labels: { 'data-class': 'personal' } })), assign(`vm${i}`, i % 3 === 0 ? 'eu' : 'us', 1));
  must(m, setPolicy(1, [EU_ONLY]));
  return m;
}

describe('an audit in steps', () => {
  it('answers as in one go, whatever the step size', () => {
    const m = bigFleet(300);
    const whole = auditFleet(m, m.policy.evaluator);
    expect(whole).toHaveLength(200);
    for (const budget of [1, 7, 64]) {
      const run = new AuditRun(m, m.policy.evaluator, new AuditMemo());
      let steps = 0;
      while (!run.step(budget)) steps++;
      expect(steps).toBeGreaterThan(0);
      expect(run.finish()).toEqual(whole);
    }
    expect(() => new AuditRun(m, m.policy.evaluator).finish()).toThrow(/not done/);
  });

  it('the auditor yields to the event loop during a large audit, and completes it', async () => {
    const m = bigFleet(2_500);
    const auditor = new PolicyAuditor({ region: 'us', state: () => m, decisions: capture().decisions });
    auditor.check();
    // The first slice judged about 1 000 VMs: the rest waits for the event loop.
    expect(auditor.latest().version).toBe(0);
    await new Promise<void>((resolve) => {
      const wait = () => (auditor.latest().version === 1 ? resolve() : setImmediate(wait));
      wait();
    });
    expect(auditor.latest().violations).toEqual(auditFleet(m, m.policy.evaluator));
    auditor.stop();
  });
});

describe('PolicyAuditor', () => {
  it('logs a violation of its own region when it appears and clears, once; the gauge counts the whole fleet with zeroes', async () => {
    const m = fleet();
    const { lines, decisions } = capture();
    const auditor = new PolicyAuditor({ region: 'us', state: () => m, decisions });
    const other = new PolicyAuditor({ region: 'eu', state: () => m, decisions });
    const registry = new Registry();
    const metrics = createPolicyMetrics([registry]);
    metrics.setSource(() => auditor.current());
    auditor.check();
    expect(lines).toEqual([]);

    must(m, setPolicy(1, [EU_ONLY], 'eu-residency'));
    auditor.check();
    other.check();
    auditor.check();
    expect(lines.map((l) => [l.msg, l.decision, l.source, l.vm, l.region, l.operation, l.policy, l.rule, l.effect, l.policyVersion])).toEqual([
      ['policy decision', 'deny', 'audit', 'pii', 'us', 'place', 'eu-residency', 'r1', 'deny', 1],
    ]);
    const text = await registry.metrics();
    expect(text).toContain('dwcp_policy_violations{policy="eu-residency",effect="deny"} 1');
    expect(text).toContain('dwcp_policy_violations{policy="eu-residency",effect="audit"} 0');
    expect(text).toContain('dwcp_policy_version 1');

    // Moved to the EU: the violation clears, logged once.
    must(m, { kind: 'assign', vm: 'pii', region: 'eu', provider: 'local', generation: 2 });
    auditor.check();
    auditor.check();
    expect(lines.slice(1).map((l) => [l.decision, l.vm, l.region])).toEqual([['cleared', 'pii', 'us']]);
    expect(await registry.metrics()).toContain('dwcp_policy_violations{policy="eu-residency",effect="deny"} 0');
  });

  it('does not audit again while the replica is unchanged', () => {
    const m = fleet();
    must(m, setPolicy(1, [EU_ONLY]));
    let reads = 0;
    const auditor = new PolicyAuditor({ region: 'us', state: () => (reads++, m), decisions: capture().decisions });
    const first = auditor.current();
    expect(auditor.current()).toBe(first);
    expect(reads).toBe(2);
  });
});

describe('placement denials in the decision log', () => {
  it('one line per (region, provider, rule) per request, however often it re-plans, bounded', () => {
    const regions = Array.from({ length: MAX_DENIAL_LINES_PER_REQUEST + 3 }, (_, i) => registerRegion(`us${String(i).padStart(2, '0')}`, [localProvider(8, 32)], { jurisdiction: 'us' }));
    const m = machineWith(registerRegion('eu', [localProvider(8, 32)], { jurisdiction: 'eu' }), ...regions);
    must(m, setPolicy(1, [EU_ONLY], 'eu-residency'));
    const pii = spec('pii', { labels: { 'data-class': 'personal' } });
    const decision = place(pii, buildPlacementView(m));
    expect(decision.ok && decision.choice.region).toBe('eu');
    expect(placementDenials(decision)).toHaveLength(regions.length);
    const { lines, decisions } = capture();
    const request = new RequestDenials(decisions, 'pii', 'place');
    request.record(decision, 1);
    request.record(decision, 1);
    request.finish();
    expect(lines).toHaveLength(MAX_DENIAL_LINES_PER_REQUEST + 1);
    expect(lines[0]).toMatchObject({ msg: 'policy decision', decision: 'deny', source: 'placement', vm: 'pii', region: 'us00', provider: 'local', operation: 'place', policy: 'eu-residency', rule: 'r1', effect: 'deny', message: 'personal data stays in the EU', policyVersion: 1 });
    expect(lines.at(-1)).toMatchObject({ vm: 'pii', suppressed: 3 });
  });
});
