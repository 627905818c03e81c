/**
 * Clouds end to end: a real dwcpd configured with an AWS provider and a GCP
 * provider pointed at the fake EC2 and Compute servers (started here, in the
 * test process, so faults can be injected and state inspected), plus the
 * local provider; driven through the real dwcpctl.
 *
 * What it proves: `vm list` across the three with the local one labelled;
 * the create/stop/start/terminate round trip on each cloud through the real
 * SDKs; `vm types` with catalog prices; `cost estimate` under each model,
 * spot refreshed live from DescribeSpotPriceHistory; a capacity error
 * surfaced with EC2's message; a create whose CreateTags failed finished by
 * the next sync; a create cut short by SIGKILL finished after the restart;
 * throttling retried and counted in the metrics (promtool-clean); a provider
 * whose credentials expired reported as a failing sync while the daemon and
 * the other providers go on.
 *
 * Syncs run at start and on `vm list --refresh`; the periodic interval is
 * long so no background sync consumes an injected fault. Every wait is on an
 * event or a polled condition with a deadline, never a fixed sleep.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';
import type { ListInstancesResponse, VmInstanceResponse, EstimateCostResponse, ListTypesResponse } from '../../src/admin/schema.ts';
import { lintMetrics } from '../support/promtool.ts';
import { writeExternalAccount } from '../support/gcp-credentials.ts';
import { fakeAwsEnv } from '../support/cloud-fakes.ts';
import { baseConfig, ctlOn, metricValue, prepareNode, startDaemon, tempRoot, type CtlResult, type DaemonProcess, type NodeFiles } from './harness.ts';

const ACCESS_KEY = 'AKIDDAEMON000001';
const IMAGE_GCP = 'projects/debian-cloud/global/images/family/debian-12';

let root: { path: string; remove: () => Promise<void> };
let ec2: FakeEc2Server;
let compute: FakeComputeServer;
let node: NodeFiles;
let daemon: DaemonProcess;
let config: Record<string, unknown>;
const env = fakeAwsEnv(ACCESS_KEY);

beforeAll(async () => {
  root = await tempRoot('cloud-daemon');
  ec2 = await FakeEc2Server.start({ transitionDelayMs: 30 });
  compute = await FakeComputeServer.start({ project: 'dwcp-test', region: 'us-central1', transitionDelayMs: 30 });
  ec2.seed(2, { tags: { env: 'prod' } });
  compute.seed(1, { labels: { env: 'prod' } });
  const gcpCredentials = writeExternalAccount(root.path, compute.tokenUrl);
  node = await prepareNode(root.path, 'cloudy');
  const computeUrl = new URL(compute.url);
  config = baseConfig(node, {
    clouds: {
      providers: [
        {
          kind: 'aws',
          region: 'us-east-1',
          zones: ['us-east-1a', 'us-east-1b'],
          endpoint: ec2.url,
          credentials: { source: 'env' },
          maxAttempts: 3,
          waiter: { minDelaySeconds: 0.02, maxDelaySeconds: 0.05, maxWaitSeconds: 20 },
          tags: { team: 'platform' },
          inventoryIntervalMs: 600_000,
        },
        {
          kind: 'gcp',
          project: 'dwcp-test',
          region: 'us-central1',
          zones: ['us-central1-a'],
          apiEndpoint: computeUrl.hostname,
          port: Number(computeUrl.port),
          protocol: 'http',
          credentials: { source: 'keyFile', path: gcpCredentials },
          inventoryIntervalMs: 600_000,
        },
        { kind: 'local', transitionDelayMs: 30, inventoryIntervalMs: 600_000 },
      ],
    },
  });
  daemon = await startDaemon(node, config, env);
  await daemon.serving();
}, 60_000);

afterAll(async () => {
  await daemon?.stop();
  await Promise.all([ec2?.close(), compute?.close()]);
  await root?.remove();
});

const ctl = (...args: string[]): Promise<CtlResult> => ctlOn(node.socket).ctl(...args);
const ctlJson = <T>(...args: string[]): Promise<T> => ctlOn(node.socket).ctlJson<T>(...args);

async function until<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${daemon.describe()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function metric(name: string, labels: Record<string, string>): Promise<number | undefined> {
  return metricValue(await daemon.scrape(), name, labels);
}

describe('dwcpctl vm against a daemon with AWS, GCP and local providers', () => {
  it('lists the inventory of all three, the local provider labelled as simulated', async () => {
    const table = await ctl('vm', 'list');
    expect(table, table.stderr).toMatchObject({ code: 0 });
    for (const i of ec2.instances()) expect(table.stdout).toContain(i.instanceId);
    expect(table.stdout).toContain(`us-central1-a/${compute.instances()[0]?.name}`);
    expect(table.stdout).toMatch(/^local \(simulated\) +local \(simulated VMs, no cloud\) +0 +0 +\d+s ago$/m);
    expect(table.stdout).toMatch(/^aws +aws us-east-1 via http:\/\/127\.0\.0\.1:\d+ +2 +0/m);

    const running = await ctlJson<ListInstancesResponse>('vm', 'list', '--provider', 'aws', '--state', 'running');
    expect(running.instances.map((i) => [i.provider, i.kind, i.state, i.tags.env])).toEqual([
      ['aws', 'aws', 'running', 'prod'],
      ['aws', 'aws', 'running', 'prod'],
    ]);
    expect(running.providers.map((p) => p.name)).toEqual(['aws']);
  });

  it('creates, stops, starts and terminates an EC2 instance through the real SDK', async () => {
    const created = await ctlJson<VmInstanceResponse>('vm', 'create', '--provider', 'aws', '--type', 't3.medium', '--image', 'ami-0abc1234', '--zone', 'us-east-1b', '--name', 'web-1', '--tag', 'role=web');
    expect(created.warning).toBeNull();
    const id = created.instance.id;
    expect(created.instance).toMatchObject({ provider: 'aws', kind: 'aws', state: 'running', zone: 'us-east-1b', type: 't3.medium', vcpus: 2, memory_mib: 4096 });
    expect(Object.fromEntries(ec2.instance(id)?.tags ?? [])).toEqual({ Name: 'web-1', role: 'web', team: 'platform', 'managed-by': 'dwcp', 'dwcp-create-token': expect.any(String) });
    expect((await ctl('vm', 'stop', id)).stdout).toBe(`${id} stopped (aws, web-1)\n`);
    expect(ec2.instance(id)?.state).toBe('stopped');
    expect((await ctlJson<VmInstanceResponse>('vm', 'start', id)).instance.state).toBe('running');
    expect((await ctlJson<VmInstanceResponse>('vm', 'terminate', id, '--provider', 'aws')).instance.state).toBe('terminated');
    expect(ec2.instance(id)?.state).toBe('terminated');
  });

  it('creates, stops, starts and deletes a Compute instance through the real SDK', async () => {
    const created = await ctl('vm', 'create', '--provider', 'gcp', '--type', 'e2-medium', '--image', IMAGE_GCP, '--name', 'web-2', '--tag', 'role=web');
    expect(created, created.stderr).toMatchObject({ code: 0 });
    expect(created.stdout).toMatch(/^Provider: +gcp$/m);
    expect(created.stdout).toMatch(/^ID: +us-central1-a\/web-2$/m);
    expect(created.stdout).toMatch(/^State: +running \(RUNNING\)$/m);
    expect(compute.instance('us-central1-a', 'web-2')?.labels).toMatchObject({ role: 'web', 'managed-by': 'dwcp' });
    expect((await ctlJson<VmInstanceResponse>('vm', 'stop', 'us-central1-a/web-2')).instance.provider_state).toBe('TERMINATED');
    expect((await ctlJson<VmInstanceResponse>('vm', 'start', 'us-central1-a/web-2')).instance.state).toBe('running');
    expect((await ctl('vm', 'terminate', 'us-central1-a/web-2')).stdout).toBe('us-central1-a/web-2 terminated (gcp, web-2)\n');
    expect(compute.instance('us-central1-a', 'web-2')).toBeUndefined();
  });

  it('lists instance types with catalog prices, and a local VM created on the default provider', async () => {
    const types = await ctlJson<ListTypesResponse>('vm', 'types', '--provider', 'aws', '--provider', 'gcp');
    expect(types.failures).toEqual([]);
    expect(types.types.find((t) => t.provider === 'aws' && t.name === 't3.medium')).toMatchObject({ vcpus: 2, memory_mib: 4096, on_demand_hourly: 0.0416 });
    expect(types.types.find((t) => t.provider === 'gcp' && t.name === 'e2-medium')).toMatchObject({ vcpus: 2, on_demand_hourly: 0.033503 });
    const local = await ctl('vm', 'types', '--provider', 'local');
    expect(local.stdout).toMatch(/^local \(simulated\) +local\.small +1 +1 GiB/m);
    const vm = await ctlJson<VmInstanceResponse>('vm', 'create', '--provider', 'local', '--type', 'local.small', '--image', 'debian-12');
    expect(vm.instance).toMatchObject({ kind: 'local', state: 'running', name: expect.stringMatching(/^dwcp-[0-9a-f]{6}$/) });
  });

  it('estimates cost on demand, reserved and spot, the spot price read live from EC2', async () => {
    const onDemand = await ctlJson<EstimateCostResponse>('cost', 'estimate', '--provider', 'aws', '--region', 'us-east-1', '--type', 't3.medium', '--hours', '720');
    expect(onDemand).toMatchObject({ model: 'on-demand', hourly: 0.0416, hours: 720, total: 29.952, monthly: 30.368, live: false, as_of: '2025-01-01' });
    expect((await ctlJson<EstimateCostResponse>('cost', 'estimate', '--provider', 'aws', '--region', 'us-east-1', '--type', 't3.medium', '--reserved')).hourly).toBe(0.026);
    // The fake prices spot at 30 % of on-demand in zone a, 35 % in b: the lowest configured zone wins.
    const spot = await until('a live spot price', async () => {
      const e = await ctlJson<EstimateCostResponse>('cost', 'estimate', '--provider', 'aws', '--region', 'us-east-1', '--type', 't3.medium', '--spot');
      return e.live ? e : undefined;
    });
    expect(spot).toMatchObject({ model: 'spot', hourly: 0.01248, live: true });
    expect(spot.source).toBe('live: DescribeSpotPriceHistory via provider aws (lowest zone)');
    const table = await ctl('cost', 'estimate', '--provider', 'gcp', '--region', 'europe-west1', '--type', 'n2-standard-2');
    expect(table.stdout).toMatch(/^Monthly: +\$77\.99 \(730 h\)$/m);
    const unknown = await ctl('cost', 'estimate', '--provider', 'aws', '--region', 'us-east-1', '--type', 't9.huge');
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/^dwcpctl: EstimateCost failed with NOT_FOUND: no aws price for type "t9.huge" in us-east-1; the catalog prices there c5\.large/);
  });

  it('surfaces a capacity error with EC2’s message and leaves nothing pending', async () => {
    const before = ec2.instances().length;
    ec2.faults.inject('RunInstances', 'capacity', 3);
    const result = await ctl('vm', 'create', '--provider', 'aws', '--type', 'm5.2xlarge', '--image', 'ami-0abc1234');
    expect(result.code).toBe(1);
    expect(result.stderr).toMatch(/^dwcpctl: CreateInstance failed with RESOURCE_EXHAUSTED: aws create: We currently do not have sufficient capacity .*\[InsufficientInstanceCapacity\]\n$/);
    expect(ec2.instances()).toHaveLength(before);
    expect(ec2.faults.pending('RunInstances')).toBe(0);
    expect((await ctlJson<ListInstancesResponse>('vm', 'list', '--provider', 'aws')).providers[0]?.pending_creates).toBe(0);
  });

  it('finishes a create whose CreateTags failed at the next sync', async () => {
    ec2.faults.inject('CreateTags', { code: 'UnauthorizedOperation', message: 'You are not authorized to perform this operation.', status: 403 });
    const created = await ctl('vm', 'create', '--provider', 'aws', '--type', 't3.micro', '--image', 'ami-0abc1234', '--name', 'half', '--json');
    expect(created, created.stderr).toMatchObject({ code: 0 });
    expect(created.stderr).toMatch(/^dwcpctl: warning: VM i-[0-9a-f]+ runs, but its tags managed-by, team could not be applied \(aws setTags: You are not authorized/);
    const id = (JSON.parse(created.stdout) as VmInstanceResponse).instance.id;
    const tags = () => Object.fromEntries(ec2.instance(id)?.tags ?? []);
    expect(tags()).toEqual({ Name: 'half', 'dwcp-create-token': expect.any(String) });
    expect(await metric('dwcp_cloud_pending_creates', { provider: 'aws' })).toBe(1);

    const after = daemon.lines.length;
    const listed = await ctlJson<ListInstancesResponse>('vm', 'list', '--provider', 'aws', '--refresh');
    expect(listed.providers[0]?.pending_creates).toBe(0);
    expect(listed.instances.find((i) => i.id === id)?.tags['managed-by']).toBe('dwcp');
    expect(tags()).toMatchObject({ 'managed-by': 'dwcp', team: 'platform' });
    const logged = await daemon.waitForLog((l) => l.msg === 'completed a half-finished create: found its VM by the create token and tagged it', 'the reconcile log line', after);
    expect(logged).toMatchObject({ provider: 'aws', instanceId: id, tagsApplied: ['managed-by', 'team'] });
    expect(await metric('dwcp_cloud_reconciled_creates_total', { provider: 'aws' })).toBe(1);
  });

  it('retries throttling with the SDK back-off and counts it in promtool-clean metrics', async (ctx) => {
    const retriedBefore = (await metric('dwcp_cloud_throttle_retries_total', { provider: 'aws' })) ?? 0;
    ec2.faults.inject('DescribeInstances', 'throttle', 2);
    const listed = await ctl('vm', 'list', '--provider', 'aws', '--refresh');
    expect(listed, listed.stderr).toMatchObject({ code: 0 });
    expect(ec2.faults.pending('DescribeInstances')).toBe(0);
    const text = await daemon.scrape();
    expect(metricValue(text, 'dwcp_cloud_throttle_retries_total', { provider: 'aws' })).toBe(retriedBefore + 2);
    expect(metricValue(text, 'dwcp_cloud_api_calls_total', { provider: 'aws', operation: 'DescribeInstances', result: 'ok' })).toBeGreaterThan(0);
    expect(metricValue(text, 'dwcp_cloud_api_calls_total', { provider: 'gcp', operation: 'instances.aggregatedList', result: 'ok' })).toBeGreaterThan(0);
    expect(metricValue(text, 'dwcp_cloud_api_duration_seconds_count', { provider: 'aws', operation: 'RunInstances' })).toBeGreaterThan(0);
    expect(metricValue(text, 'dwcp_cloud_instances', { provider: 'local', state: 'running' })).toBe(1);
    expect(metricValue(text, 'dwcp_cloud_inventory_sync_errors_total', { provider: 'aws' })).toBe(0);
    const verdict = lintMetrics(text, ctx);
    expect(verdict?.output.split('\n').filter((l) => l.startsWith('dwcp_cloud')) ?? []).toEqual([]);
  });

  it('finishes a create cut short by SIGKILL once the restarted daemon syncs', async () => {
    ec2.transitionDelayMs = 60_000; // the launch stays pending: the create is still waiting when the daemon dies
    const known = new Set(ec2.instances().map((i) => i.instanceId));
    const creating = ctl('vm', 'create', '--provider', 'aws', '--type', 't3.small', '--image', 'ami-0abc1234', '--name', 'crashed');
    const launched = await until('the launch to reach EC2', () => ec2.instances().find((i) => !known.has(i.instanceId)));
    ec2.transitionDelayMs = 30;
    await daemon.stop('SIGKILL');
    expect((await creating).code).toBe(1);
    const journal = JSON.parse(readFileSync(join(node.dir, 'cloud', 'pending-creates.json'), 'utf8')) as { pending: { name: string; instanceId: string | null }[] };
    expect(journal.pending).toEqual([expect.objectContaining({ name: 'crashed' })]);
    expect(launched.tags.get('managed-by')).toBeUndefined();

    daemon = await startDaemon(node, config, env);
    await daemon.serving();
    await daemon.waitForLog((l) => l.msg === 'completed a half-finished create: found its VM by the create token and tagged it' && l.instanceId === launched.instanceId, 'the reconcile after restart');
    expect(launched.tags.get('managed-by')).toBe('dwcp');
    expect((JSON.parse(readFileSync(join(node.dir, 'cloud', 'pending-creates.json'), 'utf8')) as { pending: unknown[] }).pending).toEqual([]);
    // Joins the start-up sync if it is still reading spot prices, so the next test's fault hits a sync of its own.
    expect((await ctl('vm', 'list', '--refresh')).code).toBe(0);
  }, 60_000);

  it('reports a provider whose credentials expired as a failing sync, and keeps serving the others', async () => {
    ec2.expireAccessKey(ACCESS_KEY);
    const aws = await ctl('vm', 'list', '--provider', 'aws', '--refresh');
    expect(aws.code).toBe(1);
    expect(aws.stdout).toMatch(/^aws +aws us-east-1 via .* FAILED \(last good: \d+s ago\)$/m);
    expect(aws.stderr).toMatch(/^dwcpctl: inventory of aws may be stale: its last sync failed: aws list: Request has expired\. \(credentials from the environment only \(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN\)\) \[RequestExpired\]\n$/);
    expect(await metric('dwcp_cloud_inventory_sync_errors_total', { provider: 'aws' })).toBeGreaterThanOrEqual(1);
    const gcp = await ctl('vm', 'list', '--provider', 'gcp', '--refresh');
    expect(gcp, gcp.stderr).toMatchObject({ code: 0 });
    expect((await ctl('status')).code).toBe(0);
  });
});
