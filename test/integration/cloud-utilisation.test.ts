/**
 * Utilisation through the real SDKs against the fake servers, over HTTP:
 * CloudWatch GetMetricData (@aws-sdk/client-cloudwatch, AWS JSON 1.0) and
 * Cloud Monitoring timeSeries.list (@google-cloud/monitoring over REST, with
 * a real external_account credential exchanged at the fake Compute's STS).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AwsProvider } from '../../src/cloud/aws/aws-provider.ts';
import { GcpProvider } from '../../src/cloud/gcp/gcp-provider.ts';
import { FakeCloudWatchServer } from '../../src/cloud/fake/cloudwatch-server.ts';
import { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import { FakeMonitoringServer } from '../../src/cloud/fake/monitoring-server.ts';
import { ThrottledError, ProviderError } from '../../src/cloud/provider.ts';
import { writeExternalAccount } from '../support/gcp-credentials.ts';

const P = 300_000;
const now = Math.floor(Date.now() / P) * P;

describe('CloudWatch GetMetricData against the fake', () => {
  let cw: FakeCloudWatchServer;
  let aws: AwsProvider;
  beforeAll(async () => {
    cw = await FakeCloudWatchServer.start({ region: 'us-east-1', pageSize: 7 });
    aws = new AwsProvider({
      region: 'us-east-1',
      endpoint: 'http://127.0.0.1:9',
      cloudwatchEndpoint: cw.url,
      credentials: { source: 'static', accessKeyId: 'AKIDTEST', secretAccessKey: 'secret' },
      maxAttempts: 2,
    });
  });
  afterAll(async () => {
    await aws.close();
    await cw.close();
  });

  it('reads CPU and network per 5-minute period for many instances, paging', async () => {
    const ids = Array.from({ length: 170 }, (_, i) => `i-${(i + 1).toString(16).padStart(17, '0')}`);
    ids.forEach((id, i) => {
      cw.metrics.set(id, 'cpu', (i % 10) / 10);
      cw.metrics.set(id, 'networkIn', 1000 * i);
      cw.metrics.set(id, 'networkOut', 500);
    });
    cw.metrics.set(ids[0] ?? '', 'cpu', 0.37, now - P);
    const samples = await aws.usage({ instances: ids.map((id) => ({ id, name: id, zone: 'us-east-1a', vcpus: 2, memoryMiB: 1024 })), sinceMs: now - 3 * P, untilMs: now });
    expect(samples).toHaveLength(170 * 3);
    const first = samples.filter((s) => s.instanceId === ids[0]);
    expect(first.map((s) => s.atMs)).toEqual([now - 2 * P, now - P, now]);
    // The CPU metric of ids[0] has datapoints from the period ending at now − P on: the first has network only.
    expect(first.map((s) => s.cpu)).toEqual([null, 0.37, 0.37]);
    const third = samples.find((s) => s.instanceId === ids[3] && s.atMs === now);
    expect(third).toMatchObject({ cpu: 0.3, memory: null, networkInBytes: 3000, networkOutBytes: 500, periodMs: P });
    // 510 queries: two calls of at most 500, each paged by 7 results.
    expect(cw.calls.count('GetMetricData', 200)).toBe(Math.ceil(498 / 7) + Math.ceil(12 / 7));
  });

  it('maps a throttle past the retries to ThrottledError naming the provider', async () => {
    cw.faults.inject('GetMetricData', 'throttle', 2);
    const err = await aws.usage({ instances: [{ id: 'i-0000000000000000a', name: 'x', zone: 'us-east-1a', vcpus: 1, memoryMiB: 512 }], sinceMs: now - P, untilMs: now }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ThrottledError);
    expect((err as ProviderError).message).toMatch(/^aws usage: .*\[Throttling\]/);
  });
});

describe('Cloud Monitoring timeSeries.list against the fake', () => {
  let compute: FakeComputeServer;
  let monitoring: FakeMonitoringServer;
  let gcp: GcpProvider;
  let scratch: string;
  beforeAll(async () => {
    scratch = mkdtempSync(join(tmpdir(), 'dwcp-mon-'));
    compute = await FakeComputeServer.start({ project: 'dwcp-test', region: 'us-central1' });
    monitoring = await FakeMonitoringServer.start({ project: 'dwcp-test', pageSize: 2 });
    const credentials = writeExternalAccount(scratch, compute.tokenUrl);
    gcp = new GcpProvider({ project: 'dwcp-test', region: 'us-central1', endpoint: compute.url, monitoringEndpoint: monitoring.url, credentials: { source: 'file', path: credentials } });
  });
  afterAll(async () => {
    await gcp.close();
    await Promise.all([compute.close(), monitoring.close()]);
    rmSync(scratch, { recursive: true, force: true });
  });

  it('reads CPU utilisation and network bytes, matched by zone and name, only for the VMs asked', async () => {
    for (const [name, cpu] of [['web1', 0.05], ['web2', 0.6], ['other', 0.9]] as const) {
      monitoring.metrics.set(`us-central1-a/${name}`, 'cpu', cpu);
      monitoring.metrics.set(`us-central1-a/${name}`, 'networkIn', 4096);
    }
    const subjects = ['web1', 'web2'].map((name) => ({ id: `us-central1-a/${name}`, name, zone: 'us-central1-a', vcpus: 2, memoryMiB: 2048 }));
    const samples = await gcp.usage({ instances: subjects, sinceMs: now - 2 * P, untilMs: now });
    expect(samples.map((s) => [s.instanceId, s.atMs, s.cpu, s.networkInBytes, s.networkOutBytes])).toEqual([
      ['us-central1-a/web1', now - P, 0.05, 4096, null],
      ['us-central1-a/web1', now, 0.05, 4096, null],
      ['us-central1-a/web2', now - P, 0.6, 4096, null],
      ['us-central1-a/web2', now, 0.6, 4096, null],
    ]);
    // CPU and received: three series each, two per page; sent: no series, one empty page.
    expect(monitoring.calls.count('timeSeries.list', 200)).toBe(2 + 2 + 1);
  });
});
