/**
 * Builders for the fleet tests: regions and specs with small, readable
 * defaults, always through the real parsers (so a fixture is a valid command).
 */
import type { FleetCommand, FleetCommandInput } from '../../src/fleet/commands.ts';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import type { FleetVmSpec, FleetVmSpecInput } from '../../src/fleet/spec.ts';
import { parseFleetVmSpec } from '../../src/fleet/spec.ts';
import { FleetStateMachine } from '../../src/fleet/state-machine.ts';
import { RESOURCES, ZERO_AMOUNTS, demandOf, type ResourceAmounts } from '../../src/fleet/ledger.ts';
import { expect } from 'vitest';

export const GIB = 1024 ** 3;

type ProviderInput = Extract<FleetCommandInput, { kind: 'register-region' }>['providers'][number];

export function localProvider(vcpus: number, memoryGiB: number, vcpuHourUsd = 0.02, extra: Partial<ProviderInput> = {}): ProviderInput {
  return { name: 'local', kind: 'local', capacity: { vcpus, memoryBytes: memoryGiB * GIB, diskBytes: 1000 * GIB }, prices: { vcpuHourUsd, memoryGiBHourUsd: 0.002 }, ...extra };
}

export function registerRegion(
  region: string,
  providers: ProviderInput[],
  facts: { jurisdiction?: string; compliance?: string[]; labels?: Record<string, string>; trust?: 'trusted' | 'untrusted' } = {},
): FleetCommand {
  return parseFleetCommand({ kind: 'register-region', region, providers, ...facts });
}

export function spec(name: string, extra: Partial<FleetVmSpecInput> = {}): FleetVmSpec {
  return parseFleetVmSpec({ name, vcpus: 2, memoryBytes: 4 * GIB, image: 'base', ...extra });
}

export function create(s: FleetVmSpec): FleetCommand {
  return parseFleetCommand({ kind: 'create', spec: s });
}

export function assign(vm: string, region: string, generation: number, provider = 'local'): FleetCommand {
  return parseFleetCommand({ kind: 'assign', vm, region, provider, generation });
}

/** A machine with the given regions registered; throws if any is refused. */
export function machineWith(...regions: FleetCommand[]): FleetStateMachine {
  const m = new FleetStateMachine();
  for (const r of regions) {
    const result = m.apply(r);
    if (!result.ok) throw new Error(`fixture: ${result.message}`);
  }
  return m;
}

type PolicyInput = Extract<FleetCommandInput, { kind: 'set-policy' }>['policies'][number];
type RuleInput = PolicyInput['rules'][number];

/** A set-policy command of one policy `p` with these rules (each deny unless it says). */
export function setPolicy(version: number, rules: (Partial<RuleInput> & { condition: string })[], name = 'p'): FleetCommand {
  return parseFleetCommand({
    kind: 'set-policy',
    version,
    policies: rules.length === 0 ? [] : [{ name, rules: rules.map((r, i) => ({ name: `r${i + 1}`, effect: 'deny', message: `rule ${i + 1} fired`, ...r })) }],
  });
}

/** Independent accounting for the property tests: demands summed per `region/provider`. */
export class DemandSums {
  readonly #sums = new Map<string, { -readonly [R in keyof ResourceAmounts]: number }>();

  add(region: string, provider: string, spec: FleetVmSpec): void {
    const key = `${region}/${provider}`;
    const sum = this.#sums.get(key) ?? { ...ZERO_AMOUNTS };
    const demand = demandOf(spec);
    for (const r of RESOURCES) sum[r] += demand[r];
    this.#sums.set(key, sum);
  }

  /** Every provider's usage in the ledger equals the sums, and stays within its declared limits. */
  expectLedger(m: FleetStateMachine): void {
    for (const region of m.regions()) {
      for (const provider of region.providers) {
        const used = m.usage(region.name, provider.name);
        expect(used).toEqual(this.#sums.get(`${region.name}/${provider.name}`) ?? ZERO_AMOUNTS);
        for (const r of RESOURCES) {
          const limit = provider.limits[r];
          if (limit !== null) expect(used?.[r] ?? 0).toBeLessThanOrEqual(limit);
        }
      }
    }
  }
}
