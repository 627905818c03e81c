/**
 * The AWS provider through the real `@aws-sdk/client-ec2` against the fake EC2
 * Query-API server over loopback HTTP: lifecycle round-trip with the SDK's
 * waiters, tags, pagination across pages, throttling retried by the SDK (and
 * visible as calls on the server), capacity, not-found and credential errors,
 * cancellation. State transitions on the server complete after a short delay,
 * so every wait below is the SDK polling, never a sleep.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AwsProvider, type AwsProviderOptions } from '../../src/cloud/aws/aws-provider.ts';
import { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';
import {
  CancelledError,
  CapacityError,
  CredentialsError,
  IncorrectStateError,
  InvalidRequestError,
  NotFound,
  ThrottledError,
  type ApiCallEvent,
  type ProgressEvent,
} from '../../src/cloud/provider.ts';

const KEYS = { accessKeyId: 'AKIDTESTKEY0001', secretAccessKey: 'test-secret' };
const FAST_WAITER = { minDelaySeconds: 0.02, maxDelaySeconds: 0.05, maxWaitSeconds: 10 };

let server: FakeEc2Server;
const providers: AwsProvider[] = [];

function provider(extra: Partial<AwsProviderOptions> = {}): AwsProvider {
  const p = new AwsProvider({
    region: 'us-east-1',
    endpoint: server.url,
    credentials: { source: 'static', ...KEYS },
    waiter: FAST_WAITER,
    ...extra,
  });
  providers.push(p);
  return p;
}

beforeEach(async () => {
  server = await FakeEc2Server.start({ transitionDelayMs: 30 });
});
afterEach(async () => {
  await Promise.all(providers.splice(0).map((p) => p.close()));
  await server.close();
});

describe('AWS provider lifecycle', () => {
  it('creates, stops, starts, tags and terminates an instance, waiting through the SDK waiters', async () => {
    const aws = provider();
    const events: ProgressEvent[] = [];
    const created = await aws.create(
      { name: 'web-1', type: 't3.medium', image: 'ami-0abc1234', zone: 'us-east-1b', tags: { 'managed-by': 'dwcp' }, userData: '#!/bin/sh\necho hi\n' },
      { onProgress: (e) => events.push(e) },
    );
    expect(created).toMatchObject({
      name: 'web-1',
      provider: 'aws',
      region: 'us-east-1',
      zone: 'us-east-1b',
      type: 't3.medium',
      vcpus: 2,
      memoryMiB: 4096,
      state: 'running',
      providerState: 'running',
      spot: false,
      image: 'ami-0abc1234',
      tags: { Name: 'web-1', 'managed-by': 'dwcp' },
    });
    expect(created.id).toMatch(/^i-[0-9a-f]{17}$/);
    expect(created.privateIp).toMatch(/^172\.31\./);
    expect(created.publicIp).not.toBeNull();
    expect(created.launchTime).toBeInstanceOf(Date);
    expect(Buffer.from(server.instance(created.id)?.userData ?? '', 'base64').toString()).toBe('#!/bin/sh\necho hi\n');
    expect(events[0]).toMatchObject({ operation: 'create', instanceId: created.id, phase: 'accepted', state: 'pending' });
    expect(events.some((e) => e.phase === 'waiting')).toBe(true);
    expect(events.at(-1)).toMatchObject({ phase: 'done', state: 'running' });

    // ModifyInstanceAttribute: refused while running (as EC2), done once stopped.
    await expect(aws.setType(created.id, 't3.small')).rejects.toThrow(/IncorrectInstanceState/);
    const stopped = await aws.stop(created.id);
    expect(stopped.state).toBe('stopped');
    expect(stopped.publicIp).toBeNull();
    expect(await aws.setType(created.id, 't3.small')).toMatchObject({ type: 't3.small', vcpus: 2, memoryMiB: 2048, state: 'stopped' });
    expect((await aws.start(created.id)).state).toBe('running');

    await aws.setTags(created.id, { team: 'infra', 'managed-by': 'dwcp-v2' });
    expect((await aws.get(created.id)).tags).toEqual({ Name: 'web-1', 'managed-by': 'dwcp-v2', team: 'infra' });

    const terminated = await aws.terminate(created.id);
    expect(terminated.state).toBe('terminated');
    expect(server.calls.count('TerminateInstances')).toBe(1);
  });

  it('filters by state and tag on the server, and returns at once with wait: false', async () => {
    const aws = provider();
    server.seed(3, { tags: { env: 'prod' } });
    server.seed(2, { tags: { env: 'dev' } });
    server.transitionDelayMs = 60_000; // the new instance stays pending while the test lists
    const pending = await aws.create({ name: 'spot-1', type: 'm5.large', image: 'ami-0abc1234', spot: true, tags: { env: 'prod' } }, { wait: false });
    expect(pending).toMatchObject({ state: 'pending', spot: true, vcpus: 2, memoryMiB: 8192 });

    expect(await aws.list({ tags: { env: 'prod' } })).toHaveLength(4);
    expect(await aws.list({ states: ['running'], tags: { env: 'prod' } })).toHaveLength(3);
    expect((await aws.list({ states: ['pending'] })).map((i) => i.id)).toEqual([pending.id]);
    expect(await aws.list()).toHaveLength(6);
  });

  it('pages DescribeInstances with MaxResults/NextToken across three pages', async () => {
    const aws = provider({ pageSize: 5 });
    const seeded = server.seed(12);
    const before = server.calls.count('DescribeInstances');
    const listed = await aws.list();
    expect(listed.map((i) => i.id).sort()).toEqual(seeded.map((i) => i.instanceId).sort());
    expect(server.calls.count('DescribeInstances') - before).toBe(3);
  });

  it('makes a create with the same idempotency token return the same instance', async () => {
    const aws = provider();
    const a = await aws.create({ name: 'once', type: 't3.micro', image: 'ami-0abc1234', idempotencyToken: 'tok-1' }, { wait: false });
    const b = await aws.create({ name: 'once', type: 't3.micro', image: 'ami-0abc1234', idempotencyToken: 'tok-1' }, { wait: false });
    expect(b.id).toBe(a.id);
    expect(server.instances()).toHaveLength(1);
  });

  it('reports instance types, zone health and spot prices', async () => {
    const aws = provider();
    server.setZoneState('us-east-1c', 'impaired', ['Elevated API error rates']);
    const types = await aws.listInstanceTypes();
    expect(types.find((t) => t.name === 'm6g.large')).toEqual({ name: 'm6g.large', vcpus: 2, memoryMiB: 8192, architectures: ['arm64'], spot: true });
    expect(await aws.listInstanceTypes({ types: ['c5.xlarge'] })).toEqual([{ name: 'c5.xlarge', vcpus: 4, memoryMiB: 8192, architectures: ['x86_64'], spot: true }]);

    const zones = await aws.zoneHealth();
    expect(zones.map((z) => [z.zone, z.status])).toEqual([
      ['us-east-1a', 'available'],
      ['us-east-1b', 'available'],
      ['us-east-1c', 'impaired'],
    ]);
    expect(zones[2]?.messages).toEqual(['Elevated API error rates']);

    const prices = await aws.spotPrices({ types: ['t3.micro', 'm5.large'], zones: ['us-east-1a'] });
    expect(prices.map((p) => [p.type, p.zone]).sort()).toEqual([
      ['m5.large', 'us-east-1a'],
      ['t3.micro', 'us-east-1a'],
    ]);
    expect(prices.every((p) => p.pricePerHour > 0 && p.pricePerHour < 1)).toBe(true);
  });
});

describe('AWS provider failures', () => {
  it('retries throttling with the SDK back-off and succeeds; the retries are visible on the server', async () => {
    const events: ApiCallEvent[] = [];
    const aws = provider({ observer: (e) => events.push(e) });
    server.seed(2);
    server.faults.inject('DescribeInstances', 'throttle', 2);
    const listed = await aws.list();
    expect(listed).toHaveLength(2);
    expect(server.calls.count('DescribeInstances', 503)).toBe(2);
    expect(server.calls.count('DescribeInstances', 200)).toBe(1);
    expect(events.find((e) => e.call === 'DescribeInstances')).toMatchObject({ ok: true, attempts: 3, throttledAttempts: 2 });
  });

  it('gives up with ThrottledError once throttling outlasts the SDK attempts', async () => {
    const events: ApiCallEvent[] = [];
    const aws = provider({ maxAttempts: 2, observer: (e) => events.push(e) });
    server.faults.inject('DescribeInstances', 'throttle', 5);
    const error = await aws.list().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ThrottledError);
    expect(error).toMatchObject({ provider: 'aws', operation: 'list', providerCode: 'RequestLimitExceeded', httpStatus: 503 });
    expect((error as Error).message).toBe("aws list: Request limit exceeded. (still throttled after the SDK's retries) [RequestLimitExceeded]");
    expect(server.calls.count('DescribeInstances', 503)).toBe(2);
    expect(events.find((e) => e.call === 'DescribeInstances')).toMatchObject({ ok: false, code: 'RequestLimitExceeded', attempts: 2, throttledAttempts: 2 });
  });

  it('surfaces a capacity error with the provider message once the SDK gives up', async () => {
    const aws = provider({ maxAttempts: 2 });
    server.faults.inject('RunInstances', 'capacity', 2);
    const error = await aws.create({ name: 'big', type: 'm5.2xlarge', image: 'ami-0abc1234' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CapacityError);
    expect(error).toMatchObject({ provider: 'aws', operation: 'create', providerCode: 'InsufficientInstanceCapacity', reason: 'capacity', httpStatus: 500 });
    expect((error as Error).message).toContain('We currently do not have sufficient capacity');
    expect(server.calls.count('RunInstances', 500)).toBe(2);
    expect(server.instances()).toHaveLength(0);
  });

  it('maps a missing instance to NotFound and a malformed id to InvalidRequestError', async () => {
    const aws = provider();
    await expect(aws.get('i-0123456789abcdef0')).rejects.toSatisfy((e) => e instanceof NotFound && e.providerCode === 'InvalidInstanceID.NotFound' && /does not exist/.test(e.message));
    await expect(aws.stop('i-0123456789abcdef0')).rejects.toBeInstanceOf(NotFound);
    await expect(aws.start('web-1')).rejects.toBeInstanceOf(InvalidRequestError);
    expect(server.calls.count('StartInstances')).toBe(0);
  });

  it('refuses to start a terminated instance with IncorrectStateError', async () => {
    const aws = provider();
    const [seeded] = server.seed(1);
    await aws.terminate(seeded?.instanceId ?? '');
    await expect(aws.start(seeded?.instanceId ?? '')).rejects.toSatisfy((e) => e instanceof IncorrectStateError && e.providerCode === 'IncorrectInstanceState');
  });

  it('names the provider and the credential source when the default chain finds no credentials', async () => {
    const scratch = mkdtempSync(join(tmpdir(), 'dwcp-aws-creds-'));
    const restore = setEnv({
      AWS_ACCESS_KEY_ID: undefined,
      AWS_SECRET_ACCESS_KEY: undefined,
      AWS_SESSION_TOKEN: undefined,
      AWS_PROFILE: undefined,
      AWS_ROLE_ARN: undefined,
      AWS_WEB_IDENTITY_TOKEN_FILE: undefined,
      AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: undefined,
      AWS_CONTAINER_CREDENTIALS_FULL_URI: undefined,
      AWS_SHARED_CREDENTIALS_FILE: join(scratch, 'credentials'),
      AWS_CONFIG_FILE: join(scratch, 'config'),
      // The chain's last resort is the instance metadata service, which is not on loopback.
      AWS_EC2_METADATA_DISABLED: 'true',
    });
    try {
      const aws = provider({ credentials: { source: 'chain' } });
      const error = await aws.list().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CredentialsError);
      expect(error).toMatchObject({ provider: 'aws', operation: 'list' });
      expect((error as CredentialsError).credentialSource).toContain('AWS default credential chain');
      expect((error as Error).message).toMatch(/^aws list: .*credentials from the AWS default credential chain/);
      expect(server.calls.count()).toBe(0);
    } finally {
      restore();
      rmSync(scratch, { recursive: true, force: true });
    }
  });

  it('with the env source reads only the environment, and names it when the keys are missing', async () => {
    const restore = setEnv({ AWS_ACCESS_KEY_ID: undefined, AWS_SECRET_ACCESS_KEY: undefined, AWS_SESSION_TOKEN: undefined });
    try {
      const error = await provider({ credentials: { source: 'env' } }).list().catch((e: unknown) => e);
      expect(error).toBeInstanceOf(CredentialsError);
      expect((error as Error).message).toBe(
        'aws list: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not both set (credentials from the environment only (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN)) [CredentialsProviderError]',
      );
      expect(server.calls.count()).toBe(0);
      process.env.AWS_ACCESS_KEY_ID = 'AKIDFROMENV00002';
      process.env.AWS_SECRET_ACCESS_KEY = 'env-secret';
      server.seed(1);
      expect(await provider({ credentials: { source: 'env' } }).list()).toHaveLength(1);
    } finally {
      restore();
    }
  });

  it('uses keys from the environment through the default chain', async () => {
    const restore = setEnv({ AWS_ACCESS_KEY_ID: 'AKIDFROMENV00001', AWS_SECRET_ACCESS_KEY: 'env-secret', AWS_SESSION_TOKEN: undefined, AWS_PROFILE: undefined });
    try {
      server.seed(1);
      expect(await provider({ credentials: { source: 'chain' } }).list()).toHaveLength(1);
    } finally {
      restore();
    }
  });

  it('reports expired credentials as CredentialsError naming the static key, without retries', async () => {
    const aws = provider();
    server.expireAccessKey(KEYS.accessKeyId);
    const error = await aws.list().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CredentialsError);
    expect(error).toMatchObject({ providerCode: 'RequestExpired', credentialSource: 'static access key AKID… from the dwcp config' });
    expect(server.calls.count('DescribeInstances')).toBe(1);
  });

  it('stops a wait at once when the credentials expire during it, instead of timing out', async () => {
    const aws = provider({ waiter: { ...FAST_WAITER, maxWaitSeconds: 300 } });
    server.transitionDelayMs = 60_000;
    const error = await aws
      .create({ name: 'slow', type: 't3.micro', image: 'ami-0abc1234' }, { onProgress: (e) => e.phase === 'waiting' && server.expireAccessKey(KEYS.accessKeyId) })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CredentialsError);
  });

  it('stops waiting when the caller aborts; the accepted launch goes on', async () => {
    const aws = provider();
    server.transitionDelayMs = 60_000;
    const controller = new AbortController();
    const error = await aws
      .create({ name: 'cancel-me', type: 't3.micro', image: 'ami-0abc1234' }, { signal: controller.signal, onProgress: (e) => e.phase === 'accepted' && controller.abort() })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CancelledError);
    expect((error as CancelledError).instanceId).toBe(server.instances()[0]?.instanceId);
    expect(server.instances().map((i) => i.state)).toEqual(['pending']);
    await expect(aws.list(undefined, { signal: controller.signal })).rejects.toBeInstanceOf(CancelledError);
  });

  it('checks input before calling EC2', async () => {
    const aws = provider();
    await expect(aws.create({ name: 'x', type: 't3.micro', image: 'ami-1', tags: { 'aws:owner': 'me' } })).rejects.toThrow(/tags\.aws:owner: keys starting with "aws:"/);
    await expect(aws.create({ name: '', type: 't3.micro', image: 'ami-1' })).rejects.toThrow(/name: required/);
    await expect(aws.create({ name: 'x', type: 't3.micro', image: 'ami-1', userData: 'x'.repeat(20_000) })).rejects.toThrow(/userData: 20000 bytes, over EC2's limit of 16384/);
    expect(server.calls.count()).toBe(0);
  });
});

const scratchDirs: string[] = [];
afterAll(() => scratchDirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Sets (or, for undefined, removes) environment variables; returns a function restoring the previous values. */
function setEnv(vars: Record<string, string | undefined>): () => void {
  const previous = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  const apply = (values: Record<string, string | undefined>): void => {
    for (const [k, v] of Object.entries(values)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
  apply(vars);
  return () => apply(previous);
}
