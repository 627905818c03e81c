/**
 * What a policy condition can see: the CEL variables `vm`, `region`, `cost`
 * and `operation`, their declared types (the type checker refuses any other
 * variable or field at compile time), and the JavaScript objects that carry
 * their values at evaluation.
 *
 *   vm.name string            vm.image string        vm.spot bool
 *   vm.vcpus int              vm.memoryBytes int     vm.diskBytes int
 *   vm.priority int           vm.labels map<string, string>
 *   vm.tags map<string, string>   (the same map as vm.labels: the spec's labels
 *                                  are what clouds call tags; write either)
 *   region.name string        the fleet region (the node's name)
 *   region.provider string    the candidate provider of that region (`local`, `aws-prod`)
 *   region.providerKind string  local | qemu | aws | gcp
 *   region.spot bool          the candidate is spot capacity
 *   region.trust string       trusted | untrusted | unknown (a region declared before trust was)
 *   region.jurisdiction string  `eu`, `us`, ...; '' when the region declares none
 *   region.compliance list<string>  sorted (`gdpr`, `hipaa`)
 *   region.labels map<string, string>
 *   cost double               the VM's $/h at the candidate provider
 *   operation string          create | place | burst | migrate | failover | failback
 *
 * Integers are CEL ints (JavaScript bigint here), so `vm.vcpus <= 16` and
 * `cost <= 2.5` type-check; `cost <= 2` does too (CEL compares int and
 * double), `cost == 2` does not (write 2.0).
 *
 * Invariants: facts are immutable once built and hold only own properties
 * (a label named `constructor` is not inherited from Object.prototype: CEL
 * map access reads own keys only, and the maps here are plain records built
 * by the fleet in sorted key order, so iteration order is deterministic).
 * Pure: no I/O.
 */
import type { PolicyOperation } from './document.ts';

/** The declared CEL type of each field (the Environment's registerType fields). */
export const VM_FIELDS = {
  name: 'string',
  vcpus: 'int',
  memoryBytes: 'int',
  diskBytes: 'int',
  image: 'string',
  spot: 'bool',
  priority: 'int',
  labels: 'map<string, string>',
  tags: 'map<string, string>',
} as const;

export const REGION_FIELDS = {
  name: 'string',
  provider: 'string',
  providerKind: 'string',
  spot: 'bool',
  trust: 'string',
  jurisdiction: 'string',
  compliance: 'list<string>',
  labels: 'map<string, string>',
} as const;

export type RegionField = keyof typeof REGION_FIELDS;
export const REGION_FIELD_NAMES = Object.keys(REGION_FIELDS) as RegionField[];

/** The root variables; nothing else resolves in a condition. */
export const POLICY_VARIABLES = { vm: 'PolicyVm', region: 'PolicyRegion', cost: 'double', operation: 'string' } as const;
export type PolicyVariable = keyof typeof POLICY_VARIABLES;

export const TRUST_VALUES = ['trusted', 'untrusted', 'unknown'] as const;
export type PolicyTrust = (typeof TRUST_VALUES)[number];

export interface PolicyVmInput {
  readonly name: string;
  readonly vcpus: number;
  readonly memoryBytes: number;
  readonly diskBytes: number;
  readonly image: string;
  readonly spot: boolean;
  readonly priority: number;
  /** Sorted by key (FleetVmSpec labels are). */
  readonly labels: Readonly<Record<string, string>>;
}

/** `vm`: one VM's facts. Built once per VM per decision (placement), or per command (the state machine). */
export class PolicyVm {
  readonly name: string;
  readonly vcpus: bigint;
  readonly memoryBytes: bigint;
  readonly diskBytes: bigint;
  readonly image: string;
  readonly spot: boolean;
  readonly priority: bigint;
  readonly labels: Readonly<Record<string, string>>;
  readonly tags: Readonly<Record<string, string>>;

  constructor(vm: PolicyVmInput) {
    this.name = vm.name;
    this.vcpus = BigInt(vm.vcpus);
    this.memoryBytes = BigInt(vm.memoryBytes);
    this.diskBytes = BigInt(vm.diskBytes);
    this.image = vm.image;
    this.spot = vm.spot;
    this.priority = BigInt(vm.priority);
    this.labels = vm.labels;
    this.tags = vm.labels;
    Object.freeze(this);
  }
}

/** What a PolicyRegion is built from: its fields (jurisdiction '' when none is declared; compliance sorted; labels sorted by key). */
export type PolicyRegionInput = Pick<PolicyRegion, RegionField>;

/**
 * `region`: one candidate (region, provider)'s facts. Also carries, per
 * field, a string key of its value (built when first asked), which the
 * evaluator uses to share one rule outcome among candidates that agree on
 * every field the rule reads (evaluate.ts).
 */
export class PolicyRegion {
  readonly name: string;
  readonly provider: string;
  readonly providerKind: string;
  readonly spot: boolean;
  readonly trust: PolicyTrust;
  readonly jurisdiction: string;
  readonly compliance: readonly string[];
  readonly labels: Readonly<Record<string, string>>;
  #keys: Partial<Record<RegionField, string>> = {};
  #composite: Map<string, string> | undefined;

  constructor(region: PolicyRegionInput) {
    this.name = region.name;
    this.provider = region.provider;
    this.providerKind = region.providerKind;
    this.spot = region.spot;
    this.trust = region.trust;
    this.jurisdiction = region.jurisdiction;
    this.compliance = region.compliance;
    this.labels = region.labels;
  }

  /**
   * The key of several fields at once (`signature` names them, e.g.
   * `compliance,jurisdiction`), cached: placement asks it of every candidate
   * for every group of rules, and a region's facts outlive one decision.
   */
  keyOf(signature: string, fields: readonly RegionField[]): string {
    if (fields.length === 1) return this.key(fields[0] as RegionField);
    let cached = this.#composite?.get(signature);
    if (cached === undefined) {
      cached = fields.map((f) => this.key(f)).join('\u0002');
      (this.#composite ??= new Map()).set(signature, cached);
    }
    return cached;
  }

  /** A string that is equal for two regions exactly when `field` is (lists and maps in their sorted order). */
  key(field: RegionField): string {
    const cached = this.#keys[field];
    if (cached !== undefined) return cached;
    let key: string;
    switch (field) {
      case 'spot':
        key = this.spot ? 't' : 'f';
        break;
      case 'compliance':
        key = this.compliance.join('\u0000');
        break;
      case 'labels': {
        key = '';
        for (const k in this.labels) key += `${k}\u0001${this.labels[k] ?? ''}\u0000`;
        break;
      }
      default:
        key = this[field];
    }
    this.#keys[field] = key;
    return key;
  }
}

/** What one evaluation looks at. */
export interface PolicyInput {
  readonly vm: PolicyVm;
  readonly region: PolicyRegion;
  /** $/h of the VM at the candidate. */
  readonly cost: number;
  readonly operation: PolicyOperation;
}
