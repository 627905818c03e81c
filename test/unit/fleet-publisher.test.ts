/**
 * ObservedPublisher against a fake geo store and inventory: only changed
 * records are written, vanished and terminated VMs are tombstoned, a
 * provider never synced keeps its records, records from before a restart are
 * adopted (not resent), and the region record is a heartbeat.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { resolveConfig } from '../../src/config/load.ts';
import type { Instance } from '../../src/cloud/provider.ts';
import type { CloudInventory, ProviderStatus } from '../../src/cloud/inventory.ts';
import type { GeoState } from '../../src/state/geo-state.ts';
import { ObservedPublisher } from '../../src/fleet/observed-publisher.ts';
import { decodeRegionRecord, decodeVmRecord, regionKey, vmKey } from '../../src/fleet/observed.ts';
import { createLogger } from '../../src/log.ts';

const dir = mkdtempSync(join(tmpdir(), 'dwcp-fleet-pub-'));
afterEach(() => vi.useRealTimers());

function config() {
  const path = join(dir, 'c.yaml');
  writeFileSync(
    path,
    `federation: f
node: {name: n1, region: r1, provider: onprem, labels: {tier: gold}}
fleet: {publishIntervalMs: 5000}
clouds:
  providers:
    - {kind: local, capacity: {vcpus: 8, memoryGiB: 16}, pricePerVcpuHour: 0.01, pricePerGiBHour: 0.002}
    - {kind: local, name: other, region: dc2}
`,
  );
  const c = resolveConfig({ configPath: path, env: {} });
  rmSync(path);
  return c;
}

function instance(id: string, state: Instance['state'] = 'running'): Instance {
  return { id, name: id, provider: 'local', region: 'local', zone: 'local-a', type: 'local.medium', vcpus: 2, memoryMiB: 4096, state, providerState: state, tags: {}, spot: false, launchTime: null, image: 'base', privateIp: null, publicIp: null };
}

class FakeGeo {
  readonly values = new Map<string, string | null>();
  readonly writes: string[] = [];
  async update(name: string, _type: unknown, op: { op: 'put'; value: string } | { op: 'delete' }): Promise<void> {
    this.writes.push(`${op.op} ${name}`);
    this.values.set(name, op.op === 'put' ? op.value : null);
  }
  list(prefix: string): [string, { value: string | null }][] {
    return [...this.values]
      .map(([k, v]): [string, { value: string | null }] => [`lww-register:${k}`, { value: v }])
      .filter(([k]) => k.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : 1));
  }
  valueOf(entry: { value: string | null }): string | undefined {
    return entry.value ?? undefined;
  }
}

class FakeInventory {
  instances = new Map<string, Instance[]>([['local', []], ['other', []]]);
  synced = new Set(['local', 'other']);
  readonly catalog = {} as CloudInventory['catalog'];
  statuses(): ProviderStatus[] {
    return ['local', 'other'].map((name) => ({ name, kind: 'local', region: name, description: '', syncedAt: this.synced.has(name) ? new Date() : null, restored: false, lastError: null, instances: 0, pendingCreates: 0 }));
  }
  async list(q: { providers?: readonly string[] }) {
    const names = q.providers ?? ['local', 'other'];
    return { instances: names.flatMap((p) => (this.instances.get(p) ?? []).map((instance) => ({ provider: p, instance }))), statuses: this.statuses() };
  }
}

function publisher(geo: FakeGeo, inventory: FakeInventory) {
  return new ObservedPublisher({
    config: config(),
    geo: geo as unknown as Pick<GeoState, 'update' | 'list' | 'valueOf'>,
    inventory: inventory as unknown as Pick<CloudInventory, 'list' | 'statuses' | 'catalog'>,
    members: () => [],
    log: createLogger('silent'),
  });
}

describe('ObservedPublisher', () => {
  it('writes only what changed, tombstones vanished and terminated VMs, heartbeats the region record', async () => {
    vi.useFakeTimers({ toFake: ['Date'], now: 1_765_000_000_000 });
    const geo = new FakeGeo();
    const inv = new FakeInventory();
    inv.instances.set('local', [instance('v1'), instance('v2')]);
    const pub = publisher(geo, inv);
    await pub.publish();
    expect(geo.writes.sort()).toEqual([`put ${regionKey('n1')}`, `put ${vmKey('n1', 'local', 'v1')}`, `put ${vmKey('n1', 'local', 'v2')}`]);
    const r = decodeRegionRecord(regionKey('n1'), geo.values.get(regionKey('n1')));
    expect(r.providers[0]).toMatchObject({ name: 'local', capacity: { vcpus: 8, memoryGiB: 16, diskGiB: 1000 }, usedVcpus: 4, usedMemoryMiB: 8192, vms: 2 });
    expect(r.providers[1]!.capacity!.vcpus).toBeGreaterThan(0); // no capacity configured: the host's
    expect(r.labels).toEqual({ tier: 'gold' });
    expect(decodeVmRecord(vmKey('n1', 'local', 'v1'), geo.values.get(vmKey('n1', 'local', 'v1'))).pricePerHour).toBeCloseTo(0.028, 9);

    // Nothing changed, within the heartbeat interval: nothing written.
    geo.writes.length = 0;
    vi.setSystemTime(Date.now() + 1_000);
    await pub.publish();
    expect(geo.writes).toEqual([]);

    // One VM stopped, one terminated: one put, one delete, and the region's usage changed.
    inv.instances.set('local', [instance('v1', 'stopped'), instance('v2', 'terminated')]);
    await pub.publish();
    expect(geo.writes).toEqual([`put ${vmKey('n1', 'local', 'v1')}`, `delete ${vmKey('n1', 'local', 'v2')}`, `put ${regionKey('n1')}`]);

    // The heartbeat: unchanged, but the interval passed.
    geo.writes.length = 0;
    vi.setSystemTime(Date.now() + 5_000);
    await pub.publish();
    expect(geo.writes).toEqual([`put ${regionKey('n1')}`]);
  });

  it('keeps the records of a provider not synced yet, and adopts its own records after a restart', async () => {
    const geo = new FakeGeo();
    const inv = new FakeInventory();
    inv.instances.set('local', [instance('v1')]);
    inv.instances.set('other', [instance('w1')]);
    await publisher(geo, inv).publish();
    // Another region's record is never touched.
    geo.values.set(vmKey('n2', 'local', 'x'), 'foreign');

    // Restart: "other" has not synced yet and v1 vanished while down.
    const again = new FakeInventory();
    again.synced = new Set(['local']);
    const pub = publisher(geo, again);
    pub.start();
    await pub.stop();
    expect(geo.values.get(vmKey('n1', 'local', 'v1'))).toBeNull();
    expect(geo.values.get(vmKey('n1', 'other', 'w1'))).toEqual(expect.any(String));
    expect(geo.values.get(vmKey('n2', 'local', 'x'))).toBe('foreign');
  });
});
