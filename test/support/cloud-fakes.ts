/**
 * The four fake cloud API servers a daemon test points its AWS and GCP
 * providers at (EC2, Compute, CloudWatch, Cloud Monitoring), and the
 * provider entries for a config that reach them, so tests that run a daemon
 * against the fakes start them and configure them one way.
 */
import { FakeCloudWatchServer } from '../../src/cloud/fake/cloudwatch-server.ts';
import { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';
import { FakeMonitoringServer } from '../../src/cloud/fake/monitoring-server.ts';
import { writeExternalAccount } from './gcp-credentials.ts';

export interface CloudFakes {
  readonly ec2: FakeEc2Server;
  readonly compute: FakeComputeServer;
  readonly cloudwatch: FakeCloudWatchServer;
  readonly monitoring: FakeMonitoringServer;
  /** The GCP external-account credentials file for the fake token endpoint. */
  readonly gcpCredentials: string;
  close(): Promise<void>;
}

/** AWS credentials the fake EC2 accepts, for the daemon's environment. */
export function fakeAwsEnv(accessKeyId: string): NodeJS.ProcessEnv {
  return { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: 'test-secret', AWS_SESSION_TOKEN: '', AWS_PROFILE: '' };
}

/** Starts the four servers (us-east-1; project dwcp-test in us-central1); `dir` holds the GCP credentials file. */
export async function startCloudFakes(dir: string): Promise<CloudFakes> {
  const ec2 = await FakeEc2Server.start({ transitionDelayMs: 30 });
  const compute = await FakeComputeServer.start({ project: 'dwcp-test', region: 'us-central1', transitionDelayMs: 30 });
  const cloudwatch = await FakeCloudWatchServer.start({ region: 'us-east-1' });
  const monitoring = await FakeMonitoringServer.start({ project: 'dwcp-test' });
  return {
    ec2,
    compute,
    cloudwatch,
    monitoring,
    gcpCredentials: writeExternalAccount(dir, compute.tokenUrl),
    close: async () => {
      await Promise.all([ec2.close(), compute.close(), cloudwatch.close(), monitoring.close()]);
    },
  };
}

/** `clouds.providers` entries for AWS and GCP against the fakes, metrics APIs included. */
export function fakeCloudProviders(f: CloudFakes, inventoryIntervalMs: number): Record<string, unknown>[] {
  const computeUrl = new URL(f.compute.url);
  return [
    { kind: 'aws', region: 'us-east-1', zones: ['us-east-1a'], endpoint: f.ec2.url, cloudwatchEndpoint: f.cloudwatch.url, credentials: { source: 'env' }, maxAttempts: 3, inventoryIntervalMs },
    {
      kind: 'gcp',
      project: 'dwcp-test',
      region: 'us-central1',
      zones: ['us-central1-a'],
      apiEndpoint: computeUrl.hostname,
      port: Number(computeUrl.port),
      protocol: 'http',
      monitoringEndpoint: f.monitoring.url,
      credentials: { source: 'keyFile', path: f.gcpCredentials },
      inventoryIntervalMs,
    },
  ];
}
