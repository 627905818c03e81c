/**
 * The qemu provider in a real dwcpd, driven by the real dwcpctl: one guest
 * (the test guest, TCG) is created, its serial console followed until it
 * ticks, its use exported as metrics (promtool-clean); a fleet VM placed on
 * the qemu provider (its declared capacity, its types) runs as a guest and
 * its delete terminates it; then dwcpd is
 * restarted and the new daemon re-adopts the running guest (same QEMU pid)
 * and goes on managing it: a graceful stop and a start through it, then a
 * SIGKILL of its QEMU, which the next sync reports as stopped with that
 * reason, and a terminate. A second daemon, whose QEMU binary is missing,
 * reports its qemu provider failing with the path while its local provider
 * works.
 *
 * Two guests boot in this file, one of them twice. Waits are on log lines, the console
 * stream or polled daemon answers, with deadlines for a loaded machine.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ListInstancesResponse, VmInstanceResponse } from '../../src/admin/schema.ts';
import { vmFiles } from '../../src/cloud/qemu/vm-store.ts';
import { lintMetrics } from '../support/promtool.ts';
import { GUEST_IMAGE, guestImagesDir } from '../support/qemu.ts';
import { baseConfig, cleanEnv, DWCPCTL, eventually, metricValue, prepareNode, runCtl, startDaemon, tempRoot, type CtlResult, type DaemonProcess, type NodeFiles } from './harness.ts';

const BOOT_MS = 120_000;

let root: { path: string; remove: () => Promise<void> };
let images: string;

beforeAll(async () => {
  root = await tempRoot('qemu-daemon');
  images = await guestImagesDir();
}, 120_000);

afterAll(async () => {
  await root?.remove();
});

function ctl(node: NodeFiles, ...args: string[]): Promise<CtlResult> {
  return runCtl(['--socket', node.socket, ...args]);
}

async function ctlJson<T>(node: NodeFiles, ...args: string[]): Promise<T> {
  const result = await ctl(node, ...args, '--json');
  expect(result, result.stderr).toMatchObject({ code: 0 });
  return JSON.parse(result.stdout) as T;
}

/** Ticks printed after the `boot`-th (1-based) "dwcp-guest: up" line of a console text. */
function ticksAfterBoot(text: string, boot: number): number {
  const parts = text.split(/^dwcp-guest: up.*$/m);
  return parts.length > boot ? (parts[boot] ?? '').split('\n').filter((l) => /^tick \d+ \d+$/.test(l)).length : 0;
}

/** Runs `vm console NAME --follow` until what it printed satisfies `done`; resolves with the text. */
function followConsole(node: NodeFiles, vm: string, what: string, done: (text: string) => boolean, ms = BOOT_MS): Promise<string> {
  const child = spawn(process.execPath, [DWCPCTL, '--socket', node.socket, 'vm', 'console', vm, '--follow'], { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`vm console ${vm} --follow did not show ${what} within ${ms} ms; it printed …${text.slice(-300)} ${stderr}`));
    }, ms);
    createInterface({ input: child.stdout }).on('line', (line) => {
      text += `${line}\n`;
      if (done(text)) {
        clearTimeout(timer);
        child.kill();
        resolve(text);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (!done(text)) reject(new Error(`vm console exited (${code}) before ${what}: ${stderr}`));
    });
  });
}

function qemuConfig(node: NodeFiles, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return baseConfig(node, {
    clouds: {
      providers: [
        { kind: 'qemu', accel: 'tcg', imageDir: images, capacity: { vcpus: 4, memoryGiB: 4, diskGiB: 20 }, inventoryIntervalMs: 600_000, utilisationIntervalMs: 500, stopTimeoutMs: 60_000, ...extra },
        { kind: 'local', transitionDelayMs: 10, inventoryIntervalMs: 600_000 },
      ],
    },
  });
}

describe('a qemu guest under dwcpd', () => {
  let node: NodeFiles;
  let daemon: DaemonProcess;
  let id = '';

  beforeAll(async () => {
    node = await prepareNode(root.path, 'host');
    daemon = await startDaemon(node, qemuConfig(node));
    await daemon.serving();
  }, 60_000);

  afterAll(async () => {
    // Guests outlive dwcpd by design: end this one's QEMU if a test left it running.
    const pid = await readFile(vmFiles(join(node.dir, 'qemu'), id).pid, 'utf8').catch(() => '');
    if (pid !== '') {
      try {
        process.kill(Number(pid), 'SIGKILL');
      } catch {
        // gone
      }
    }
    await daemon?.stop();
  });

  it('creates a guest that ticks on its console and exports its use as metrics', async (ctx) => {
    const created = await ctlJson<VmInstanceResponse>(node, 'vm', 'create', '--provider', 'qemu', '--type', 'qemu.micro', '--image', GUEST_IMAGE, '--name', 'web1');
    id = created.instance.id;
    expect(created.instance).toMatchObject({ provider: 'qemu', kind: 'qemu', name: 'web1', state: 'running', vcpus: 1, memory_mib: 256, image: GUEST_IMAGE });
    expect(created.instance.tags['managed-by']).toBe('dwcp');

    const console = await followConsole(node, 'web1', '5 ticks', (t) => ticksAfterBoot(t, 1) >= 5);
    expect(console).toMatch(/^dwcp-guest: up, dirtying 0 MiB\/s/m);
    expect(console).toMatch(/^tick 4 \d+$/m);

    const scraped = await eventually('the guest\'s CPU time in the metrics', 30_000, async () => {
      const text = await daemon.scrape();
      return (metricValue(text, 'dwcp_vm_cpu_seconds_total', { vm: id }) ?? 0) > 0 ? text : undefined;
    });
    expect(metricValue(scraped, 'dwcp_vm_memory_bytes', { vm: id })).toBeGreaterThan(16 * 1024 * 1024);
    expect(metricValue(scraped, 'dwcp_qemu_guests', { state: 'running' })).toBe(1);
    expect(metricValue(scraped, 'dwcp_qemu_qmp_duration_seconds_count', { command: 'query-status', result: 'ok' })).toBeGreaterThan(0);
    const verdict = lintMetrics(scraped, ctx);
    expect(verdict?.output).toBe('');
  }, 300_000);

  it('a fleet VM placed on the qemu provider runs as a guest, and its delete terminates it', async () => {
    const placed = await ctl(node, 'vm', 'create', 'fleet1', '--cpu', '1', '--memory', '256MiB', '--image', GUEST_IMAGE, '--constraint', 'provider=qemu');
    expect(placed, placed.stderr).toMatchObject({ code: 0 });
    expect(placed.stdout).toContain('fleet1 placed on host/qemu');
    const desired = () => ctlJson<{ vms: { name: string; status: string; provider: string; reason: string | null }[] }>(node, 'vm', 'list', '--desired', 'fleet1');
    await eventually('fleet1 running on qemu', BOOT_MS, async () => ((await desired()).vms[0]?.status === 'running' ? true : undefined), 500);
    const text = await followConsole(node, 'fleet1', '2 ticks', (t) => ticksAfterBoot(t, 1) >= 2);
    expect(text).toMatch(/^tick 1 \d+$/m);
    const listed = await ctlJson<ListInstancesResponse>(node, 'vm', 'list', '--provider', 'qemu');
    expect(listed.instances.find((i) => i.name === 'fleet1')).toMatchObject({ type: 'qemu.micro', state: 'running', tags: expect.objectContaining({ 'dwcp-vm': 'fleet1' }) });

    expect((await ctl(node, 'vm', 'terminate', 'fleet1')).code).toBe(0);
    await eventually('fleet1 terminated', 120_000, async () => {
      const res = await ctlJson<ListInstancesResponse>(node, 'vm', 'list', '--provider', 'qemu', '--refresh');
      return res.instances.find((i) => i.name === 'fleet1')?.state === 'terminated' ? true : undefined;
    }, 500);
  }, 300_000);

  it('re-adopts the running guest after a dwcpd restart and goes on managing it', async () => {
    const files = vmFiles(join(node.dir, 'qemu'), id);
    const pid = (await readFile(files.pid, 'utf8')).trim();
    expect((await daemon.stop()).code).toBe(0);
    daemon = await startDaemon(node, qemuConfig(node));
    await daemon.serving();
    await daemon.waitForLog((l) => l.msg === 'qemu guest re-adopted' && l.vm === id, 'the guest re-adopted');

    const listed = await ctlJson<ListInstancesResponse>(node, 'vm', 'list', '--provider', 'qemu', '--refresh');
    expect(listed.instances.find((i) => i.id === id)).toMatchObject({ state: 'running', provider_state: 'running' });
    expect((await readFile(files.pid, 'utf8')).trim()).toBe(pid);

    const stopped = await ctlJson<VmInstanceResponse>(node, 'vm', 'stop', id, '--provider', 'qemu');
    expect(stopped.instance).toMatchObject({ state: 'stopped', provider_state: 'stopped: stopped by dwcp: the guest powered off' });
    const started = await ctlJson<VmInstanceResponse>(node, 'vm', 'start', id, '--provider', 'qemu');
    expect(started.instance.state).toBe('running');
    const text = await followConsole(node, id, '3 ticks of the second boot', (t) => ticksAfterBoot(t, 2) >= 3);
    expect(text).toContain('dwcp-guest: power button: powering off');

    process.kill(Number((await readFile(files.pid, 'utf8')).trim()), 'SIGKILL');
    const killed = await eventually('the killed guest reported stopped', 30_000, async () => {
      const res = await ctlJson<ListInstancesResponse>(node, 'vm', 'list', '--provider', 'qemu', '--refresh');
      const vm = res.instances.find((i) => i.id === id);
      return vm?.state === 'stopped' ? vm : undefined;
    });
    expect(killed.provider_state).toBe('stopped: QEMU killed by SIGKILL (signal 9)');

    // Terminated with --keep-disk: the overlay is moved aside (qemu/kept/ID.qcow2), not deleted.
    const gone = await ctlJson<VmInstanceResponse>(node, 'vm', 'terminate', id, '--provider', 'qemu', '--keep-disk');
    expect(gone.instance.state).toBe('terminated');
    expect(existsSync(files.disk)).toBe(false);
    expect(existsSync(join(node.dir, 'qemu', 'kept', `${id}.qcow2`))).toBe(true);
  }, 300_000);
});

describe('a dwcpd whose QEMU binary is missing', () => {
  it('reports the qemu provider failing with the path; the daemon and the local provider go on', async () => {
    const node = await prepareNode(root.path, 'nobinary');
    const daemon = await startDaemon(node, qemuConfig(node, { binary: '/opt/nowhere/qemu-system-x86_64' }));
    try {
      await daemon.serving();
      const list = await ctl(node, 'vm', 'list', '--refresh', '--json');
      expect(list.code).toBe(1);
      const res = JSON.parse(list.stdout) as ListInstancesResponse;
      expect(res.providers.find((p) => p.name === 'qemu')?.last_error).toBe('qemu list: qemu binary /opt/nowhere/qemu-system-x86_64: not found [QemuUnavailable]');
      expect(res.providers.find((p) => p.name === 'local')?.last_error).toBeNull();
      expect(list.stderr).toContain('inventory of qemu may be stale: its last sync failed: qemu list: qemu binary /opt/nowhere/qemu-system-x86_64: not found');
      const local = await ctlJson<VmInstanceResponse>(node, 'vm', 'create', '--provider', 'local', '--type', 'local.small', '--image', 'x');
      expect(local.instance.state).toBe('running');
      const refused = await ctl(node, 'vm', 'create', '--provider', 'qemu', '--type', 'qemu.micro', '--image', GUEST_IMAGE);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain('qemu binary /opt/nowhere/qemu-system-x86_64: not found');
    } finally {
      await daemon.stop();
    }
  }, 60_000);
});
