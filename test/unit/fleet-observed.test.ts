/**
 * The observed fleet's pure parts: record keys, the VM and region record
 * encodings (round trip, canonical bytes, refusal of malformed records naming
 * the field), the diff, and the config fields they come from (capacity,
 * quota, prices, labels; errors name the field).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveConfig } from '../../src/config/load.ts';
import type { Instance } from '../../src/cloud/provider.ts';
import {
  DESIRED_VM_TAG,
  ObservedRecordError,
  decodeRegionRecord,
  decodeVmRecord,
  diffRecords,
  encodeRegionRecord,
  encodeVmRecord,
  shownUsage,
  onPremPrice,
  parseKey,
  regionKey,
  vmKey,
  vmRecordOf,
  type RegionRecord,
  type VmRecord,
} from '../../src/fleet/observed.ts';

const instance: Instance = {
  id: 'local-00000001',
  name: 'web-1',
  provider: 'local',
  region: 'dc1',
  zone: 'dc1-a',
  type: 'local.medium',
  vcpus: 2,
  memoryMiB: 4096,
  state: 'running',
  providerState: 'running',
  tags: { role: 'web', 'managed-by': 'dwcp', [DESIRED_VM_TAG]: 'web' },
  spot: false,
  launchTime: new Date('2026-12-06T10:00:00Z'),
  image: 'base',
  privateIp: '10.0.0.2',
  publicIp: null,
};

const region: RegionRecord = {
  region: 'n1',
  location: 'eu-west',
  reportedAtMs: 1_765_000_000_000,
  publishIntervalMs: 5_000,
  providers: [
    { name: 'local', kind: 'local', location: 'dc1', capacity: { vcpus: 16, memoryGiB: 32, diskGiB: 500 }, quota: null, usedVcpus: 2, usedMemoryMiB: 4096, vms: 1, lastError: null },
    { name: 'aws', kind: 'aws', location: 'eu-west-1', capacity: null, quota: { vcpus: 64, instances: null }, usedVcpus: 0, usedMemoryMiB: 0, vms: 0, lastError: 'throttled' },
  ],
  labels: { tier: 'gold' },
  jurisdiction: 'eu',
  compliance: ['gdpr'],
  failed: [{ vm: 'db1', generation: 3, reason: 'InsufficientInstanceCapacity: none left in eu-west-1a' }],
  health: 'degraded',
};

function vmValue(r: VmRecord): unknown[] {
  return JSON.parse(encodeVmRecord(r)) as unknown[];
}

function refusal(fn: () => unknown): ObservedRecordError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ObservedRecordError);
    return err as ObservedRecordError;
  }
  throw new Error('accepted');
}

describe('fleet record keys', () => {
  it('name the region, provider and id; ids may hold "/" (GCP zone/name)', () => {
    expect(vmKey('n1', 'gcp', 'europe-west1-b/web-1')).toBe('fleet/vm/n1/gcp/europe-west1-b/web-1');
    expect(parseKey('fleet/vm/n1/gcp/europe-west1-b/web-1')).toEqual({ kind: 'vm', region: 'n1', provider: 'gcp', id: 'europe-west1-b/web-1' });
    expect(parseKey(regionKey('n1'))).toEqual({ kind: 'region', region: 'n1' });
    for (const bad of ['fleet/vm/n1/local', 'fleet/vm//local/x', 'fleet/vm/n1//x', 'fleet/vm/n1/local/', 'fleet/region/', 'fleet/region/a/b', 'other/x']) expect(parseKey(bad), bad).toBeNull();
  });
});

describe('VM records', () => {
  const record = vmRecordOf('n1', 'local', instance, onPremPrice(2, 4096, { pricePerVcpuHour: 0.01, pricePerGiBHour: 0.002 }));

  it('round-trip, with the desired VM from its tag and the price', () => {
    expect(record.desiredVm).toBe('web');
    expect(record.pricePerHour).toBeCloseTo(0.028, 9);
    const key = vmKey('n1', 'local', instance.id);
    expect(decodeVmRecord(key, encodeVmRecord(record))).toEqual({ ...record, pricePerHour: 0.028, tags: { ...instance.tags } });
  });

  it('carry recent usage; a record from a daemon before usage was published reads as unmeasured', () => {
    const key = vmKey('n1', 'local', instance.id);
    const busy = vmRecordOf('n1', 'local', instance, 0.028, { cpu: 0.35, memory: 0.6 });
    expect(decodeVmRecord(key, encodeVmRecord(busy))).toMatchObject({ cpu: 0.35, memory: 0.6 });
    const older = JSON.stringify(vmValue(busy).slice(0, -2));
    expect(decodeVmRecord(key, older)).toMatchObject({ cpu: null, memory: null, pricePerHour: 0.028 });
  });

  it('show usage in 5 % steps with hysteresis, so a VM at a step boundary does not rewrite its record every sync', () => {
    expect(shownUsage(null, null)).toBeNull();
    expect(shownUsage(0.4, null)).toBeNull();
    expect(shownUsage(null, 0.123)).toBe(0.1);
    expect(shownUsage(null, 0.126)).toBe(0.15);
    expect(shownUsage(null, 1.7)).toBe(1);
    expect(shownUsage(null, -0.2)).toBe(0);
    // Hovering around 47.5 %: the published 0.45 holds until use is 3/4 of a step away.
    for (const m of [0.474, 0.476, 0.48, 0.486]) expect(shownUsage(0.45, m), String(m)).toBe(0.45);
    expect(shownUsage(0.45, 0.49)).toBe(0.5);
    expect(shownUsage(0.5, 0.474)).toBe(0.5);
    expect(shownUsage(0.5, 0.46)).toBe(0.45);
    // Every shown value is an exact step, so equal use encodes to equal bytes.
    for (let m = 0; m <= 1; m += 0.013) expect(Math.round(shownUsage(null, m)! * 100) % 5).toBe(0);
  });

  it('encode canonically (tag order does not matter) and compactly (no field names, no id)', () => {
    const reordered = { ...record, tags: Object.fromEntries(Object.entries(record.tags).reverse()) };
    expect(encodeVmRecord(reordered)).toBe(encodeVmRecord(record));
    const text = encodeVmRecord(record);
    expect(text).not.toContain('vcpus');
    expect(text).not.toContain(instance.id);
    expect(text.length).toBeLessThan(200);
  });

  it('refuse malformed records naming the field', () => {
    const key = vmKey('n1', 'local', instance.id);
    const good = vmValue(record);
    const with_ = (i: number, v: unknown) => JSON.stringify(good.map((x, j) => (j === i ? v : x)));
    expect(refusal(() => decodeVmRecord(key, 42)).field).toBe('vm');
    expect(refusal(() => decodeVmRecord(key, '{')).field).toBe('vm');
    expect(refusal(() => decodeVmRecord(key, '{}')).field).toBe('vm');
    expect(refusal(() => decodeVmRecord(key, with_(0, 2))).field).toBe('vm.version');
    expect(refusal(() => decodeVmRecord(key, JSON.stringify(good.slice(0, -1)))).message).toMatch(/^vm: has 13 fields, expected 14 .* or the first 12/);
    expect(refusal(() => decodeVmRecord(key, JSON.stringify(good.slice(0, -3)))).message).toMatch(/^vm: has 11 fields/);
    expect(refusal(() => decodeVmRecord(key, with_(13, 1.5))).field).toBe('vm.cpu');
    expect(refusal(() => decodeVmRecord(key, with_(14, '50%'))).field).toBe('vm.memory');
    expect(refusal(() => decodeVmRecord(key, with_(4, -1))).field).toBe('vm.vcpus');
    expect(refusal(() => decodeVmRecord(key, with_(4, 1.5))).field).toBe('vm.vcpus');
    expect(refusal(() => decodeVmRecord(key, with_(5, '4096'))).field).toBe('vm.memoryMiB');
    expect(refusal(() => decodeVmRecord(key, with_(6, 'exploded'))).message).toMatch(/^vm.state: "exploded" is not one of pending\|running/);
    expect(refusal(() => decodeVmRecord(key, with_(7, { a: 1 }))).field).toBe('vm.tags.a');
    expect(refusal(() => decodeVmRecord(key, with_(8, true))).field).toBe('vm.spot');
    expect(refusal(() => decodeVmRecord(key, with_(12, 'cheap'))).field).toBe('vm.pricePerHour');
    expect(refusal(() => decodeVmRecord(key, with_(1, 'x'.repeat(300)))).field).toBe('vm.name');
    expect(refusal(() => decodeVmRecord('fleet/vm/n1', encodeVmRecord(record))).field).toBe('vm.key');
    expect(refusal(() => decodeVmRecord(key, 'x'.repeat(20_000))).message).toMatch(/above the 16384 limit/);
  });
});

describe('region records', () => {
  it('round-trip', () => {
    expect(decodeRegionRecord(regionKey('n1'), encodeRegionRecord(region))).toEqual(region);
  });

  it('refuse malformed records naming the field', () => {
    const good = JSON.parse(encodeRegionRecord(region)) as Record<string, unknown>;
    const with_ = (patch: Record<string, unknown>) => JSON.stringify({ ...good, ...patch });
    const key = regionKey('n1');
    expect(refusal(() => decodeRegionRecord(key, with_({ v: 9 }))).field).toBe('region.v');
    expect(refusal(() => decodeRegionRecord(key, with_({ reportedAtMs: 'now' }))).field).toBe('region.reportedAtMs');
    expect(refusal(() => decodeRegionRecord(key, with_({ health: 'fine' }))).field).toBe('region.health');
    expect(refusal(() => decodeRegionRecord(key, with_({ compliance: 'gdpr' }))).field).toBe('region.compliance');
    const providers = good['providers'] as Record<string, unknown>[];
    expect(refusal(() => decodeRegionRecord(key, with_({ providers: [{ ...providers[0], capacity: { vcpus: -2, memoryGiB: 1, diskGiB: 1 } }] }))).field).toBe('region.providers[0].capacity.vcpus');
    expect(refusal(() => decodeRegionRecord(key, with_({ providers: [providers[0], { ...providers[1], usedVcpus: null }] }))).field).toBe('region.providers[1].usedVcpus');
    expect(refusal(() => decodeRegionRecord('fleet/vm/n1/a/b', encodeRegionRecord(region))).field).toBe('region.key');
  });
});

describe('diffRecords', () => {
  it('writes new and changed records, deletes vanished ones, leaves equal ones alone', () => {
    const published = new Map([
      ['a', '1'],
      ['b', '2'],
      ['c', '3'],
    ]);
    const wanted = new Map([
      ['a', '1'],
      ['b', '20'],
      ['d', '4'],
    ]);
    const { put, remove } = diffRecords(published, wanted);
    expect([...put]).toEqual([
      ['b', '20'],
      ['d', '4'],
    ]);
    expect(remove).toEqual(['c']);
    expect(diffRecords(wanted, wanted)).toEqual({ put: new Map(), remove: [] });
  });

  it('one changed VM among many is one write', () => {
    const records = Array.from({ length: 1_000 }, (_, i) => vmRecordOf('n1', 'local', { ...instance, id: `local-${i}` }, 0.028));
    const published = new Map(records.map((r) => [vmKey('n1', 'local', r.id), encodeVmRecord(r)]));
    const wanted = new Map(published);
    const changed = { ...records[500]!, state: 'stopped' as const };
    wanted.set(vmKey('n1', 'local', changed.id), encodeVmRecord(changed));
    expect([...diffRecords(published, wanted).put.keys()]).toEqual([vmKey('n1', 'local', 'local-500')]);
  });
});

describe('config: capacity, prices, quota, labels', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-fleet-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let files = 0;
  function resolve(text: string) {
    const path = join(dir, `c${files++}.yaml`);
    writeFileSync(path, `federation: f\n${text}`);
    return resolveConfig({ configPath: path, env: {} });
  }
  function problems(text: string): string[] {
    try {
      resolve(text);
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      return (err as ConfigError).problems;
    }
    throw new Error('the config was accepted');
  }
  const node = 'node: {name: n1, region: r1, provider: onprem}\n';

  it('defaults: no labels, local priced, fleet intervals, no capacity (the host is declared at run time)', () => {
    const c = resolve(node);
    expect(c.node).toMatchObject({ labels: {}, compliance: [] });
    expect(c.node.jurisdiction).toBeUndefined();
    expect(c.fleet).toMatchObject({ publishIntervalMs: 5_000, staleAfterMs: 15_000, reconcileIntervalMs: 2_000, maxAttempts: 5, placement: { strategy: 'binpack', attempts: 5 } });
    expect(c.clouds.providers[0]).toMatchObject({ kind: 'local', pricePerVcpuHour: 0.02, pricePerGiBHour: 0.003 });
  });

  it('reads capacity in GiB (or MiB), quota, prices and node labels', () => {
    const c = resolve(`node: {name: n1, region: r1, provider: onprem, labels: {tier: gold, rack: r12}, jurisdiction: eu, compliance: [gdpr, soc2]}
fleet: {publishIntervalMs: 1000}
clouds:
  providers:
    - {kind: local, capacity: {vcpus: 32, memoryGiB: 128, diskGiB: 2000}, pricePerVcpuHour: 0.015, pricePerGiBHour: 0.001}
    - {kind: local, name: old, capacity: {vcpus: 4, memoryMiB: 8192}}
    - {kind: aws, region: eu-west-1, quota: {vcpus: 256, instances: 50}}
`);
    expect(c.node).toMatchObject({ labels: { tier: 'gold', rack: 'r12' }, jurisdiction: 'eu', compliance: ['gdpr', 'soc2'] });
    expect(c.fleet).toMatchObject({ publishIntervalMs: 1_000, staleAfterMs: 3_000 });
    const [a, b, aws] = c.clouds.providers;
    expect(a).toMatchObject({ capacity: { vcpus: 32, memoryGiB: 128, memoryMiB: 131072, diskGiB: 2000 }, pricePerVcpuHour: 0.015, pricePerGiBHour: 0.001 });
    expect(b).toMatchObject({ capacity: { vcpus: 4, memoryGiB: 8, memoryMiB: 8192, diskGiB: 1000 } });
    expect(aws).toMatchObject({ quota: { vcpus: 256, instances: 50 } });
  });

  it('refuses bad values naming the field', () => {
    expect(problems(`${node}clouds: {providers: [{kind: local, capacity: {vcpus: 0, memoryGiB: 1}}]}\n`).join('\n')).toMatch(/clouds\.providers\[0\]\.capacity\.vcpus/);
    expect(problems(`${node}clouds: {providers: [{kind: local, capacity: {vcpus: 2}}]}\n`).join('\n')).toMatch(/clouds\.providers\[0\]\.capacity\.memoryGiB.*required/);
    expect(problems(`${node}clouds: {providers: [{kind: local, capacity: {vcpus: 2, memoryGiB: 1, memoryMiB: 1024}}]}\n`).join('\n')).toMatch(/clouds\.providers\[0\]\.capacity\.memoryMiB/);
    expect(problems(`${node}clouds: {providers: [{kind: local, pricePerVcpuHour: -1}]}\n`).join('\n')).toMatch(/clouds\.providers\[0\]\.pricePerVcpuHour/);
    expect(problems(`${node}clouds: {providers: [{kind: aws, region: eu-west-1, quota: {vcpus: 0}}]}\n`).join('\n')).toMatch(/clouds\.providers\[0\]\.quota\.vcpus/);
    expect(problems(`${node}clouds: {providers: [{kind: aws, region: eu-west-1, capacity: {vcpus: 1, memoryGiB: 1}}]}\n`).join('\n')).toMatch(/clouds\.providers\[0\]/);
    expect(problems('node: {name: n1, region: r1, provider: onprem, labels: {"Bad Key": x}}\n').join('\n')).toMatch(/node\.labels/);
    expect(problems('node: {name: n1, region: r1, provider: onprem, jurisdiction: "E U"}\n').join('\n')).toMatch(/node\.jurisdiction/);
    expect(problems('node: {name: n1, region: r1, provider: onprem, compliance: [GDPR]}\n').join('\n')).toMatch(/node\.compliance\[0\]/);
    expect(problems(`${node}fleet: {publishIntervalMs: 1000, staleAfterMs: 1500}\n`).join('\n')).toMatch(/fleet\.staleAfterMs.*at least twice/);
    expect(problems(`${node}fleet: {placement: {strategy: pack}}\n`).join('\n')).toMatch(/fleet\.placement\.strategy: "pack" is not one of binpack\|spread/);
    expect(problems(`${node}fleet: {placement: {weights: {cheapness: 1}}}\n`).join('\n')).toMatch(/fleet\.placement\.weights\.cheapness: unknown key/);
    expect(problems(`${node}fleet: {backoffBaseMs: 5000, backoffCapMs: 1000}\n`).join('\n')).toMatch(/fleet\.backoffCapMs.*at least fleet\.backoffBaseMs/);
  });
});
