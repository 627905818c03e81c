/**
 * CloudInventory against the local provider (its VMs in a file in a temp
 * data dir, as in the daemon), wrapped so tests can make tagging, listing or
 * creating fail: the create → journal → tag sequence, half-finished creates
 * finished by a later sync (tagging failed; a create cut short, then the
 * daemon restarted on the same data dir), VMs with a foreign token left
 * alone and reported, stale journal entries dropped, refused launches
 * leaving nothing behind, sync failures counted but never fatal, periodic
 * syncs, prompt stop, restored inventories and provider routing.
 * The same mechanism against the fake EC2 server, through a real daemon, is
 * in test/integration/cloud-daemon.test.ts.
 */
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Registry } from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { CloudsSchema } from '../../src/cloud/config.ts';
import { CloudInventory, InventoryError } from '../../src/cloud/inventory.ts';
import { createCloudMetrics, type CloudMetrics } from '../../src/cloud/metrics.ts';
import { buildProvider } from '../../src/cloud/providers.ts';
import {
  CancelledError,
  CapacityError,
  InvalidRequestError,
  ProviderError,
  type CallOptions,
  type CloudProvider,
  type CreateInstanceRequest,
  type Instance,
  type InstanceFilter,
  type LongOperationOptions,
  type Tags,
} from '../../src/cloud/provider.ts';
import { createLogger } from '../../src/log.ts';

/** Delegates to a real provider; each knob makes the next calls of one method fail or hang. */
class FlakyProvider implements CloudProvider {
  readonly inner: CloudProvider;
  failSetTags = 0;
  failList: Error[] = [];
  hangList = false;
  /** When set, a listing is taken at once but returned only after this settles (a slow listing). */
  holdList: Promise<void> | null = null;
  listCalls = 0;
  listAborted = false;
  constructor(inner: CloudProvider) {
    this.inner = inner;
  }
  get kind() {
    return this.inner.kind;
  }
  get region() {
    return this.inner.region;
  }
  get description() {
    return this.inner.description;
  }
  async list(filter?: InstanceFilter, options: CallOptions = {}): Promise<Instance[]> {
    this.listCalls++;
    if (this.hangList) {
      await new Promise<void>((resolve) => options.signal?.addEventListener('abort', () => resolve(), { once: true }));
      this.listAborted = true;
      throw new CancelledError('local', 'list', 'Cancelled', 'cancelled by the caller');
    }
    const failure = this.failList.shift();
    if (failure) throw failure;
    const listed = await this.inner.list(filter, options);
    if (this.holdList) await this.holdList;
    return listed;
  }
  get(id: string, options?: CallOptions) {
    return this.inner.get(id, options);
  }
  create(request: CreateInstanceRequest, options?: LongOperationOptions) {
    return this.inner.create(request, options);
  }
  start(id: string, options?: LongOperationOptions) {
    return this.inner.start(id, options);
  }
  stop(id: string, options?: LongOperationOptions) {
    return this.inner.stop(id, options);
  }
  terminate(id: string, options?: LongOperationOptions) {
    return this.inner.terminate(id, options);
  }
  async setTags(id: string, tags: Tags, options?: CallOptions): Promise<void> {
    if (this.failSetTags > 0) {
      this.failSetTags--;
      throw new ProviderError('local', 'setTags', 'UnauthorizedOperation', 'You are not authorized to perform this operation.');
    }
    return this.inner.setTags(id, tags, options);
  }
  listInstanceTypes() {
    return this.inner.listInstanceTypes();
  }
  zoneHealth() {
    return this.inner.zoneHealth();
  }
  close() {
    return this.inner.close();
  }
}

const log = createLogger('silent');
const dirs: string[] = [];
const open: CloudInventory[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((i) => i.stop()));
  dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true }));
});

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-inventory-'));
  dirs.push(dir);
  return dir;
}

interface Setup {
  inventory: CloudInventory;
  flaky: FlakyProvider;
  metrics: CloudMetrics;
  dir: string;
}

async function setup(opts: { dir?: string; local?: Record<string, unknown>; providers?: Record<string, unknown>[] } = {}): Promise<Setup> {
  const dir = opts.dir ?? dataDir();
  const clouds = CloudsSchema.parse({ providers: opts.providers ?? [{ kind: 'local', transitionDelayMs: 20, ...opts.local }] });
  const metrics = createCloudMetrics([new Registry()]);
  let flaky: FlakyProvider | undefined;
  const inventory = await CloudInventory.open({
    clouds,
    dataDir: dir,
    metrics,
    log,
    buildProvider: async (entry, context) => {
      const wrapped = new FlakyProvider(await buildProvider(entry, context));
      flaky ??= wrapped;
      return wrapped;
    },
  });
  open.push(inventory);
  if (!flaky) throw new Error('no provider was built');
  return { inventory, flaky, metrics, dir };
}

async function metric(m: CloudMetrics, name: Exclude<keyof CloudMetrics, 'qemu'>, provider = 'local'): Promise<number | undefined> {
  const values = (await m[name].get()).values as { labels: Record<string, string | number>; value: number }[];
  return values.find((v) => v.labels.provider === provider)?.value;
}

function journal(dir: string): { token: string; instanceId: string | null }[] {
  return (JSON.parse(readFileSync(join(dir, 'cloud', 'pending-creates.json'), 'utf8')) as { pending: { token: string; instanceId: string | null }[] }).pending;
}

const REQUEST = { name: 'web-1', type: 'local.small', image: 'debian-12', tags: { team: 'infra' } };

describe('creating a VM', () => {
  it('launches with the create token and the caller tags, then applies the default tags and clears the journal', async () => {
    const { inventory, flaky, dir } = await setup();
    const created = await inventory.create('local', REQUEST);
    expect(created.warning).toBeNull();
    expect(created.instance.tags).toMatchObject({ team: 'infra', 'managed-by': 'dwcp', 'dwcp-create-token': expect.stringMatching(/^[0-9a-f-]{36}$/) });
    expect((await flaky.inner.get(created.instance.id)).tags).toEqual(created.instance.tags);
    expect(journal(dir)).toEqual([]);
    const listed = await inventory.list();
    expect(listed.instances.map((e) => [e.provider, e.instance.id, e.instance.state])).toEqual([['local', created.instance.id, 'running']]);
  });

  it('leaves no journal entry when the provider refuses the launch', async () => {
    const { inventory, dir } = await setup({ local: { capacity: { vcpus: 1, memoryMiB: 1024 } } });
    await expect(inventory.create('local', { ...REQUEST, type: 'local.huge' })).rejects.toBeInstanceOf(InvalidRequestError);
    await expect(inventory.create('local', { ...REQUEST, type: 'local.large' })).rejects.toBeInstanceOf(CapacityError);
    await expect(inventory.create('local', { ...REQUEST, tags: { 'dwcp-create-token': 'mine' } })).rejects.toThrow(/tags\.dwcp-create-token: reserved/);
    expect(journal(dir)).toEqual([]);
  });
});

describe('half-finished creates', () => {
  it('finishes a create whose tagging failed at the next sync, retrying until tagging works', async () => {
    const { inventory, flaky, metrics, dir } = await setup();
    flaky.failSetTags = 2; // the create's own tagging, then the first sync's
    const created = await inventory.create('local', REQUEST);
    expect(created.warning).toMatch(/^VM local-[0-9a-f]{12} runs, but its tags managed-by could not be applied \(local setTags: You are not authorized.*; the next inventory sync retries$/);
    expect((await flaky.inner.get(created.instance.id)).tags['managed-by']).toBeUndefined();
    expect(journal(dir)).toEqual([{ ...journal(dir)[0], instanceId: created.instance.id }]);
    expect(await metric(metrics, 'pendingCreates')).toBe(1);
    expect(inventory.statuses()[0]?.pendingCreates).toBe(1);

    await inventory.sync('local');
    expect(journal(dir)).toHaveLength(1);
    expect(await metric(metrics, 'reconciledCreates')).toBe(0);

    await inventory.sync('local');
    expect((await flaky.inner.get(created.instance.id)).tags).toMatchObject({ 'managed-by': 'dwcp', team: 'infra' });
    expect(journal(dir)).toEqual([]);
    expect(await metric(metrics, 'reconciledCreates')).toBe(1);
    expect(await metric(metrics, 'pendingCreates')).toBe(0);
    expect((await inventory.list()).instances[0]?.instance.tags['managed-by']).toBe('dwcp');
  });

  it('finishes a create cut short mid-wait once a daemon on the same data dir syncs', async () => {
    const first = await setup({ local: { transitionDelayMs: 60_000 } });
    const controller = new AbortController();
    const creating = first.inventory.create('local', REQUEST, { signal: controller.signal });
    const deadline = Date.now() + 10_000;
    while ((await first.flaky.inner.list()).length === 0) {
      if (Date.now() > deadline) throw new Error('the launch never reached the provider');
      await new Promise((resolve) => setImmediate(resolve));
    }
    controller.abort();
    const error = await creating.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CancelledError);
    const vmId = (error as CancelledError).instanceId;
    expect(vmId).toMatch(/^local-/);
    await first.inventory.stop();
    expect(journal(first.dir)).toEqual([expect.objectContaining({ instanceId: vmId })]);

    const second = await setup({ dir: first.dir });
    await second.inventory.sync('local');
    const vm = await second.flaky.inner.get(vmId ?? '');
    expect(vm).toMatchObject({ state: 'pending', tags: { 'managed-by': 'dwcp', team: 'infra' } });
    expect(journal(first.dir)).toEqual([]);
    expect(await metric(second.metrics, 'reconciledCreates')).toBe(1);
  });

  it('reports a VM with a create token nobody here claims, and leaves it alone', async () => {
    const { inventory, flaky, metrics } = await setup();
    const foreign = await flaky.inner.create({ name: 'theirs', type: 'local.small', image: 'x', tags: { 'dwcp-create-token': 'not-in-our-journal' } });
    await inventory.sync('local');
    expect(await metric(metrics, 'unreconciledInstances')).toBe(1);
    expect((await flaky.inner.get(foreign.id)).tags).toEqual({ 'dwcp-create-token': 'not-in-our-journal' });
    await flaky.inner.terminate(foreign.id);
    await inventory.sync('local');
    expect(await metric(metrics, 'unreconciledInstances')).toBe(0);
  });

  it('drops a journal entry whose VM never appeared once the grace period has passed', async () => {
    const dir = dataDir();
    const entry = (token: string, minutesAgo: number) => ({
      token,
      provider: 'local',
      name: 'ghost',
      type: 'local.small',
      tags: { 'managed-by': 'dwcp' },
      requestedAt: new Date(Date.now() - minutesAgo * 60_000).toISOString(),
      instanceId: null,
    });
    mkdirSync(join(dir, 'cloud'), { recursive: true });
    writeFileSync(join(dir, 'cloud', 'pending-creates.json'), JSON.stringify({ version: 1, pending: [entry('old', 60), entry('recent', 1)] }));
    const { inventory, metrics } = await setup({ dir });
    expect(await metric(metrics, 'pendingCreates')).toBe(2);
    await inventory.sync('local');
    expect(journal(dir).map((e) => e.token)).toEqual(['recent']);
  });

  it('moves an unreadable journal aside instead of overwriting it', async () => {
    const dir = dataDir();
    mkdirSync(join(dir, 'cloud'), { recursive: true });
    writeFileSync(join(dir, 'cloud', 'pending-creates.json'), '{"version":1,"pending":[{"token":');
    const { inventory } = await setup({ dir });
    await inventory.create('local', REQUEST);
    expect(readdirSync(join(dir, 'cloud')).filter((n) => n.startsWith('pending-creates.json.corrupt-'))).toHaveLength(1);
  });
});

describe('inventory syncs', () => {
  it('counts and reports a failing sync, keeps the previous inventory, and recovers', async () => {
    const { inventory, flaky, metrics } = await setup();
    await inventory.create('local', REQUEST);
    await inventory.sync('local');
    flaky.failList.push(new ProviderError('local', 'list', 'RequestLimitExceeded', 'Request limit exceeded.'));
    await inventory.sync('local');
    const [status] = inventory.statuses();
    expect(status).toMatchObject({ lastError: 'local list: Request limit exceeded. [RequestLimitExceeded]', instances: 1 });
    expect(await metric(metrics, 'syncErrors')).toBe(1);
    expect((await inventory.list()).instances).toHaveLength(1);
    await inventory.sync('local');
    expect(inventory.statuses()[0]?.lastError).toBeNull();
  });

  it('syncs periodically once started, and stop() aborts a hanging sync promptly', async () => {
    const { inventory, flaky } = await setup({ local: { inventoryIntervalMs: 100 } });
    inventory.start();
    const deadline = Date.now() + 10_000;
    while (flaky.listCalls < 3) {
      if (Date.now() > deadline) throw new Error(`only ${flaky.listCalls} syncs ran`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    flaky.hangList = true;
    const hung = flaky.listCalls;
    while (flaky.listCalls === hung) {
      if (Date.now() > deadline) throw new Error('no sync started after hangList');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const started = performance.now();
    await inventory.stop();
    expect(flaky.listAborted).toBe(true);
    expect(performance.now() - started).toBeLessThan(1_000);
    const calls = flaky.listCalls;
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(flaky.listCalls).toBe(calls);
  });

  it('keeps the result of an operation that finished while a slower listing was under way', async () => {
    const { inventory, flaky } = await setup();
    const { instance } = await inventory.create('local', REQUEST);
    const release = Promise.withResolvers<void>();
    flaky.holdList = release.promise;
    const calls = flaky.listCalls;
    const syncing = inventory.sync('local');
    while (flaky.listCalls === calls) await new Promise((resolve) => setImmediate(resolve));
    expect((await inventory.change('stop', instance.id)).instance.state).toBe('stopped');
    release.resolve();
    await syncing;
    expect((await inventory.list()).instances.map((e) => e.instance.state)).toEqual(['stopped']);
  });

  it('serves the saved inventory after a restart, marked restored until it syncs', async () => {
    const first = await setup();
    const created = await first.inventory.create('local', REQUEST);
    await first.inventory.sync('local');
    await first.inventory.stop();
    const second = await setup({ dir: first.dir });
    expect(second.inventory.statuses()[0]).toMatchObject({ restored: true, instances: 1 });
    expect((await second.inventory.list()).instances.map((e) => e.instance.id)).toEqual([created.instance.id]);
    await second.inventory.sync('local');
    expect(second.inventory.statuses()[0]).toMatchObject({ restored: false, lastError: null });
  });
});

describe('routing', () => {
  it('finds a provider by name or unique kind, and an instance by inventory or id shape', async () => {
    const { inventory } = await setup({
      providers: [
        { kind: 'local', name: 'lab-a', transitionDelayMs: 20 },
        { kind: 'local', name: 'lab-b', region: 'lab', transitionDelayMs: 20 },
      ],
    });
    const a = await inventory.create('lab-a', REQUEST);
    expect(a.provider).toBe('lab-a');
    await expect(inventory.create('local', REQUEST)).rejects.toThrow('provider "local" is ambiguous: lab-a, lab-b are all local; name one');
    await expect(inventory.create('', REQUEST)).rejects.toThrow('provider: required, as several are configured (lab-a, lab-b)');
    await expect(inventory.create('aws', REQUEST)).rejects.toSatisfy((e) => e instanceof InventoryError && e.reason === 'not_found' && /configured: lab-a \(local\), lab-b \(local\)/.test(e.message));
    expect((await inventory.change('stop', a.instance.id)).instance.state).toBe('stopped');
    await expect(inventory.change('stop', 'local-000000000000')).rejects.toThrow(/cannot tell which provider holds "local-000000000000"; name one with --provider/);
    // Keeping a disk is for providers whose disks are files of ours (qemu): refused here before the provider is asked, the VM untouched.
    await expect(inventory.change('terminate', a.instance.id, { keepDisk: true })).rejects.toThrow(/keep disk: provider \S+ \(local\) cannot keep a terminated VM's disk; only qemu can/);
    await expect(inventory.change('stop', a.instance.id, { keepDisk: true })).rejects.toThrow('keep disk: only with terminate, not stop');
    expect((await inventory.list({ providers: ['lab-b'] })).instances).toEqual([]);
    expect((await inventory.list({ providers: ['local'], states: ['stopped'] })).instances.map((e) => e.provider)).toEqual(['lab-a']);
  });
});
