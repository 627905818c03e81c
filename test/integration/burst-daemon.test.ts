/**
 * Bursting end to end: a real dwcpd whose home region is a local
 * (on-premises) provider with room for two replicas, and AWS and GCP
 * providers against the fake EC2, Compute, CloudWatch and Cloud Monitoring
 * servers, driven through the real dwcpctl. A burst group `web` (min 2,
 * max 4) comes from the config; the home's simulated load is stepped with
 * the local provider's load overrides file (a real input the provider reads
 * at each usage query, not a test hook).
 *
 * What it proves: the home replicas are placed home; a load step (CPU 97 %
 * of home capacity) bursts replicas into the cheaper cloud, one trigger
 * window apart, up to max, each placed with operation `burst`; when the load
 * falls, the burst replicas are removed newest first, each at least the
 * cooldown after the last scale-out, and their cloud copies are terminated.
 * `burst status` shows the group's home, state, replicas, windows and the
 * last decision with its reason; the metrics count the replicas and
 * decisions. Trigger windows and the cooldown are shortened by config (3 s
 * and 6 s), not by sleeps: every wait polls a condition with a deadline.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, onTestFailed } from 'vitest';
import type { BurstGroupStatus } from '../../src/burst/status.ts';
import { fakeAwsEnv, fakeCloudProviders, startCloudFakes, type CloudFakes } from '../support/cloud-fakes.ts';
import { baseConfig, ctlOn, eventually, metricValue, prepareNode, startDaemon, tempRoot, type CtlResult, type DaemonProcess, type NodeFiles } from './harness.ts';

const COOLDOWN_MS = 6_000;

let root: { path: string; remove: () => Promise<void> };
let fakes: CloudFakes;
let node: NodeFiles;
let daemon: DaemonProcess;
let loadFile: string;

function setHomeLoad(cpu: number): void {
  writeFileSync(loadFile, JSON.stringify({ default: { shape: 'constant', cpu, memory: 0.3, noise: 0 } }));
}

beforeAll(async () => {
  root = await tempRoot('burst-daemon');
  fakes = await startCloudFakes(root.path);
  node = await prepareNode(root.path, 'home');
  loadFile = join(root.path, 'home-load.json');
  setHomeLoad(0.2);
  const config = baseConfig(node, {
    clouds: {
      providers: [
        ...fakeCloudProviders(fakes, 1_000),
        // Room for exactly the two home replicas: two busy replicas are a full home.
        { kind: 'local', capacity: { vcpus: 2, memoryGiB: 4 }, inventoryIntervalMs: 500, load: { periodMs: 1_000, overridesFile: loadFile } },
      ],
    },
    fleet: { reconcileIntervalMs: 500 },
    burst: {
      evaluateIntervalMs: 500,
      sampleMaxAgeMs: 5_000,
      scaleOut: { cpuForMs: 3_000, memoryForMs: 3_000 },
      cooldownMs: COOLDOWN_MS,
      groups: [{ name: 'web', home: 'home', template: { vcpus: 1, memoryBytes: 1024 ** 3, image: 'ami-0abc1234' }, min: 2, max: 4 }],
    },
  });
  daemon = await startDaemon(node, config, fakeAwsEnv('AKIDBURST0000001'));
  await daemon.serving();
}, 90_000);

afterAll(async () => {
  await daemon?.stop();
  await fakes?.close();
  await root?.remove();
});

const ctl = (...args: string[]): Promise<CtlResult> => ctlOn(node.socket).ctl(...args);
const ctlJson = <T>(...args: string[]): Promise<T> => ctlOn(node.socket).ctlJson<T>(...args);

interface DesiredRow {
  name: string;
  region: string;
  provider: string;
  status: string;
}

async function desired(): Promise<DesiredRow[]> {
  return (await ctlJson<{ vms: DesiredRow[] }>('vm', 'list', '--desired')).vms;
}

async function web(): Promise<BurstGroupStatus> {
  const [g] = await ctlJson<BurstGroupStatus[]>('burst', 'status');
  if (g === undefined) throw new Error('no burst group in burst status');
  return g;
}

/** The decisions the daemon logged, with the tick time each was decided at. */
function burstLines(kind: 'scale-out' | 'scale-in'): { time: number; vms: string[]; reason: string }[] {
  return daemon.lines.filter((l) => l.component === 'burst' && l.decision === kind && typeof l.msg === 'string' && l.msg.startsWith('burst ')).map((l) => ({ time: Number(l.decidedAtMs), vms: l.vms as string[], reason: String(l.reason) }));
}

describe('cloud bursting on a daemon with a local home region, AWS and GCP', () => {
  let cheaper = '';
  // On failure: the daemon's warnings and burst lines, to say why without a rerun.
  const diagnose = () =>
    onTestFailed(() => {
      const lines = daemon.lines.filter((l) => l.component === 'burst' || l.level === 'warn' || l.level === 'error').slice(-40);
      console.error(lines.map((l) => JSON.stringify(l)).join('\n'));
    });

  it('places the home replicas home from the config group, and bursts nothing at low load', async () => {
    diagnose();
    await eventually('web-h1 and web-h2 running at home', 90_000, async () => {
      const rows = await desired();
      const home = rows.filter((r) => r.name.startsWith('web-h'));
      return home.length === 2 && home.every((r) => r.provider === 'local' && r.status === 'running') ? true : undefined;
    });
    const g = await eventually('a home reading in burst status', 30_000, async () => {
      const s = await web();
      return s.windows?.sample?.cpu !== undefined && s.windows.sample.cpu !== null ? s : undefined;
    });
    expect(g).toMatchObject({ name: 'web', home: 'home', drivenHere: true, state: 'steady', replicas: { home: 2, queued: 0, burst: 0 } });
    // Two 1-vCPU replicas at 20 % of a 2-vCPU home.
    expect(g.windows?.sample?.cpu).toBeCloseTo(0.2, 2);
    expect(burstLines('scale-out')).toEqual([]);
    // The cheaper cloud for a replica, as placement prices it (one provider at a time: both are providers of this one region).
    const price = async (provider: string): Promise<number> =>
      (await ctlJson<{ decision: { choice: { provider: string; hourlyUsd: number } } }>('place', 'probe', '--cpu', '1', '--memory', '1GiB', '--image', 'ami-0abc1234', '--constraint', `provider=${provider}`)).decision.choice.hourlyUsd;
    const [aws, gcp] = [await price('aws'), await price('gcp')];
    expect(aws).not.toBe(gcp);
    cheaper = aws < gcp ? 'aws' : 'gcp';
  }, 150_000);

  it('a load step bursts replicas into the cheaper cloud, one window apart, up to max', async () => {
    diagnose();
    setHomeLoad(0.97);
    const g = await eventually('two burst replicas (max 4 − min 2)', 90_000, async () => {
      const s = await web();
      return s.replicas.burst === 2 ? s : undefined;
    });
    expect(g.state).toBe('burst');
    expect(g.replicas.burstNames).toEqual(['web-b1', 'web-b2']);
    expect(g.last).toMatchObject({ kind: 'scale-out', outcome: 'ok' });
    expect(g.last?.reason).toMatch(/^home CPU 9\d(\.\d)? % above 90 % for \d+ s \(window 3 s\)$/);
    const outs = burstLines('scale-out');
    expect(outs.map((o) => o.vms)).toEqual([[`web-b1@home/${cheaper}`], [`web-b2@home/${cheaper}`]]);
    // The second step needs another full window after the first.
    expect((outs[1]?.time ?? 0) - (outs[0]?.time ?? 0)).toBeGreaterThanOrEqual(3_000);
    const rows = await eventually('both burst replicas running in the cloud', 90_000, async () => {
      const list = await desired();
      const b = list.filter((r) => r.name.startsWith('web-b'));
      return b.length === 2 && b.every((r) => r.status === 'running') ? b : undefined;
    });
    expect(rows.map((r) => r.provider)).toEqual([cheaper, cheaper]);
    const cloudCopies = cheaper === 'aws' ? fakes.ec2.instances().filter((i) => i.state === 'running').length : fakes.compute.instances().filter((i) => i.status === 'RUNNING').length;
    expect(cloudCopies).toBe(2);
    // Held at max: status says so while the load stays high.
    await eventually('status holding at max', 30_000, async () => ((await web()).holding?.includes('at max (4 replicas)') ? true : undefined));
    const text = await daemon.scrape();
    expect(metricValue(text, 'dwcp_burst_replicas', { group: 'web', role: 'burst' })).toBe(2);
    expect(metricValue(text, 'dwcp_burst_replicas', { group: 'web', role: 'home' })).toBe(2);
    expect(metricValue(text, 'dwcp_burst_decisions_total', { group: 'web', decision: 'scale-out', result: 'ok' })).toBe(2);
    const table = await ctl('burst', 'status');
    expect(table, table.stderr).toMatchObject({ code: 0 });
    expect(table.stdout).toMatch(/^web +home +burst +2\/2 +0 +2\/2 /m);
    expect(table.stdout).toContain('web: burst replicas (newest last): web-b1, web-b2');
  }, 200_000);

  it('when the load falls, scales back newest first after the cooldown, and the cloud copies go', async () => {
    diagnose();
    setHomeLoad(0.1);
    const g = await eventually('no burst replicas left', 120_000, async () => {
      const s = await web();
      return s.replicas.burst === 0 ? s : undefined;
    });
    expect(g.state).toBe('steady');
    expect(g.last).toMatchObject({ kind: 'scale-in', vms: ['web-b1'], outcome: 'ok' });
    expect(g.last?.reason).toMatch(/^home quiet \(CPU 10 % below 50 %, memory \d+(\.\d)? % below 60 %, nothing queued\) for \d+ s$/);
    const outs = burstLines('scale-out');
    const ins = burstLines('scale-in');
    expect(ins.map((i) => i.vms)).toEqual([['web-b2'], ['web-b1']]);
    // Zero oscillation: each scale-in a full cooldown after the last scale-out, and after the previous scale-in.
    expect((ins[0]?.time ?? 0) - (outs.at(-1)?.time ?? 0)).toBeGreaterThanOrEqual(COOLDOWN_MS);
    expect((ins[1]?.time ?? 0) - (ins[0]?.time ?? 0)).toBeGreaterThanOrEqual(COOLDOWN_MS);
    await eventually('the burst replicas purged from desired state and their cloud copies terminated', 90_000, async () => {
      const list = await desired();
      const live = cheaper === 'aws' ? fakes.ec2.instances().filter((i) => i.state !== 'terminated').length : fakes.compute.instances().length;
      return list.every((r) => !r.name.startsWith('web-b')) && live === 0 ? true : undefined;
    });
    const text = await daemon.scrape();
    expect(metricValue(text, 'dwcp_burst_replicas', { group: 'web', role: 'burst' })).toBe(0);
    expect(metricValue(text, 'dwcp_burst_decisions_total', { group: 'web', decision: 'scale-in', result: 'ok' })).toBe(2);
  }, 200_000);
});
