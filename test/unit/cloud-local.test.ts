/**
 * The `local` provider: the same lifecycle and failure modes as the clouds
 * (pending → running, stopping → stopped/terminated, capacity, unavailable
 * zones, wrong state, not found, cancellation), records that settle lazily from
 * a shared store (so they survive a restart), and labelling as local.
 * Transitions are tens of milliseconds; waits are the provider waiting for the
 * stored transition time, or an injected clock where nothing waits.
 */
import { describe, expect, it } from 'vitest';
import { LocalProvider, MemoryVmStore } from '../../src/cloud/local/local-provider.ts';
import {
  CancelledError,
  CapacityError,
  IncorrectStateError,
  InvalidRequestError,
  NotFound,
  type ProgressEvent,
} from '../../src/cloud/provider.ts';

const fast = (extra: ConstructorParameters<typeof LocalProvider>[0] = {}) => new LocalProvider({ transitionDelayMs: 20, ...extra });

describe('local provider', () => {
  it('is labelled local and runs the full lifecycle with progress', async () => {
    const local = fast({ zones: ['dc1-a', 'dc1-b'], region: 'dc1' });
    expect(local.kind).toBe('local');
    expect(local.description).toBe('local (simulated VMs, no cloud)');

    const events: ProgressEvent[] = [];
    const vm = await local.create({ name: 'db-1', type: 'local.medium', image: 'debian-12', zone: 'dc1-b', tags: { role: 'db' } }, { onProgress: (e) => events.push(e) });
    expect(vm).toMatchObject({ provider: 'local', region: 'dc1', zone: 'dc1-b', name: 'db-1', state: 'running', vcpus: 2, memoryMiB: 4096, publicIp: null, tags: { role: 'db' } });
    expect(vm.launchTime).toBeInstanceOf(Date);
    expect(events[0]).toMatchObject({ operation: 'create', instanceId: vm.id, phase: 'accepted', state: 'pending' });
    expect(events.at(-1)).toMatchObject({ phase: 'done', state: 'running' });
    expect(events.slice(1, -1).every((e) => e.phase === 'waiting' && e.state === 'pending')).toBe(true);

    expect((await local.stop(vm.id)).state).toBe('stopped');
    expect((await local.start(vm.id)).state).toBe('running');
    await local.setTags(vm.id, { role: 'primary', team: 'data' });
    expect((await local.get(vm.id)).tags).toEqual({ role: 'primary', team: 'data' });
    expect(await local.list({ states: ['running'], tags: { team: 'data' } })).toHaveLength(1);
    expect((await local.terminate(vm.id)).state).toBe('terminated');
    expect(await local.list({ states: ['running'] })).toHaveLength(0);
    expect(await local.list({ states: ['terminated'] })).toHaveLength(1);
  });

  it('creates a migration\'s incoming copy prepared and stopped (no capacity taken until started), idempotently; a cloud refuses one', async () => {
    const local = fast({ capacity: { vcpus: 1, memoryMiB: 1024 } });
    await local.create({ name: 'busy', type: 'local.small', image: 'base' });
    const incoming = await local.create({ name: 'web1', type: 'local.small', image: 'base', incoming: 'm1', idempotencyToken: 't-1' });
    expect(incoming).toMatchObject({ state: 'stopped', launchTime: null });
    expect((await local.get(incoming.id)).state).toBe('stopped');
    expect((await local.create({ name: 'web1', type: 'local.small', image: 'base', incoming: 'm1', idempotencyToken: 't-1' })).id).toBe(incoming.id);
    await expect(local.start(incoming.id)).rejects.toThrow(CapacityError);
    const { checkCreateRequest } = await import('../../src/cloud/provider.ts');
    expect(() => checkCreateRequest('aws', { name: 'x', type: 't3.micro', image: 'ami-1', incoming: 'm1' })).toThrow(/incoming: provider aws cannot receive a migration/);
    expect(() => checkCreateRequest('gcp', { name: 'x', type: 'e2-small', image: 'base', incoming: 'm1' })).toThrow(/incoming: provider gcp cannot receive a migration \(local, qemu can\)/);
    expect(() => checkCreateRequest('qemu', { name: 'x', type: 'qemu.small', image: 'base', incoming: 'm1' })).not.toThrow();
  });

  it('refuses work beyond its capacity, including a start of a stopped VM', async () => {
    const local = fast({ capacity: { vcpus: 4, memoryMiB: 8192 } });
    const big = await local.create({ name: 'big', type: 'local.large', image: 'img' });
    await expect(local.create({ name: 'small', type: 'local.small', image: 'img' })).rejects.toSatisfy(
      (e) => e instanceof CapacityError && e.reason === 'capacity' && /would use 5\/4 vCPUs/.test(e.message),
    );
    await local.stop(big.id);
    const small = await local.create({ name: 'small', type: 'local.small', image: 'img' });
    await expect(local.start(big.id)).rejects.toBeInstanceOf(CapacityError);
    await local.terminate(small.id);
    expect((await local.start(big.id)).state).toBe('running');
  });

  it('lets only one of two concurrent creates take the last capacity', async () => {
    const local = fast({ capacity: { vcpus: 2, memoryMiB: 4096 } });
    const results = await Promise.allSettled([
      local.create({ name: 'a', type: 'local.medium', image: 'img' }, { wait: false }),
      local.create({ name: 'b', type: 'local.medium', image: 'img' }, { wait: false }),
    ]);
    expect(results.map((r) => r.status).sort()).toEqual(['fulfilled', 'rejected']);
  });

  it('fails like a cloud: unavailable zone, unknown type, wrong state, not found, malformed id', async () => {
    // Transitions slow enough that "pending" is still pending when stop() runs on a loaded machine.
    const local = fast({ zones: ['lab-a', 'lab-b'], transitionDelayMs: 60_000 });
    local.setZoneStatus('lab-b', 'unavailable');
    await expect(local.create({ name: 'x', type: 'local.small', image: 'img', zone: 'lab-b' })).rejects.toThrow(/zone lab-b is unavailable/);
    await expect(local.create({ name: 'x', type: 'm5.large', image: 'img' })).rejects.toThrow(/type: m5.large is not one of local\.small/);
    await expect(local.create({ name: 'x', type: 'local.small', image: 'img', zone: 'us-east-1a' })).rejects.toBeInstanceOf(InvalidRequestError);

    const pending = await local.create({ name: 'p', type: 'local.small', image: 'img' }, { wait: false });
    await expect(local.stop(pending.id)).rejects.toSatisfy((e) => e instanceof IncorrectStateError && /is pending; cannot stop/.test(e.message));
    await local.terminate(pending.id, { wait: false });
    await expect(local.start(pending.id)).rejects.toBeInstanceOf(IncorrectStateError);
    await expect(local.get('local-000000000000')).rejects.toBeInstanceOf(NotFound);
    await expect(local.get('i-0123')).rejects.toThrow(/id: "i-0123" is not a local VM id/);
  });

  it('stops waiting when aborted; the VM stays pending', async () => {
    const local = fast({ transitionDelayMs: 60_000 });
    const controller = new AbortController();
    const error = await local
      .create({ name: 'c', type: 'local.small', image: 'img' }, { signal: controller.signal, onProgress: (e) => e.phase === 'accepted' && controller.abort() })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CancelledError);
    const [vm] = await local.list();
    expect(vm?.state).toBe('pending');
  });

  it('reports a create accepted, and answers reads, only once its record is durable', async () => {
    // A store whose writes finish only when the test says: durability is what the provider waits for.
    const gates: (() => void)[] = [];
    class GatedStore extends MemoryVmStore {
      #last: Promise<void> = Promise.resolve();
      override put(record: Parameters<MemoryVmStore['put']>[0]): Promise<void> {
        void super.put(record);
        this.#last = new Promise<void>((resolve) => gates.push(resolve));
        return this.#last;
      }
      override durable(): Promise<void> {
        return this.#last;
      }
    }
    const local = fast({ store: new GatedStore(), transitionDelayMs: 60_000 });
    const events: string[] = [];
    const creating = local.create({ name: 'a', type: 'local.small', image: 'img' }, { wait: false, onProgress: (e) => events.push(e.phase) });
    let listed: unknown = null;
    const listing = local.list().then((l) => (listed = l));
    await new Promise((resolve) => setImmediate(resolve));
    expect(events).toEqual([]);
    expect(listed).toBeNull();
    expect(gates).toHaveLength(1);
    gates.splice(0).forEach((open) => open());
    expect((await creating).state).toBe('pending');
    expect(events).toEqual(['accepted']);
    await listing;
    expect(listed).toHaveLength(1);
  });

  it('settles stored transitions lazily, so a new provider on the same store sees them; purges terminated VMs after retention', async () => {
    let clock = 1_000_000;
    const store = new MemoryVmStore();
    const options = { store, now: () => clock, transitionDelayMs: 500, terminatedRetentionMs: 60_000 };
    const first = new LocalProvider(options);
    const vm = await first.create({ name: 'persist', type: 'local.small', image: 'img', idempotencyToken: 't-1' }, { wait: false });
    expect(vm.state).toBe('pending');
    expect((await first.create({ name: 'persist', type: 'local.small', image: 'img', idempotencyToken: 't-1' }, { wait: false })).id).toBe(vm.id);

    clock += 600;
    const second = new LocalProvider(options);
    expect(await second.get(vm.id)).toMatchObject({ state: 'running', launchTime: new Date(1_000_500) });
    await second.terminate(vm.id, { wait: false });
    clock += 600;
    expect((await second.get(vm.id)).state).toBe('terminated');
    clock += 60_000;
    expect(await second.list()).toEqual([]);
    expect(store.load()).toEqual([]);
    expect(await new LocalProvider(options).list()).toEqual([]);
  });
});
