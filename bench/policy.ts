/**
 * The policy bench: one evaluation per (VM, candidate) with a set of
 * --rules rules (default 50) that ALL apply to the VM (empty selectors: the
 * worst case; selectors that skip a VM only make it cheaper). Reports p50 and
 * p99 per (VM, candidate) against the floor (p99 < 0.1 ms with 50
 * rules), two ways:
 * - reference `evaluate`: PolicyEvaluator.evaluate, every applicable rule
 *   run afresh: what the fleet state machine does for one assignment;
 * - subject `scope`: PolicyScope.evaluate over the candidates of one VM, what
 *   placement does (rules that read no region or cost run once per VM,
 *   rules that read some region fields once per distinct value of them).
 *   Ratio scope / evaluate: below 1 means sharing pays.
 *
 * The rule set (benchPolicies) is the mix a federation might run, all of
 * them applying: residency (jurisdiction), compliance marks, region labels,
 * cost caps, VM tags, operation and trust, provider kind, region names; two
 * of them deny some candidates. Candidates are the placement bench's fleet
 * (bench/placement.ts: jurisdictions eu|us|ap|sa, compliance marks, a tier
 * label, local and spot aws providers, random prices).
 *
 * Then the continuous audit (src/fleet/policy-audit.ts) over a fleet of
 * --audit-vms placed VMs with the same rules: a full audit (every VM judged:
 * after a new policy version, or a start) and an incremental one (one VM
 * moved since the previous audit: what the auditor does per change), median
 * of a few runs each, wall clock and CPU.
 *
 * Invariants: everything from --seed; each timed evaluation is one call
 * timed by process.hrtime.bigint (wall clock; CPU time per evaluation is
 * reported beside it).
 */
import { Prng } from '../test/sim/prng.ts';
import { compilePolicySet } from '../src/policy/compile.ts';
import { parsePolicies, type PolicySpec } from '../src/policy/document.ts';
import type { PolicyEvaluator } from '../src/policy/evaluate.ts';
import type { PolicyRegion } from '../src/policy/facts.ts';
import { hourlyUsd } from '../src/fleet/ledger.ts';
import { policyRegionOf, policyVmOf } from '../src/fleet/policy-check.ts';
import { buildBenchFleet, benchSpecs } from './placement.ts';
import { AuditMemo, auditFleet } from '../src/fleet/policy-audit.ts';
import { defineBench, intFlag, machineFacts, progress, quantile, renderTable, significant } from './run.ts';

const FLOOR_P99_MS = 0.1;
const FLOOR_RULES = 50;

/** The templates of benchPolicies, in proportion (per 50 rules): what each reads is in its name. */
const TEMPLATES: readonly { weight: number; condition: (i: number) => string; effect?: 'audit' | 'warn' }[] = [
  { weight: 10, condition: (i) => `region.jurisdiction != 'x${i}'` },
  { weight: 8, condition: (i) => `!('mark-${i}' in region.compliance) || region.jurisdiction != 'zz'` },
  { weight: 8, condition: (i) => `!has(region.labels.tier) || region.labels.tier != 'platinum-${i}'` },
  { weight: 5, condition: (i) => `cost <= ${5 + i}.0`, effect: 'audit' },
  { weight: 6, condition: (i) => `'team-${i}' in vm.labels || vm.vcpus <= 64` },
  { weight: 5, condition: () => "operation != 'failover' || region.trust == 'trusted'", effect: 'warn' },
  { weight: 4, condition: () => "region.providerKind != 'gcp' || vm.priority >= 0" },
  { weight: 2, condition: (i) => `region.name != 'never-${i}'` },
  // The two that bite: bronze regions only for low-priority VMs; dear candidates only for spot-tolerant VMs.
  { weight: 1, condition: () => "!has(region.labels.tier) || region.labels.tier != 'bronze' || vm.priority < 800" },
  { weight: 1, condition: () => 'cost <= 0.25 || vm.spot' },
];

/** `count` rules (all with empty selectors) in the proportions above, in one policy per template. */
export function benchPolicies(count: number): PolicySpec[] {
  const total = TEMPLATES.reduce((n, t) => n + t.weight, 0);
  const policies: { name: string; rules: unknown[] }[] = [];
  let made = 0;
  TEMPLATES.forEach((t, k) => {
    const n = k === TEMPLATES.length - 1 ? count - made : Math.round((t.weight * count) / total);
    const rules = Array.from({ length: Math.max(0, Math.min(n, count - made)) }, (_, i) => ({ name: `rule-${i}`, condition: t.condition(i), effect: t.effect ?? 'deny', message: `template ${k} rule ${i}` }));
    made += rules.length;
    if (rules.length > 0) policies.push({ name: `policy-${k}`, rules });
  });
  return parsePolicies(policies);
}

export function benchEvaluator(count: number): PolicyEvaluator {
  return compilePolicySet({ version: 1, policies: benchPolicies(count) });
}

export interface PolicyBenchOptions {
  rules: number;
  regions: number;
  vms: number;
  evaluations: number;
  auditVms: number;
  seed: number;
}

/** Median wall and CPU milliseconds of `runs` calls of `fn` (each after `before`, untimed). */
function medianMs(runs: number, fn: () => void, before: (k: number) => void = () => {}): { wall_ms: number; cpu_ms: number } {
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let k = 0; k < runs; k++) {
    before(k);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    fn();
    wall.push(performance.now() - t0);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  return { wall_ms: significant(quantile(wall, 0.5)), cpu_ms: significant(quantile(cpu, 0.5)) };
}

/** The continuous audit with `evaluator` over `vms` placed VMs: a full audit, and one after a single VM moved. */
function auditCase(options: PolicyBenchOptions, evaluator: PolicyEvaluator): object {
  progress(`policy: audit of ${options.auditVms} VMs over ${options.regions} regions`);
  const fleet = buildBenchFleet(options.regions, options.auditVms, options.seed);
  const placed = fleet.state.vms().filter((v) => v.assignment !== null);
  let violations = 0;
  const full = medianMs(3, () => (violations = auditFleet(fleet.state, evaluator).length));
  const memo = new AuditMemo();
  auditFleet(fleet.state, evaluator, memo);
  const incremental = medianMs(
    5,
    () => auditFleet(fleet.state, evaluator, memo),
    (k) => {
      // One VM moves to the next region (any refusal, e.g. full, leaves it: the audit is timed the same).
      const vm = placed[k % placed.length];
      const a = vm?.assignment;
      if (vm === undefined || a === null || a === undefined) return;
      const next = fleet.regionNames[(fleet.regionNames.indexOf(a.region) + 1) % fleet.regionNames.length] as string;
      fleet.state.apply({ kind: 'assign', vm: vm.name, region: next, provider: 'local', generation: (fleet.state.vm(vm.name)?.generation ?? 1) + 1 });
    },
  );
  progress(renderTable(['audit', 'VMs', 'wall ms', 'cpu ms', 'violations'], [['full', String(placed.length), String(full.wall_ms), String(full.cpu_ms), String(violations)], ['one VM moved', String(placed.length), String(incremental.wall_ms), String(incremental.cpu_ms), '']]));
  return { vms: placed.length, violations, full, incremental, us_per_vm_full: significant((full.wall_ms * 1000) / Math.max(1, placed.length)) };
}

interface Case {
  mode: 'evaluate' | 'scope';
  evaluations: number;
  p50_ms: number;
  p99_ms: number;
  max_ms: number;
  cpu_ms_per_evaluation: number;
  denied: number;
}

async function runPolicyBench(options: PolicyBenchOptions): Promise<object> {
  const loadBefore = machineFacts().loadavg;
  progress(`policy: ${options.rules} rules over ${options.regions} regions`);
  const fleet = buildBenchFleet(options.regions, options.regions * 10, options.seed);
  const evaluator = benchEvaluator(options.rules);
  const specs = benchSpecs(fleet.regionNames, options.vms, options.seed).map((spec) => ({ spec, vm: policyVmOf(spec) }));
  const candidates: { region: PolicyRegion; prices: Parameters<typeof hourlyUsd>[1] }[] = [];
  for (const region of fleet.state.regions()) for (const provider of region.providers) candidates.push({ region: policyRegionOf(region, provider), prices: provider.prices });
  const cases: Case[] = [];
  for (const mode of ['evaluate', 'scope'] as const) {
    // The same VMs and candidates in the same order for both modes.
    const rng = new Prng(options.seed ^ 0xc0ffee);
    const times: number[] = [];
    let denied = 0;
    const run = (timed: boolean): void => {
      // One VM at a time against a run of candidates, as placement meets them.
      for (let done = 0; done < options.evaluations; ) {
        const { spec, vm } = specs[rng.int(specs.length)] as (typeof specs)[number];
        const scope = mode === 'scope' ? evaluator.forVm(vm, 'place') : null;
        const start = rng.int(candidates.length);
        for (let k = 0; k < 200 && done < options.evaluations; k++, done++) {
          const c = candidates[(start + k) % candidates.length] as (typeof candidates)[number];
          const cost = hourlyUsd(spec, c.prices);
          const t0 = process.hrtime.bigint();
          const verdict = scope !== null ? scope.evaluate(c.region, cost) : evaluator.evaluate({ vm, region: c.region, cost, operation: 'place' });
          if (timed) times.push(Number(process.hrtime.bigint() - t0) / 1e6);
          if (!verdict.allowed) denied++;
        }
      }
    };
    run(false);
    denied = 0;
    const cpuBefore = process.cpuUsage();
    run(true);
    const cpu = process.cpuUsage(cpuBefore);
    cases.push({
      mode,
      evaluations: options.evaluations,
      p50_ms: significant(quantile(times, 0.5)),
      p99_ms: significant(quantile(times, 0.99)),
      max_ms: significant(times.reduce((a, b) => (b > a ? b : a), 0)),
      cpu_ms_per_evaluation: significant((cpu.user + cpu.system) / 1000 / options.evaluations),
      denied,
    });
    await new Promise((resolve) => setImmediate(resolve));
  }
  const reference = cases.find((c) => c.mode === 'evaluate') as Case;
  const audit = auditCase(options, evaluator);
  progress(
    renderTable(
      ['mode', 'p50 ms', 'p99 ms', 'max ms', 'cpu ms', 'denied', 'p99 / evaluate'],
      cases.map((c) => [c.mode, String(c.p50_ms), String(c.p99_ms), String(c.max_ms), String(c.cpu_ms_per_evaluation), `${c.denied}/${c.evaluations}`, String(significant(c.p99_ms / reference.p99_ms, 3))]),
    ),
  );
  return {
    bench: 'policy',
    ...machineFacts(),
    loadavg: loadBefore,
    options: { ...options, candidates: candidates.length },
    ratios: 'ratio_p99.scope = p99 of scope / p99 of evaluate (every rule run afresh, the state machine\'s path): below 1 means sharing among candidates pays',
    cases,
    ratio_p99: Object.fromEntries(cases.map((c) => [c.mode, significant(c.p99_ms / reference.p99_ms, 3)])),
    floor: {
      rules: FLOOR_RULES,
      p99_ms: FLOOR_P99_MS,
      /** null when not run with the floor's rule count. */
      met: options.rules !== FLOOR_RULES ? null : cases.every((c) => c.p99_ms < FLOOR_P99_MS),
    },
    audit,
    loadavg_after: machineFacts().loadavg,
  };
}

export const policyBench = defineBench<PolicyBenchOptions>({
  flags: {
    rules: { default: '50', description: 'rules in the set (all apply to every VM)' },
    regions: { default: '1000', description: 'regions of the generated fleet (candidates: their providers)' },
    vms: { default: '1000', description: 'VM specs evaluated, one at a time against runs of candidates' },
    evaluations: { default: '200000', description: 'timed evaluations per mode' },
    'audit-vms': { default: '100000', description: 'placed VMs of the fleet the continuous audit is timed over' },
    seed: { default: '1', description: 'seed of the fleet and specs' },
  },
  parse: (flags) => ({
    rules: intFlag(flags, 'rules', 1),
    regions: intFlag(flags, 'regions', 1),
    vms: intFlag(flags, 'vms', 1),
    evaluations: intFlag(flags, 'evaluations', 1),
    auditVms: intFlag(flags, 'audit-vms', 1),
    seed: intFlag(flags, 'seed', 0),
  }),
  run: runPolicyBench,
});
