/**
 * The fake cloud servers at the wire level, below the SDKs: EC2's error XML
 * and status codes for a missing credential, an unknown action or version, a
 * foreign page token; Compute's JSON errors, its operation long-poll and its
 * filter parser; and `npm run fake-clouds` as a process: one JSON line with
 * both endpoints on stdout, serving until SIGTERM, exit 0.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';

const SIGV4 = 'AWS4-HMAC-SHA256 Credential=AKIDTEST/20250101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=00';

function ec2Call(url: string, body: string, authorization: string | null = SIGV4): Promise<Response> {
  const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
  if (authorization) headers.authorization = authorization;
  return fetch(url, { method: 'POST', headers, body });
}

describe('fake EC2 server wire format', () => {
  let ec2: FakeEc2Server;
  beforeEach(async () => {
    ec2 = await FakeEc2Server.start({ transitionDelayMs: 20 });
  });
  afterEach(() => ec2.close());

  it('answers in EC2 XML, and with EC2 error XML and statuses', async () => {
    const ok = await ec2Call(ec2.url, 'Action=DescribeAvailabilityZones&Version=2016-11-15');
    expect(ok.status).toBe(200);
    const xml = await ok.text();
    expect(xml).toMatch(/^<\?xml version="1.0" encoding="UTF-8"\?>\n<DescribeAvailabilityZonesResponse xmlns="http:\/\/ec2.amazonaws.com\/doc\/2016-11-15\/"><requestId>/);
    expect(xml).toContain('<availabilityZoneInfo><item><zoneName>us-east-1a</zoneName>');

    const cases: [string, string | null, number, string][] = [
      ['Action=DescribeInstances&Version=2016-11-15', null, 401, 'MissingAuthenticationToken'],
      ['Action=DescribeInstances&Version=2016-11-15', SIGV4.replace('us-east-1', 'eu-west-1'), 401, 'AuthFailure'],
      ['Action=FlyToTheMoon&Version=2016-11-15', SIGV4, 400, 'InvalidAction'],
      ['Action=DescribeInstances&Version=2014-01-01', SIGV4, 400, 'NoSuchVersion'],
      ['Action=DescribeInstances&Version=2016-11-15&MaxResults=5&NextToken=forged', SIGV4, 400, 'InvalidParameterValue'],
      ['Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=colour&Filter.1.Value.1=blue', SIGV4, 400, 'InvalidParameterValue'],
      ['Action=DescribeInstances&Version=2016-11-15&InstanceId.1=i-0123456789abcdef0', SIGV4, 400, 'InvalidInstanceID.NotFound'],
      ['Action=RunInstances&Version=2016-11-15&MinCount=1&MaxCount=1', SIGV4, 400, 'MissingParameter'],
    ];
    for (const [body, auth, status, code] of cases) {
      const res = await ec2Call(ec2.url, body, auth);
      const text = await res.text();
      expect([body, res.status]).toEqual([body, status]);
      expect(text).toMatch(new RegExp(`^<\\?xml[^>]*>\\n<Response><Errors><Error><Code>${code.replace('.', '\\.')}</Code><Message>[^<]+</Message></Error></Errors><RequestID>[0-9a-f-]{36}</RequestID></Response>$`));
    }
  });

  it('launches a reservation of several instances in one call', async () => {
    const run = await (await ec2Call(ec2.url, 'Action=RunInstances&Version=2016-11-15&ImageId=ami-1&InstanceType=t3.micro&MinCount=2&MaxCount=2')).text();
    const ids = [...run.matchAll(/<instanceId>(i-[0-9a-f]+)<\/instanceId>/g)].map((m) => m[1]);
    expect(ids).toHaveLength(2);
    expect(run.match(/<name>pending<\/name>/g)).toHaveLength(2);
    expect(ec2.instances().map((i) => i.reservationId)).toEqual([ec2.instances()[0]?.reservationId, ec2.instances()[0]?.reservationId]);
  });
});

describe('fake Compute server wire format', () => {
  let compute: FakeComputeServer;
  const base = () => `${compute.url}/compute/v1/projects/dwcp-test`;
  const call = (path: string, init: RequestInit = {}) =>
    fetch(`${base()}${path}`, { ...init, headers: { authorization: 'Bearer test-token', 'content-type': 'application/json', ...init.headers } });

  beforeEach(async () => {
    compute = await FakeComputeServer.start({ transitionDelayMs: 20, operationWaitTimeoutMs: 5_000 });
  });
  afterEach(() => compute.close());

  it("answers errors in Google's JSON format", async () => {
    const anonymous = await fetch(`${base()}/zones`);
    expect(anonymous.status).toBe(401);
    expect(await anonymous.json()).toMatchObject({ error: { code: 401, status: 'UNAUTHENTICATED', errors: [{ reason: 'required', domain: 'global' }] } });

    const missing = await call('/zones/us-central1-a/instances/nope');
    expect(missing.status).toBe(404);
    expect(await missing.json()).toEqual({
      error: {
        code: 404,
        message: "The resource 'projects/dwcp-test/zones/us-central1-a/instances/nope' was not found",
        errors: [{ message: "The resource 'projects/dwcp-test/zones/us-central1-a/instances/nope' was not found", domain: 'global', reason: 'notFound' }],
      },
    });

    const badFilter = await call(`/aggregated/instances?filter=${encodeURIComponent('cpu > 4')}`);
    expect(badFilter.status).toBe(400);
    compute.faults.inject('zones.list', 'rateLimit');
    const limited = await call('/zones');
    expect(limited.status).toBe(429);
    expect(await limited.json()).toMatchObject({ error: { code: 429, status: 'RESOURCE_EXHAUSTED', errors: [{ reason: 'rateLimitExceeded' }] } });
  });

  it('finishes operations asynchronously; wait long-polls until DONE; filters select by status and label', async () => {
    const resource = { name: 'api-1', machineType: 'zones/us-central1-a/machineTypes/e2-small', labels: { env: 'prod' }, disks: [{ initializeParams: { sourceImage: 'img' } }] };
    const inserted = await call('/zones/us-central1-a/instances?requestId=r1', { method: 'POST', body: JSON.stringify(resource) });
    const op = (await inserted.json()) as { name: string; status: string };
    expect(op.status).toBe('RUNNING');
    const waited = (await (await call(`/zones/us-central1-a/operations/${op.name}/wait`, { method: 'POST', body: '""' })).json()) as { status: string; progress: number };
    expect(waited).toMatchObject({ status: 'DONE', progress: 100 });

    const filter = encodeURIComponent('(status = "RUNNING" OR status = "STAGING") AND (labels.env = "prod")');
    const listed = (await (await call(`/aggregated/instances?filter=${filter}`)).json()) as { items: Record<string, { instances?: { name: string }[] }> };
    expect(listed.items['zones/us-central1-a']?.instances?.map((i) => i.name)).toEqual(['api-1']);
    const none = (await (await call(`/zones/us-central1-a/instances?filter=${encodeURIComponent('labels.env != "prod"')}`)).json()) as { items: unknown[] };
    expect(none.items).toEqual([]);

    const again = (await (await call('/zones/us-central1-a/instances?requestId=r1', { method: 'POST', body: JSON.stringify(resource) })).json()) as { name: string };
    expect(again.name).toBe(op.name);
  });
});

describe('npm run fake-clouds', () => {
  it('prints one JSON line with the four endpoints, serves them, and exits 0 on SIGTERM', async () => {
    const script = fileURLToPath(new URL('../../scripts/fake-clouds.ts', import.meta.url));
    const child = spawn(process.execPath, [script, '--transition-ms', '20'], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = once(child, 'exit');
    const lines = createInterface({ input: child.stdout });
    const stdout: string[] = [];
    lines.on('line', (line) => stdout.push(line));
    try {
      const [first] = (await once(lines, 'line')) as [string];
      const endpoints = JSON.parse(first) as Record<string, string>;
      expect(Object.keys(endpoints)).toEqual(['ec2', 'compute', 'cloudwatch', 'monitoring']);
      for (const url of Object.values(endpoints)) expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

      const zones = await ec2Call(endpoints.ec2 ?? '', 'Action=DescribeAvailabilityZones&Version=2016-11-15');
      expect(zones.status).toBe(200);
      const gcpZones = await fetch(`${endpoints.compute}/compute/v1/projects/dwcp-dev/zones`, { headers: { authorization: 'Bearer dev' } });
      expect(((await gcpZones.json()) as { items: unknown[] }).items).toHaveLength(4);
      // Monitoring answers (no instance yet: no series); CloudWatch refuses an unsigned call as AWS does.
      const series = await fetch(`${endpoints.monitoring}/v3/projects/dwcp-dev/timeSeries?filter=${encodeURIComponent('metric.type = "compute.googleapis.com/instance/cpu/utilization"')}&interval.startTime=2026-01-01T00:00:00Z&interval.endTime=2026-01-01T01:00:00Z&aggregation.alignmentPeriod=300s`, { headers: { authorization: 'Bearer dev' } });
      expect(await series.json()).toEqual({ timeSeries: [], unit: '10^2.%' });
      const unsigned = await fetch(endpoints.cloudwatch ?? '', { method: 'POST', headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amz-target': 'GraniteServiceVersion20100801.GetMetricData' }, body: '{}' });
      expect(unsigned.status).toBe(403);
    } finally {
      child.kill('SIGTERM');
    }
    const [code] = (await exited) as [number | null];
    expect(code).toBe(0);
    expect(stdout).toHaveLength(1);
  });
});
