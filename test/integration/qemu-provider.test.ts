/**
 * The qemu provider with real QEMU guests under TCG (the test guest of
 * scripts/guest-image, booted from a directory image source).
 *
 * What it proves: a guest is created, runs (ticks on its serial log), stops
 * gracefully through the ACPI power button, starts again and is terminated
 * with its disk deleted; a guest whose QEMU is killed with SIGKILL reads as
 * stopped with that reason; a busy guest (memory dirtied at 48 MiB/s) uses
 * more CPU than an idle one, measured from /proc; a new provider on the same
 * directory re-adopts a running guest, leaves alone a pid that another
 * process reuses, and finishes a stop its predecessor recorded but did not
 * finish; and every failure names the VM and the cause: QEMU binary
 * missing or not executable, image missing or with a wrong hash, a disk too
 * big for the capacity or the filesystem, a QMP socket that never answers,
 * a QEMU that exits at once.
 *
 * Few boots, shared where the test allows: three guests boot in this file
 * (the busy one, and one idle guest that goes through the whole lifecycle).
 * Waits are on events or on the serial log, with deadlines sized for a
 * loaded 2-core machine (a boot to its first tick takes 4–25 s there).
 */
import { execFile } from 'node:child_process';
import { chmod, cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { CapacityError, InvalidRequestError, ProviderError, type Instance } from '../../src/cloud/provider.ts';
import { DirectoryImageSource, IMAGE_MANIFEST, sha256File, type ImageManifest } from '../../src/cloud/qemu/directory-images.ts';
import { chooseAccel } from '../../src/cloud/qemu/accel.ts';
import { QemuProvider, type QemuProviderOptions } from '../../src/cloud/qemu/qemu-provider.ts';
import { migrationInfo, MIGRATION_EVENTS, QmpEventWatch, startMigration } from '../../src/cloud/qemu/migration-qmp.ts';
import { vmFiles } from '../../src/cloud/qemu/vm-store.ts';
import { GUEST_IMAGE, guestImagesDir } from '../support/qemu.ts';
import { eventually } from './harness.ts';

const log = createLogger(process.env['DWCP_TEST_LOG'] === '1' ? 'debug' : 'silent');
const BOOT_MS = 120_000;

let root: string;
let images: string;
const providers: QemuProvider[] = [];

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'dwcp-qemu-'));
  images = await guestImagesDir();
}, 120_000);

afterAll(async () => {
  await Promise.all(providers.splice(0).map((p) => p.close()));
  // Guests outlive their provider by design: kill what the tests left.
  await killAll(root);
  await rm(root, { recursive: true, force: true });
});

async function open(dir: string, extra: Partial<QemuProviderOptions> = {}): Promise<QemuProvider> {
  const provider = await QemuProvider.open({
    region: 'test',
    dir,
    accel: 'tcg',
    capacity: { vcpus: 8, memoryMiB: 4096, diskGiB: 50 },
    images: new DirectoryImageSource(images),
    log,
    utilisationIntervalMs: 0,
    timeouts: { powerdownMs: 60_000 },
    ...extra,
  });
  providers.push(provider);
  return provider;
}

async function closeProvider(p: QemuProvider): Promise<void> {
  providers.splice(providers.indexOf(p), 1);
  await p.close();
}

/** Resolves once the serial log has `count` lines matching `pattern`; polls the file (QEMU appends to it; there is no event). */
async function serial(dir: string, id: string, pattern: RegExp, count = 1, ms = BOOT_MS): Promise<string> {
  const path = vmFiles(dir, id).serial;
  const deadline = Date.now() + ms;
  for (;;) {
    const text = await readFile(path, 'utf8').catch(() => '');
    if (text.split('\n').filter((l) => pattern.test(l)).length >= count) return text;
    if (Date.now() > deadline) throw new Error(`serial log of ${id} did not show ${count}× ${pattern} within ${ms} ms; it ends with:\n${text.slice(-600)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** SIGKILLs every QEMU whose command line mentions `dir` (the guests a test left running). */
async function killAll(dir: string): Promise<void> {
  const out = await promisify(execFile)('ps', ['-eo', 'pid=,args=']).catch(() => ({ stdout: '' }));
  for (const line of out.stdout.split('\n')) {
    const m = /^\s*(\d+)\s+(.*)$/.exec(line);
    if (m && m[2]?.includes(dir) && m[2].includes('qemu-system')) {
      try {
        process.kill(Number(m[1]), 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
}

function pidOf(dir: string, id: string): Promise<number> {
  return readFile(vmFiles(dir, id).pid, 'utf8').then((t) => Number(t.trim()));
}

describe('qemu guests under TCG', () => {
  let dir: string;
  let provider: QemuProvider;
  let idle: Instance;

  beforeAll(async () => {
    dir = join(root, 'main');
    provider = await open(dir);
  });

  it('a busy guest (memory dirtied at 48 MiB/s) uses more CPU than an idle one, measured from /proc', async () => {
    const [busy, quiet] = await Promise.all([
      provider.create({ name: 'busy', type: 'qemu.micro', image: GUEST_IMAGE, userData: 'dwcp.dirty_mib_s=48' }),
      provider.create({ name: 'idle', type: 'qemu.micro', image: GUEST_IMAGE }),
    ]);
    idle = quiet;
    expect(busy).toMatchObject({ state: 'running', provider: 'qemu', vcpus: 1, memoryMiB: 256, image: GUEST_IMAGE });
    await Promise.all([serial(dir, busy.id, /^dwcp-guest: up, dirtying 48 MiB\/s/), serial(dir, quiet.id, /^tick \d+/, 3)]);
    const before = await provider.utilisation();
    // The measurement window: 20 more ticks of the idle guest (about 2 s of its time).
    const ticks = (await serial(dir, quiet.id, /^tick \d+/)).split('\n').filter((l) => l.startsWith('tick ')).length;
    await serial(dir, quiet.id, /^tick \d+/, ticks + 20);
    const after = await provider.utilisation();
    const used = (id: string) => (after.find((s) => s.id === id)?.cpuSeconds ?? NaN) - (before.find((s) => s.id === id)?.cpuSeconds ?? NaN);
    const sample = after.find((s) => s.id === busy.id);
    expect(sample).toMatchObject({ name: 'busy', vcpus: 1 });
    expect(sample?.memoryBytes).toBeGreaterThan(64 * 1024 * 1024);
    // The guest read its disk's partition table at boot.
    expect(sample?.diskReadBytes).toBeGreaterThan(0);
    expect(used(busy.id)).toBeGreaterThan(used(quiet.id));
    // The guests' own view through the balloon: the busy one's 32 MiB working set (and its 4 MiB source) is memory it no longer has.
    const reported = await eventually('both guests report their memory, the busy one with its working set in use', 60_000, async () => {
      const now = await provider.utilisation();
      const [b, q] = [now.find((s) => s.id === busy.id)?.guestMemory, now.find((s) => s.id === quiet.id)?.guestMemory];
      return b && q && b.availableBytes < q.availableBytes - 24 * 1024 * 1024 ? { b, q } : undefined;
    });
    expect(reported.b.totalBytes).toBe(reported.q.totalBytes);
    await provider.terminate(busy.id);
  }, 300_000);

  it('create → running (ticks) → stop (ACPI power-off) → start → SIGKILL seen as stopped → terminate (disk deleted)', async () => {
    const id = idle.id;
    await serial(dir, id, /^tick \d+/, 3);
    expect((await provider.get(id)).state).toBe('running');

    const stopped = await provider.stop(id);
    expect(stopped.state).toBe('stopped');
    expect(stopped.providerState).toBe('stopped: stopped by dwcp: the guest powered off');
    await serial(dir, id, /^dwcp-guest: power button: powering off/);

    const started = await provider.start(id);
    expect(started.state).toBe('running');
    await serial(dir, id, /^dwcp-guest: up/, 2);

    process.kill(await pidOf(dir, id), 'SIGKILL');
    const killed = await eventuallyState(provider, id, 'stopped');
    expect(killed.providerState).toBe('stopped: QEMU killed by SIGKILL (signal 9)');

    const files = vmFiles(dir, id);
    expect((await stat(files.disk)).isFile()).toBe(true);
    const gone = await provider.terminate(id);
    expect(gone.state).toBe('terminated');
    await expect(stat(files.disk)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await provider.list()).find((i) => i.id === id)?.state).toBe('terminated');
  }, 300_000);
});

describe('a destination QEMU', () => {
  it('runs the guest as soon as its incoming live migration completed, without anyone asking the provider', async () => {
    const [fromDir, toDir] = [join(root, 'from'), join(root, 'to')];
    const [from, to] = [await open(fromDir), await open(toDir)];
    const source = await from.create({ name: 'mover', type: 'qemu.micro', image: GUEST_IMAGE });
    await serial(fromDir, source.id, /^tick \d+/, 3);
    const incoming = await to.create({ name: 'mover', type: 'qemu.micro', image: GUEST_IMAGE, incoming: 'm1', incomingMode: 'live' });
    expect(incoming.state).toBe('stopped');
    const path = await to.incomingEndpoint('m1', 'state', null);
    // QEMU to QEMU over the destination's socket: no daemon, no relay, nothing that would poll the destination.
    const { qmp } = await from.migrationSource(source.id);
    const events = new QmpEventWatch(qmp, MIGRATION_EVENTS);
    await startMigration(qmp, path, 300, null);
    for (const deadline = Date.now() + BOOT_MS; ; await events.next(500)) {
      const info = await migrationInfo(qmp);
      if (info.status === 'completed') break;
      if (info.status === 'failed' || Date.now() > deadline) throw new Error(`the migration did not complete: ${info.status} ${info.error ?? ''}`);
    }
    events.close();
    // Only QEMU's MIGRATION event at the destination can have continued it: the provider was not asked since.
    await serial(toDir, incoming.id, /^tick \d+/, 1, 60_000);
    expect((await to.get(incoming.id)).state).toBe('running');
    await Promise.all([from.terminate(source.id), to.terminate(incoming.id)]);
  }, 300_000);
});

/** get() until the state is reached (a read syncs with the process: no event reaches a test from a killed QEMU). */
function eventuallyState(provider: QemuProvider, id: string, state: string, ms = 30_000): Promise<Instance> {
  return eventually(`${id} ${state}`, ms, async () => {
    const i = await provider.get(id);
    return i.state === state ? i : undefined;
  });
}


describe('re-adoption', () => {
  it('a new provider on the same directory re-adopts a running guest, leaves a reused pid alone, and finishes an unfinished stop', async () => {
    const dir = join(root, 'adopt');
    const first = await open(dir);
    const vm = await first.create({ name: 'survivor', type: 'qemu.micro', image: GUEST_IMAGE });
    const pid = await pidOf(dir, vm.id);
    await closeProvider(first);

    // A record whose pid is a live process that is not its QEMU (this test runner): reused, not to be touched.
    const impostor = JSON.parse(await readFile(vmFiles(dir, vm.id).record, 'utf8')) as Record<string, unknown>;
    const otherId = 'qemu-0000000000ab';
    Object.assign(impostor, { id: otherId, name: 'impostor', process: { pid: process.pid, startTicks: 1, shimPid: process.pid, startedAt: Date.now() } });
    await mkdir(join(dir, 'vms', otherId), { recursive: true });
    await writeFile(join(dir, 'vms', otherId, 'vm.json'), JSON.stringify(impostor));

    const second = await open(dir);
    const adopted = await second.get(vm.id);
    expect(adopted).toMatchObject({ state: 'running', providerState: 'running', name: 'survivor' });
    expect(await pidOf(dir, vm.id)).toBe(pid);
    const reused = await second.get(otherId);
    expect(reused.state).toBe('stopped');
    expect(reused.providerState).toMatch(new RegExp(`^stopped: QEMU is gone and pid ${process.pid} now belongs to another process .*not touched$`));

    // A stop accepted (recorded) but not finished when its dwcpd went away is finished by the next one that opens the directory.
    await serial(dir, vm.id, /^tick \d+/, 3);
    await closeProvider(second);
    const recordPath = vmFiles(dir, vm.id).record;
    const record = JSON.parse(await readFile(recordPath, 'utf8')) as Record<string, unknown>;
    await writeFile(recordPath, JSON.stringify({ ...record, power: 'stopped' }));
    const third = await open(dir);
    const finished = await eventuallyState(third, vm.id, 'stopped', BOOT_MS);
    expect(finished.providerState).toBe('stopped: stopped by dwcp: the guest powered off');
    await third.terminate(vm.id);
  }, 300_000);
});

describe('accelerator', () => {
  it('auto proves KVM by a probe boot or falls back to TCG saying why; kvm without a usable device is refused', async () => {
    expect(await chooseAccel({ mode: 'tcg', binary: 'qemu-system-x86_64', probeTimeoutMs: 1_000 })).toEqual({ accel: 'tcg', reason: 'configured (accel: tcg)' });
    expect(await chooseAccel({ mode: 'auto', binary: 'qemu-system-x86_64', probeTimeoutMs: 1_000, kvmDevice: '/nonexistent/kvm' })).toEqual({ accel: 'tcg', reason: '/nonexistent/kvm is not usable by this user (ENOENT): using TCG' });
    expect(await chooseAccel({ mode: 'kvm', binary: 'qemu-system-x86_64', probeTimeoutMs: 1_000, kvmDevice: '/nonexistent/kvm' })).toEqual({ accel: null, reason: 'accel: kvm is configured but /nonexistent/kvm is not usable by this user (ENOENT)' });
    // This host's own KVM: whichever way the probe goes, the choice says why (here, nested virtualisation: the probe times out).
    const choice = await chooseAccel({ mode: 'auto', binary: 'qemu-system-x86_64', probeTimeoutMs: 5_000 });
    if (choice.accel === 'kvm') expect(choice.reason).toMatch(/^a probe boot of \S+ under KVM finished in \d+ ms$/);
    else expect(choice.reason).toMatch(/: using TCG$/);
  }, 60_000);
});

describe('failures name the VM and the cause', () => {
  it('a missing or non-executable QEMU binary: list, create and zone health fail with the path', async () => {
    const missing = await open(join(root, 'nobinary'), { binary: '/nonexistent/qemu-system-x86_64' });
    await expect(missing.list()).rejects.toMatchObject({ message: 'qemu list: qemu binary /nonexistent/qemu-system-x86_64: not found [QemuUnavailable]' });
    await expect(missing.create({ name: 'x', type: 'qemu.micro', image: GUEST_IMAGE })).rejects.toBeInstanceOf(ProviderError);
    expect((await missing.zoneHealth())[0]).toMatchObject({ status: 'unavailable', messages: ['qemu binary /nonexistent/qemu-system-x86_64: not found'] });

    const plain = join(root, 'not-executable');
    await writeFile(plain, '#!/bin/sh\n');
    await chmod(plain, 0o644);
    const notExec = await open(join(root, 'noexec'), { binary: plain });
    await expect(notExec.list()).rejects.toMatchObject({ message: expect.stringContaining(`qemu binary ${plain}: not executable`) });
  });

  it('a missing image, and one whose file does not match its hash', async () => {
    const bad = join(root, 'images');
    await cp(join(images, GUEST_IMAGE), join(bad, 'tampered'), { recursive: true });
    const manifestPath = join(bad, 'tampered', IMAGE_MANIFEST);
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as ImageManifest;
    manifest.files['initrd.img'] = '0'.repeat(64);
    await writeFile(manifestPath, JSON.stringify(manifest));
    const p = await open(join(root, 'badimages'), { images: new DirectoryImageSource(bad) });
    const absent = await p.create({ name: 'web1', type: 'qemu.micro', image: 'nope' }).catch((e: unknown) => e);
    expect(absent).toBeInstanceOf(InvalidRequestError);
    expect((absent as Error).message).toMatch(/^qemu create: image nope for VM web1: image nope: no such image/);
    const tampered = await p.create({ name: 'web2', type: 'qemu.micro', image: 'tampered' }).catch((e: unknown) => e);
    expect(tampered).toBeInstanceOf(InvalidRequestError);
    expect((tampered as Error).message).toMatch(/^qemu create: image tampered for VM web2: image tampered: .*initrd\.img has sha256 [0-9a-f]{64}, the manifest says 0{64}: not used/);
    expect(await p.list()).toEqual([]);
  });

  it('a disk that passes the declared capacity or the free space of the filesystem', async () => {
    const p = await open(join(root, 'disks'), {
      capacity: { vcpus: 8, memoryMiB: 4096, diskGiB: 2_000_000 },
      types: { small: { vcpus: 1, memoryMiB: 256, diskGiB: 1 }, huge: { vcpus: 1, memoryMiB: 256, diskGiB: 1_000_000 }, wide: { vcpus: 16, memoryMiB: 256, diskGiB: 1 } },
    });
    const huge = await p.create({ name: 'big', type: 'huge', image: GUEST_IMAGE }).catch((e: unknown) => e);
    expect(huge).toBeInstanceOf(CapacityError);
    expect((huge as Error).message).toMatch(/VM big \(huge\): its 1000000 GiB disk does not fit the filesystem of the qemu data directory \([\d.]+ GiB free\)/);
    const wide = await p.create({ name: 'wide', type: 'wide', image: GUEST_IMAGE }).catch((e: unknown) => e);
    expect((wide as Error).message).toContain('not enough capacity on this host for VM wide (wide) (16 vCPU, 256 MiB, 1 GiB disk): would use 16/8 vCPUs');
    const small = await open(join(root, 'disks2'), { capacity: { vcpus: 8, memoryMiB: 4096, diskGiB: 5 }, types: { ten: { vcpus: 1, memoryMiB: 256, diskGiB: 10 } } });
    await expect(small.create({ name: 'ten', type: 'ten', image: GUEST_IMAGE })).rejects.toMatchObject({ message: expect.stringContaining('not enough disk capacity on this host for VM ten (ten)') });
  });

  it('a QMP socket that accepts but never answers fails the create at its deadline, naming the VM', async () => {
    // A stand-in for QEMU: answers -version, then listens on the QMP socket and says nothing.
    const fake = join(root, 'silent-qemu');
    await writeFile(
      fake,
      `#!${process.execPath}
const args = process.argv.slice(2);
if (args.includes('-version')) { console.log('QEMU emulator version 0.0.1 (silent stand-in)'); process.exit(0); }
const chardev = args.find((a) => a.startsWith('socket,id=qmp,'));
const path = /path=(.*?),server/.exec(chardev)[1];
require('node:fs').writeFileSync(args[args.indexOf('-pidfile') + 1], String(process.pid));
require('node:net').createServer(() => {}).listen(path);
setInterval(() => {}, 1000);
`,
    );
    await chmod(fake, 0o755);
    const p = await open(join(root, 'silent'), { binary: fake, timeouts: { qmpConnectMs: 1_000, bootMs: 5_000 } });
    const failed = await p.create({ name: 'mute', type: 'qemu.micro', image: GUEST_IMAGE }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(ProviderError);
    expect((failed as Error).message).toMatch(/^qemu create: qemu VM qemu-[0-9a-f]{12} \(mute\): QMP socket .*qmp\.sock: no greeting within 1000 ms \[QemuStartFailed\]$/);
    const [record] = await p.list();
    expect(record).toMatchObject({ name: 'mute', state: 'terminated' });
    expect(record?.providerState).toMatch(/^terminated: create failed: QMP socket .*no greeting within 1000 ms$/);
  });

  it('a QEMU that exits at once (a kernel it cannot load) fails the create with what QEMU said', async () => {
    const broken = join(root, 'broken-images');
    await cp(join(images, GUEST_IMAGE), join(broken, 'garbage'), { recursive: true });
    const kernel = join(broken, 'garbage', 'vmlinux');
    await writeFile(kernel, Buffer.alloc(4096, 0x5a));
    const manifestPath = join(broken, 'garbage', IMAGE_MANIFEST);
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as ImageManifest;
    manifest.files['vmlinux'] = await sha256File(kernel);
    await writeFile(manifestPath, JSON.stringify(manifest));
    const p = await open(join(root, 'exits'), { images: new DirectoryImageSource(broken) });
    const failed = await p.create({ name: 'doomed', type: 'qemu.micro', image: 'garbage' }).catch((e: unknown) => e);
    expect(failed).toBeInstanceOf(ProviderError);
    expect((failed as Error).message).toMatch(/^qemu create: qemu VM qemu-[0-9a-f]{12} \(doomed\): QEMU exited at once: exited with status 1: qemu\S*: .+ \[QemuStartFailed\]$/);
  });
});
