#!/usr/bin/env node
/**
 * `npm run fake-clouds`: starts the fake EC2 Query-API server, the fake
 * Compute REST server, a fake CloudWatch (AWS JSON 1.0) and a fake Cloud
 * Monitoring (REST) on loopback, prints ONE JSON line with their endpoints,
 * e.g. {"ec2":"http://127.0.0.1:PORT","compute":…,"cloudwatch":…,"monitoring":…},
 * and serves until SIGINT or SIGTERM. A development backend for the AWS and
 * GCP providers (endpoint, cloudwatchEndpoint, apiEndpoint/port/protocol and
 * monitoringEndpoint overrides), with the same wire protocols as the clouds
 * and state kept for the life of the process. Every running fake instance
 * reports a steady load (CPU 5 to 95 % from a hash of its id, 1 MB in and
 * 0.5 MB out per 5 minutes) until a test sets its metrics.
 *
 * Invariants: stdout carries that one line and nothing else (scripts parse
 * it); usage hints go to stderr; both servers bind 127.0.0.1 only.
 *
 * Options: --ports EC2,COMPUTE[,CLOUDWATCH,MONITORING] (default any free port), --transition-ms N
 * (how long pending/stopping last, default 2000), --aws-region, --gcp-project,
 * --gcp-region.
 */
import { parseArgs } from 'node:util';
import { FakeComputeServer } from '../src/cloud/fake/compute-server.ts';
import { FakeEc2Server } from '../src/cloud/fake/ec2-server.ts';
import { FakeCloudWatchServer } from '../src/cloud/fake/cloudwatch-server.ts';
import { FakeMonitoringServer } from '../src/cloud/fake/monitoring-server.ts';
import { FakeMetrics, type FakeMetricName } from '../src/cloud/fake/metrics.ts';
import { unitHash } from '../src/cloud/local/simulated-load.ts';

function fail(message: string): never {
  process.stderr.write(`fake-clouds: ${message}\n`);
  process.exit(2);
}

function port(text: string | undefined, flag: string): number {
  const n = Number(text ?? '0');
  if (!Number.isInteger(n) || n < 0 || n > 65535) fail(`${flag}: ${JSON.stringify(text)} is not a port from 0 to 65535`);
  return n;
}

const { values } = parseArgs({
  options: {
    ports: { type: 'string', default: '0,0' },
    'transition-ms': { type: 'string', default: '2000' },
    'aws-region': { type: 'string', default: 'us-east-1' },
    'gcp-project': { type: 'string', default: 'dwcp-dev' },
    'gcp-region': { type: 'string', default: 'us-central1' },
  },
  strict: true,
});

const [ec2Port, computePort, cloudwatchPort, monitoringPort] = values.ports.split(',');
const transitionDelayMs = Number(values['transition-ms']);
if (!Number.isInteger(transitionDelayMs) || transitionDelayMs < 0) fail(`--transition-ms: ${values['transition-ms']} is not a non-negative integer`);

const ec2 = await FakeEc2Server.start({ region: values['aws-region'], transitionDelayMs, port: port(ec2Port, '--ports (ec2)') });
const compute = await FakeComputeServer.start({
  project: values['gcp-project'],
  region: values['gcp-region'],
  transitionDelayMs,
  port: port(computePort, '--ports (compute)'),
});

/** A steady load for every running fake instance that no one set metrics for. */
function steady(running: (id: string) => boolean): (instance: string, metric: FakeMetricName) => number | undefined {
  return (instance, metric) => {
    if (!running(instance)) return undefined;
    if (metric === 'cpu') return 0.05 + 0.9 * unitHash(7, instance, 0);
    return metric === 'networkIn' ? 1_000_000 : 500_000;
  };
}
const awsMetrics = new FakeMetrics();
awsMetrics.fallback = steady((id) => ec2.instance(id)?.state === 'running');
const gcpMetrics = new FakeMetrics();
gcpMetrics.fallback = steady((key) => {
  const [zone = '', name = ''] = key.split('/');
  return compute.instance(zone, name)?.status === 'RUNNING';
});
const cloudwatch = await FakeCloudWatchServer.start({ region: values['aws-region'], metrics: awsMetrics, port: port(cloudwatchPort, '--ports (cloudwatch)') });
const monitoring = await FakeMonitoringServer.start({
  project: values['gcp-project'],
  metrics: gcpMetrics,
  instances: () => compute.instances().map((i) => `${i.zone}/${i.name}`),
  port: port(monitoringPort, '--ports (monitoring)'),
});

process.stdout.write(`${JSON.stringify({ ec2: ec2.url, compute: compute.url, cloudwatch: cloudwatch.url, monitoring: monitoring.url })}\n`);
process.stderr.write(
  `fake-clouds: EC2 (${ec2.region}) at ${ec2.url}, any SigV4 credentials; Compute (project ${compute.project}, ${compute.region}) at ${compute.url}, ` +
    `any Bearer token or an external_account credential with token_url ${compute.tokenUrl}; CloudWatch at ${cloudwatch.url} (cloudwatchEndpoint), ` +
    `Cloud Monitoring at ${monitoring.url} (monitoringEndpoint). Ctrl-C stops.\n`,
);

let stopping = false;
async function stop(): Promise<void> {
  if (stopping) return;
  stopping = true;
  await Promise.all([ec2.close(), compute.close(), cloudwatch.close(), monitoring.close()]);
  process.exitCode = 0;
}
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
