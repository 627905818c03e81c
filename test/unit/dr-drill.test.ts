/**
 * The DR test's pure plan (src/dr/drill.ts): the isolated copy's name and
 * spec (the production VM's size and image, pinned to the DR region and
 * provider, labelled, unprotected), and the refusals, each naming the VM:
 * unknown, unprotected, failed over, a DR provider with networking.
 */
import { describe, expect, it } from 'vitest';
import { drTestName, planDrTest, productionOf } from '../../src/dr/drill.ts';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

function fleet() {
  const m = machineWith(registerRegion('dc1', [localProvider(8, 16)]), registerRegion('dc2', [localProvider(8, 16)]));
  for (const c of [create(spec('web1', { image: 'tiny', labels: { app: 'shop' } })), assign('web1', 'dc1', 1), parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2' }), create(spec('db1')), assign('db1', 'dc1', 1)]) expect(m.apply(c)).toMatchObject({ ok: true });
  return m;
}
const kindOf = (kind: string) => (_region: string, provider: string) => (provider === 'local' ? kind : undefined);

describe('DR test plan', () => {
  it('names the copy NAME-drtest-NONCE, a DNS label even for a long name', () => {
    expect(drTestName('web1', 'ab12')).toBe('web1-drtest-ab12');
    const long = drTestName(`${'a'.repeat(50)}-${'b'.repeat(12)}`, 'ab12');
    expect(long.length).toBeLessThanOrEqual(63);
    expect(long).toMatch(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/);
  });

  it('copies size and image, pins the DR region and provider, labels it, protects nothing', () => {
    const m = fleet();
    const plan = planDrTest(m.vm('web1'), 'web1', kindOf('qemu'), 'ab12');
    expect(plan).toMatchObject({ region: 'dc2', provider: 'local', restoredFrom: 'image tiny (no backup recorded yet)' });
    expect(plan.spec).toMatchObject({ name: 'web1-drtest-ab12', image: 'tiny', labels: { 'dwcp-dr-test': 'web1' }, constraints: { regions: ['dc2'], providers: ['local'] } });
    expect(plan.spec.vcpus).toBe(m.vm('web1')?.spec.vcpus);
  });

  it('refuses an unknown, an unprotected, a failed-over VM, and a DR provider whose guests get a network', () => {
    const m = fleet();
    expect(() => planDrTest(undefined, 'nosuch', kindOf('local'), 'ab12')).toThrow('no VM named nosuch');
    expect(() => planDrTest(m.vm('db1'), 'db1', kindOf('local'), 'ab12')).toThrow('db1 is not protected');
    expect(() => planDrTest(m.vm('web1'), 'web1', kindOf('aws'), 'ab12')).toThrow(/DR provider dc2\/local is aws: a test copy there would get a network/);
    const before = productionOf(m.vm('web1'));
    // A backup recorded while the drill runs is the schedule's, not the drill's: production still compares equal, and the
    // drill restores from it.
    const backup = { region: 'dc1', generation: 1, takenAt: 5_000, key: 'dr/backup/web1/5000-g1', version: 'a'.repeat(64), size: 4096 };
    expect(m.apply(parseFleetCommand({ kind: 'backup', vm: 'web1', backup }))).toMatchObject({ ok: true });
    expect(productionOf(m.vm('web1'))).toBe(before);
    expect(planDrTest(m.vm('web1'), 'web1', kindOf('local'), 'ab12').restoredFrom).toBe('backup dr/backup/web1/5000-g1 taken 1970-01-01T00:00:05.000Z');
    m.apply(parseFleetCommand({ kind: 'failover', vm: 'web1', region: 'dc1', generation: 1, reason: 'lost', since: 0, at: 0 }));
    expect(productionOf(m.vm('web1'))).not.toBe(before);
    expect(() => planDrTest(m.vm('web1'), 'web1', kindOf('local'), 'ab12')).toThrow('web1 is failed over to dc2');
  });
});
