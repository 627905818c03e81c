/**
 * A DR test (`dwcpctl dr test NAME`): what is restored where, under which
 * isolated name, and the proof that production was left alone. Pure: the
 * production VM's record and its region's providers in; the test VM's spec,
 * the refusals, and the comparison out. The driver (src/admin/dr-service.ts)
 * creates the test VM through the fleet, waits for it to run, measures, and
 * deletes it.
 *
 * Invariants:
 * - The test VM is a new desired VM: its own name (`NAME-drtest-XXXX`), its
 *   own generation, pinned to the DR region and provider by constraints,
 *   labelled `dwcp-dr-test=NAME`, never protected. Nothing of the production
 *   VM (spec, power, assignment, protection, failover record) is written;
 *   `productionOf` is what the driver compares before and after.
 * - No network: only providers whose guests have no network interface (the
 *   qemu provider's guests have none, local VMs are records) run a test; a
 *   cloud provider would give the copy the production network, so it is
 *   refused until isolation is built.
 * - Restored from: the VM's newest recorded backup at its DR region (the
 *   reconciler there restores it into the test copy's disk, as it would for
 *   a failover: src/fleet/reconciler.ts restoreOf), or its image while it has
 *   none yet. The report says which, and how old the backup is.
 */
import { DwcpError } from '../errors.ts';
import type { FleetVmSpec } from '../fleet/spec.ts';
import type { FleetVm } from '../fleet/state-machine.ts';
import { DR_TEST_LABEL, isFailedOver } from '../fleet/protection.ts';

/** Provider kinds whose guests have no network interface at all. */
export const NETWORKLESS_KINDS: readonly string[] = ['local', 'qemu'];
const SUFFIX = '-drtest-';
const MAX_NAME = 63;

/** `web1-drtest-3fa9` (the VM's name shortened so the whole stays a DNS label). */
export function drTestName(vm: string, nonce: string): string {
  return `${vm.slice(0, MAX_NAME - SUFFIX.length - nonce.length).replace(/-+$/, '')}${SUFFIX}${nonce}`;
}

export interface DrTestPlan {
  readonly spec: FleetVmSpec;
  readonly region: string;
  readonly provider: string;
  /** Where its disk comes from, in words for the report. */
  readonly restoredFrom: string;
}

/** The test VM for `vm`, or a refusal naming why there is none. */
export function planDrTest(vm: FleetVm | undefined, name: string, providerKind: (region: string, provider: string) => string | undefined, nonce: string): DrTestPlan {
  if (vm === undefined || vm.deleted) throw new DwcpError('not_found', `vm: no VM named ${name}`);
  const p = vm.protection;
  if (p === null) throw new DwcpError('rejected', `vm: ${name} is not protected (protect it with vm protect ${name} --dr-region R)`);
  if (vm.assignment !== null && isFailedOver(p, vm.assignment)) throw new DwcpError('rejected', `vm: ${name} is failed over to ${p.drRegion}; a DR test runs while it is at home`);
  const kind = providerKind(p.drRegion, p.drProvider);
  if (kind === undefined) throw new DwcpError('not_found', `dr_provider: ${p.drRegion} has no provider ${p.drProvider} (the DR provider of ${name})`);
  if (!NETWORKLESS_KINDS.includes(kind)) throw new DwcpError('unsupported', `${name}'s DR provider ${p.drRegion}/${p.drProvider} is ${kind}: a test copy there would get a network, and isolating it is not built (only ${NETWORKLESS_KINDS.join(', ')} providers)`);
  const s = vm.spec;
  const spec: FleetVmSpec = {
    name: drTestName(name, nonce),
    vcpus: s.vcpus,
    memoryBytes: s.memoryBytes,
    diskBytes: s.diskBytes,
    image: s.image,
    labels: { [DR_TEST_LABEL]: name },
    spot: false,
    priority: 0,
    constraints: { regions: [p.drRegion], providers: [p.drProvider] },
  };
  const b = p.lastBackup;
  const restoredFrom = b === undefined ? `image ${s.image} (no backup recorded yet)` : `backup ${b.key} taken ${new Date(b.takenAt).toISOString()}`;
  return { spec, region: p.drRegion, provider: p.drProvider, restoredFrom };
}

/**
 * What a DR test must leave exactly as it was: the production VM's whole
 * record, as JSON, but for its newest backup: the backup schedule goes on
 * while the drill runs (the drill only reads backups; it takes and removes
 * none), so a newer one being recorded meanwhile is not the drill's change.
 */
export function productionOf(vm: FleetVm | undefined): string {
  // JSON leaves out an undefined field: the record as it was, without its newest backup.
  return JSON.stringify(vm === undefined || vm.protection === null ? (vm ?? null) : { ...vm, protection: { ...vm.protection, lastBackup: undefined } });
}
