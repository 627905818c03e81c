/**
 * The GCP provider through the real `@google-cloud/compute` clients (REST
 * transport) against the fake Compute server over loopback HTTP. Credentials
 * come through Application Default Credentials, as in production:
 * GOOGLE_APPLICATION_CREDENTIALS names a real `external_account` credential
 * whose token_url is the fake server's STS endpoint, so the real auth library
 * obtains the bearer token.
 * Operations finish asynchronously on the server; every wait is the client's
 * zoneOperations.wait long poll, never a sleep.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import { GcpProvider, type GcpProviderOptions } from '../../src/cloud/gcp/gcp-provider.ts';
import {
  CancelledError,
  CapacityError,
  CredentialsError,
  InvalidRequestError,
  NotFound,
  ProviderError,
  ThrottledError,
  type ApiCallEvent,
  type ProgressEvent,
} from '../../src/cloud/provider.ts';

const IMAGE = 'projects/debian-cloud/global/images/family/debian-12';
const FAST_RETRY = { initialDelayMs: 10, maxDelayMs: 50, totalTimeoutMs: 5_000 };

let scratch: string;
let server: FakeComputeServer;
let credentialsFile: string;
const providers: GcpProvider[] = [];

const previousAdc = process.env.GOOGLE_APPLICATION_CREDENTIALS;
beforeAll(() => {
  scratch = mkdtempSync(join(tmpdir(), 'dwcp-gcp-'));
  writeFileSync(join(scratch, 'subject-token'), 'fake-oidc-subject-token');
});
afterAll(() => {
  if (previousAdc === undefined) delete process.env.GOOGLE_APPLICATION_CREDENTIALS;
  else process.env.GOOGLE_APPLICATION_CREDENTIALS = previousAdc;
  rmSync(scratch, { recursive: true, force: true });
});

beforeEach(async () => {
  server = await FakeComputeServer.start({ project: 'dwcp-test', region: 'us-central1', transitionDelayMs: 30 });
  credentialsFile = join(scratch, `external-account-${server.url.split(':').at(-1)}.json`);
  writeFileSync(
    credentialsFile,
    JSON.stringify({
      type: 'external_account',
      audience: '//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/dwcp/providers/fake',
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      token_url: server.tokenUrl,
      credential_source: { file: join(scratch, 'subject-token') },
    }),
  );
  process.env.GOOGLE_APPLICATION_CREDENTIALS = credentialsFile;
});
afterEach(async () => {
  await Promise.all(providers.splice(0).map((p) => p.close()));
  await server.close();
});

function provider(extra: Partial<GcpProviderOptions> = {}): GcpProvider {
  const p = new GcpProvider({
    project: 'dwcp-test',
    region: 'us-central1',
    endpoint: server.url,
    retry: FAST_RETRY,
    ...extra,
  });
  providers.push(p);
  return p;
}

describe('GCP provider lifecycle', () => {
  it('creates, stops, starts, labels and deletes an instance, polling zone operations', async () => {
    const gcp = provider();
    const events: ProgressEvent[] = [];
    const created = await gcp.create(
      { name: 'web-1', type: 'e2-medium', image: IMAGE, zone: 'us-central1-b', tags: { 'managed-by': 'dwcp' }, userData: '#cloud-config\n' },
      { onProgress: (e) => events.push(e) },
    );
    expect(created).toMatchObject({
      id: 'us-central1-b/web-1',
      name: 'web-1',
      provider: 'gcp',
      region: 'us-central1',
      zone: 'us-central1-b',
      type: 'e2-medium',
      vcpus: 2,
      memoryMiB: 4096,
      state: 'running',
      providerState: 'RUNNING',
      spot: false,
      tags: { 'managed-by': 'dwcp' },
    });
    expect(created.privateIp).toMatch(/^10\.128\./);
    expect(created.publicIp).not.toBeNull();
    expect(created.launchTime).toBeInstanceOf(Date);
    expect(server.instance('us-central1-b', 'web-1')?.metadata).toEqual([{ key: 'user-data', value: '#cloud-config\n' }]);
    expect(events[0]).toMatchObject({ operation: 'create', instanceId: created.id, phase: 'accepted', state: 'pending' });
    expect(events.some((e) => e.phase === 'waiting')).toBe(true);
    expect(events.at(-1)).toMatchObject({ phase: 'done', state: 'running', percent: 100 });
    expect(server.calls.count('zoneOperations.wait')).toBeGreaterThanOrEqual(1);

    // setMachineType: refused while running (as GCE), done once stopped.
    await expect(gcp.setType(created.id, 'e2-small')).rejects.toThrow(/must be stopped to change its machine type/);
    const stopped = await gcp.stop(created.id);
    expect(stopped).toMatchObject({ state: 'stopped', providerState: 'TERMINATED', publicIp: null });
    expect(await gcp.setType(created.id, 'e2-small')).toMatchObject({ type: 'e2-small', vcpus: 2, memoryMiB: 2048, state: 'stopped' });
    expect((await gcp.start(created.id)).state).toBe('running');

    await gcp.setTags(created.id, { team: 'infra', 'managed-by': 'dwcp-v2' });
    expect((await gcp.get(created.id)).tags).toEqual({ 'managed-by': 'dwcp-v2', team: 'infra' });

    const terminated = await gcp.terminate(created.id);
    expect(terminated).toMatchObject({ id: created.id, state: 'terminated' });
    expect(server.instance('us-central1-b', 'web-1')).toBeUndefined();
    await expect(gcp.get(created.id)).rejects.toBeInstanceOf(NotFound);
  });

  it('filters by state and label on the server and returns at once with wait: false', async () => {
    const gcp = provider({ defaultZone: 'us-central1-a' });
    server.seed(3, { labels: { env: 'prod' }, namePrefix: 'prod' });
    server.seed(2, { labels: { env: 'dev' }, zone: 'us-central1-c', namePrefix: 'dev' });
    server.transitionDelayMs = 60_000; // the new instance stays PROVISIONING while the test lists
    const pending = await gcp.create({ name: 'spot-1', type: 'n2-standard-4', image: IMAGE, spot: true, tags: { env: 'prod' } }, { wait: false });
    expect(pending).toMatchObject({ state: 'pending', providerState: 'PROVISIONING', spot: true, vcpus: 4, memoryMiB: 16384, zone: 'us-central1-a' });

    expect(await gcp.list({ tags: { env: 'prod' } })).toHaveLength(4);
    expect(await gcp.list({ states: ['running'], tags: { env: 'prod' } })).toHaveLength(3);
    expect((await gcp.list({ states: ['pending', 'stopping'] })).map((i) => i.id)).toEqual([pending.id]);
    expect(await gcp.list({ states: ['terminated'] })).toEqual([]);
    expect(await gcp.list()).toHaveLength(6);
  });

  it('pages aggregatedList with maxResults/pageToken across three pages', async () => {
    const gcp = provider({ pageSize: 5 });
    const seeded = [...server.seed(6), ...server.seed(6, { zone: 'us-central1-f', namePrefix: 'f' })];
    const before = server.calls.count('instances.aggregatedList');
    const listed = await gcp.list();
    expect(listed.map((i) => i.name).sort()).toEqual(seeded.map((i) => i.name).sort());
    expect(server.calls.count('instances.aggregatedList') - before).toBe(3);
  });

  it('makes a create with the same idempotency token return the original operation', async () => {
    const gcp = provider();
    const request = { name: 'once', type: 'e2-small', image: IMAGE, zone: 'us-central1-a', idempotencyToken: 'b6f4c2de-0000-4000-8000-000000000001' };
    const a = await gcp.create(request, { wait: false });
    const b = await gcp.create(request);
    expect(b.id).toBe(a.id);
    expect(server.instances()).toHaveLength(1);
  });

  it('reports machine types and zone health', async () => {
    const gcp = provider();
    server.setZoneStatus('us-central1-c', 'DOWN');
    const types = await gcp.listInstanceTypes({ zone: 'us-central1-a' });
    expect(types.find((t) => t.name === 't2a-standard-1')).toEqual({ name: 't2a-standard-1', vcpus: 1, memoryMiB: 4096, architectures: ['arm64'], spot: true });
    expect(await gcp.listInstanceTypes({ types: ['n2-standard-8'] })).toEqual([{ name: 'n2-standard-8', vcpus: 8, memoryMiB: 32768, architectures: ['x86_64'], spot: true }]);
    const zones = await gcp.zoneHealth();
    expect(zones.map((z) => [z.zone, z.status])).toEqual([
      ['us-central1-a', 'available'],
      ['us-central1-b', 'available'],
      ['us-central1-c', 'unavailable'],
      ['us-central1-f', 'available'],
    ]);
  });
});

describe('GCP provider failures', () => {
  it('retries 429 rateLimitExceeded with gax back-off and succeeds; the retries are visible on the server', async () => {
    const events: ApiCallEvent[] = [];
    const gcp = provider({ observer: (e) => events.push(e) });
    server.seed(2);
    server.faults.inject('instances.aggregatedList', 'rateLimit', 2);
    expect(await gcp.list()).toHaveLength(2);
    expect(server.calls.count('instances.aggregatedList', 429)).toBe(2);
    expect(server.calls.count('instances.aggregatedList', 200)).toBe(1);
    expect(events.find((e) => e.call === 'instances.aggregatedList')).toMatchObject({ ok: true, attempts: 3, throttledAttempts: 2 });
  });

  it('retries a 503 on insert safely: the requestId makes the retry return the same operation', async () => {
    const gcp = provider();
    server.faults.inject('instances.insert', 'unavailable', 1);
    const created = await gcp.create({ name: 'retry-me', type: 'e2-small', image: IMAGE, zone: 'us-central1-a' });
    expect(created.state).toBe('running');
    expect(server.calls.count('instances.insert', 503)).toBe(1);
    expect(server.instances()).toHaveLength(1);
  });

  it('gives up with ThrottledError when throttling outlasts the retry budget', async () => {
    const gcp = provider({ retry: { initialDelayMs: 5, maxDelayMs: 10, totalTimeoutMs: 60 } });
    server.faults.inject('zones.list', 'rateLimit', 1000);
    const error = await gcp.zoneHealth().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ThrottledError);
    expect(error).toMatchObject({ provider: 'gcp', operation: 'zoneHealth', httpStatus: 429 });
    expect((error as Error).message).toContain("Quota exceeded for quota metric 'Read requests'");
  });

  it('surfaces a capacity error from the finished operation with GCE’s message', async () => {
    const gcp = provider();
    server.faults.inject('instances.insert', 'capacity');
    const error = await gcp.create({ name: 'big', type: 'n2-standard-8', image: IMAGE, zone: 'us-central1-a' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CapacityError);
    expect(error).toMatchObject({ provider: 'gcp', operation: 'create', providerCode: 'ZONE_RESOURCE_POOL_EXHAUSTED', reason: 'capacity', httpStatus: 503, instanceId: 'us-central1-a/big' });
    expect((error as Error).message).toContain("does not have enough resources available to fulfill the request");
    expect(server.instances()).toHaveLength(0);
  });

  it('maps missing instances to NotFound, duplicates to a 409 and bad names to InvalidRequestError', async () => {
    const gcp = provider();
    await expect(gcp.get('us-central1-a/nope')).rejects.toSatisfy((e) => e instanceof NotFound && e.httpStatus === 404 && /was not found/.test(e.message));
    await expect(gcp.stop('us-central1-a/nope')).rejects.toBeInstanceOf(NotFound);
    await gcp.create({ name: 'dup', type: 'e2-small', image: IMAGE, zone: 'us-central1-a' }, { wait: false });
    await expect(gcp.create({ name: 'dup', type: 'e2-small', image: IMAGE, zone: 'us-central1-a' }, { wait: false })).rejects.toSatisfy(
      (e) => e instanceof ProviderError && e.httpStatus === 409 && /already exists/.test(e.message),
    );
    await expect(gcp.create({ name: 'Web_1', type: 'e2-small', image: IMAGE })).rejects.toThrow(/name: "Web_1" must be a lowercase DNS label/);
    await expect(gcp.setTags('us-central1-a/dup', { Team: 'x' })).rejects.toThrow(/tags\.Team: GCE label keys/);
    await expect(gcp.start('europe-west1-b/dup')).rejects.toBeInstanceOf(InvalidRequestError);
  });

  it('names the provider and the credential source when credentials cannot be loaded', async () => {
    const missing = join(scratch, 'missing.json');
    const fromFile = await provider({ credentials: { source: 'file', path: missing } }).list().catch((e: unknown) => e);
    expect(fromFile).toBeInstanceOf(CredentialsError);
    expect(fromFile).toMatchObject({ provider: 'gcp', operation: 'list', credentialSource: `credentials file ${missing}` });

    process.env.GOOGLE_APPLICATION_CREDENTIALS = missing;
    const fromAdc = await provider().zoneHealth().catch((e: unknown) => e);
    expect(fromAdc).toBeInstanceOf(CredentialsError);
    expect((fromAdc as Error).message).toMatch(/^gcp zoneHealth: .*credentials from Application Default Credentials \(GOOGLE_APPLICATION_CREDENTIALS/);
    expect(server.calls.count()).toBe(0);
  });

  it('reports revoked credentials as CredentialsError naming the source', async () => {
    const gcp = provider();
    server.seed(1);
    expect(await gcp.list()).toHaveLength(1);
    server.revokeCredentials();
    const error = await gcp.list().catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CredentialsError);
    expect(error).toMatchObject({ httpStatus: 401 });
    expect((error as CredentialsError).credentialSource).toContain('Application Default Credentials');
    expect((error as Error).message).toContain('invalid authentication credentials');
  });

  it('stops waiting when the caller aborts; the accepted insert goes on', async () => {
    const gcp = provider();
    server.transitionDelayMs = 60_000;
    const controller = new AbortController();
    const error = await gcp
      .create({ name: 'cancel-me', type: 'e2-small', image: IMAGE, zone: 'us-central1-a' }, { signal: controller.signal, onProgress: (e) => e.phase === 'accepted' && controller.abort() })
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ name: 'CancelledError', instanceId: 'us-central1-a/cancel-me' });
    expect(server.instances().map((i) => i.status)).toEqual(['PROVISIONING']);
  });
});
