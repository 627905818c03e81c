/**
 * The optimiser end to end: a real dwcpd with AWS and GCP providers against
 * the fake EC2, Compute, CloudWatch and Cloud Monitoring servers (started
 * here, so their instances and metrics are set by the test), driven through
 * the real dwcpctl.
 *
 * Five days of history are served (the daemon backfills them on its first
 * utilisation pass): an idle EC2 instance (CPU 2 %, 1 kB of network per
 * 5 minutes), an oversized one (m5.xlarge at 10 % CPU), and a busy,
 * right-sized GCE instance (e2-medium at 70 %). What it proves:
 * recommendations appear for the idle and the oversized VM and none for the
 * busy one; `cost apply` of the rightsizing stops the instance, changes its
 * type through the EC2 API (ModifyInstanceAttribute) and starts it again;
 * applying an id again, an unknown id, or an idle stop without --confirm is
 * refused with a message naming the id.
 *
 * Every wait polls a condition with a deadline; no fixed sleeps.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeCloudWatchServer } from '../../src/cloud/fake/cloudwatch-server.ts';
import type { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import type { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';
import type { FakeMonitoringServer } from '../../src/cloud/fake/monitoring-server.ts';
import type { ApplyResult, RecommendationsView } from '../../src/cost/wire.ts';
import { fakeAwsEnv, fakeCloudProviders, startCloudFakes, type CloudFakes } from '../support/cloud-fakes.ts';
import { baseConfig, ctlOn, eventually, prepareNode, startDaemon, tempRoot, type CtlResult, type DaemonProcess, type NodeFiles } from './harness.ts';

const DAY = 86_400_000;
const env = fakeAwsEnv('AKIDOPTIMISER0001');

let root: { path: string; remove: () => Promise<void> };
let ec2: FakeEc2Server;
let compute: FakeComputeServer;
let cloudwatch: FakeCloudWatchServer;
let monitoring: FakeMonitoringServer;
let clouds: CloudFakes;
let node: NodeFiles;
let daemon: DaemonProcess;
let idleId = '';
let bigId = '';
let busyName = '';

beforeAll(async () => {
  root = await tempRoot('cost-optimiser');
  clouds = await startCloudFakes(root.path);
  ({ ec2, compute, cloudwatch, monitoring } = clouds);
  const [idle] = ec2.seed(1, { instanceType: 't3.medium', tags: { Name: 'idle1' } });
  const [big] = ec2.seed(1, { instanceType: 'm5.xlarge', tags: { Name: 'big1' } });
  const [busy] = compute.seed(1, { machineType: 'e2-medium', namePrefix: 'busy' });
  idleId = idle?.instanceId ?? '';
  bigId = big?.instanceId ?? '';
  busyName = busy?.name ?? '';
  const since = Date.now() - 6 * DAY;
  cloudwatch.metrics.set(idleId, 'cpu', 0.02, since);
  cloudwatch.metrics.set(idleId, 'networkIn', 1_000, since);
  cloudwatch.metrics.set(idleId, 'networkOut', 0, since);
  cloudwatch.metrics.set(bigId, 'cpu', 0.1, since);
  cloudwatch.metrics.set(bigId, 'networkIn', 5_000_000, since);
  cloudwatch.metrics.set(bigId, 'networkOut', 1_000_000, since);
  const gce = `${busy?.zone}/${busyName}`;
  monitoring.metrics.set(gce, 'cpu', 0.7, since);
  monitoring.metrics.set(gce, 'networkIn', 5_000_000, since);
  monitoring.metrics.set(gce, 'networkOut', 5_000_000, since);
  node = await prepareNode(root.path, 'home');
  const config = baseConfig(node, {
    clouds: {
      providers: [
        ...fakeCloudProviders(clouds, 600_000),
        { kind: 'local', capacity: { vcpus: 4, memoryGiB: 8 }, pricePerVcpuHour: 0.01, pricePerGiBHour: 0.001, inventoryIntervalMs: 600_000 },
      ],
    },
    cost: { intervalMs: 1_000, utilisation: { intervalMs: 2_000, backfillMs: 5 * DAY }, recommendations: { intervalMs: 2_000 } },
  });
  daemon = await startDaemon(node, config, env);
  await daemon.serving();
}, 90_000);

afterAll(async () => {
  await daemon?.stop();
  await clouds?.close();
  await root?.remove();
});

const ctl = (...args: string[]): Promise<CtlResult> => ctlOn(node.socket).ctl(...args);
const ctlJson = <T>(...args: string[]): Promise<T> => ctlOn(node.socket).ctlJson<T>(...args);

describe('the optimiser on a daemon with AWS and GCP', () => {
  let view: RecommendationsView;

  it('recommends stopping the idle VM and downsizing the oversized one, and nothing for the busy right-sized one', async () => {
    view = await eventually('idle and rightsizing recommendations', 120_000, async () => {
      const v = await ctlJson<RecommendationsView>('cost', 'recommendations', '--refresh');
      const kinds = new Set(v.recommendations.map((r) => `${r.instanceId}:${r.kind}`));
      return kinds.has(`${idleId}:idle`) && kinds.has(`${bigId}:rightsize`) ? v : undefined;
    }, 500);
    const idle = view.recommendations.find((r) => r.instanceId === idleId);
    expect(idle).toMatchObject({ kind: 'idle', vm: 'idle1', region: 'home', provider: 'aws', type: 't3.medium', action: { kind: 'stop' }, projectedMonthlyUsd: 0 });
    // t3.medium on demand in us-east-1 ($0.0416/h) × 730 h.
    expect(idle?.currentMonthlyUsd).toBeCloseTo(30.368, 3);
    expect(idle?.evidence.idleDays).toBeGreaterThanOrEqual(4);
    const big = view.recommendations.find((r) => r.instanceId === bigId && r.kind === 'rightsize');
    // 4 vCPU × 10 % × 1.2 = 0.48 vCPU; memory not sampled on EC2, so ≥ 16 GiB: r5.large ($0.126/h) is the cheapest such type.
    expect(big).toMatchObject({ vm: 'big1', type: 'm5.xlarge', action: { kind: 'resize', toType: 'r5.large' }, confidence: 'low' });
    // Low: 5 of 14 days measured, and memory unknown.
    expect(big?.evidence).toMatchObject({ cpuAtPercentile: 0.1, neededVcpus: 0.48, memory: 'not sampled: no type with less memory than now' });
    expect(big?.savingsMonthlyUsd).toBeCloseTo((0.192 - 0.126) * 730, 3);
    expect(view.recommendations.filter((r) => r.vm === busyName)).toEqual([]);
    expect(view.recommendations.filter((r) => r.instanceId === bigId).map((r) => r.kind)).toEqual(['rightsize']);
    expect(view.regions).toEqual([expect.objectContaining({ region: 'home', scanned: 3 })]);

    const table = await ctl('cost', 'recommendations');
    expect(table, table.stderr).toMatchObject({ code: 0 });
    expect(table.stdout).toMatch(/^ID +KIND +VM +REGION +PROVIDER +TYPE +ACTION +NOW\/MO +THEN\/MO +SAVES\/MO +CONFIDENCE$/m);
    expect(table.stdout).toMatch(new RegExp(`^${big?.id} +rightsize +big1 +home +aws +m5\\.xlarge +resize to r5\\.large +\\$140\\.16 +\\$91\\.98 +\\$48\\.18 +low$`, 'm'));
    expect(table.stdout).toContain(`${big?.id}  big1: P99.5 CPU 10 % of 4 vCPU + 20 % headroom needs 0.48 vCPU: r5.large (2 vCPU, 16384 MiB) is the cheapest type that fits`);
  }, 150_000);

  it('cost apply of the rightsizing stops the VM, changes its type through EC2 and starts it', async () => {
    const rec = view.recommendations.find((r) => r.instanceId === bigId && r.kind === 'rightsize');
    const applied = await ctlJson<ApplyResult>('cost', 'apply', rec?.id ?? '');
    expect(applied).toMatchObject({ id: rec?.id, kind: 'rightsize', vm: 'big1', migration: null });
    expect(applied.done).toEqual([`stopped ${bigId}`, `changed ${bigId} from m5.xlarge to r5.large`, `started ${bigId}`]);
    const instance = ec2.instances().find((i) => i.instanceId === bigId);
    expect(instance).toMatchObject({ instanceType: 'r5.large', state: 'running' });
    expect(ec2.calls.count('ModifyInstanceAttribute', 200)).toBe(1);
    expect(daemon.lines.some((l) => l.event === 'recommendation_applied' && l.id === rec?.id)).toBe(true);

    // Applied: the id is gone, and saying it again is refused by name.
    const again = await ctl('cost', 'apply', rec?.id ?? '');
    expect(again.code).not.toBe(0);
    expect(again.stderr).toContain(`no recommendation ${rec?.id} in region home (unknown, already applied, or stale`);
  }, 120_000);

  it('refuses an unknown id and an idle stop without --confirm, naming the id', async () => {
    const unknown = await ctl('cost', 'apply', 'rs-0123456789');
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toContain('no recommendation rs-0123456789 in region home');
    const malformed = await ctl('cost', 'apply', 'resize-big1');
    expect(malformed.code).not.toBe(0);
    expect(malformed.stderr).toContain('id: "resize-big1" is not a recommendation id');
    const idle = view.recommendations.find((r) => r.instanceId === idleId);
    const unconfirmed = await ctl('cost', 'apply', idle?.id ?? '');
    expect(unconfirmed.code).not.toBe(0);
    expect(unconfirmed.stderr).toContain(`confirm: recommendation ${idle?.id} stops idle1 (${idleId}, idle); pass --confirm to stop it`);
    expect(ec2.instances().find((i) => i.instanceId === idleId)?.state).toBe('running');
    const confirmed = await ctlJson<ApplyResult>('cost', 'apply', idle?.id ?? '', '--confirm');
    expect(confirmed.done).toEqual([`stopped ${idleId}`]);
    expect(ec2.instances().find((i) => i.instanceId === idleId)?.state).toBe('stopped');
  }, 120_000);
});
