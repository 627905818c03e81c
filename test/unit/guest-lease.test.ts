/**
 * The per-guest lease: its pure rules (the deadline's format, the watchdog's
 * decision, which copies a region renews, the config's timing rule), and the
 * watchdog itself, the real shell loop of qemu-command.ts shimArgs, run
 * around a `sleep` standing in for QEMU: no lease, a valid lease renewed,
 * and a lease left to lapse (killed, with its note and exit status 137).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootClockCs, leaseFilesOf, type LeaseFiles, leaseState, leaseText, parseUptimeCs, prepareLeaseForLaunch, readLease, watchdogPollMs, writeLease } from '../../src/cloud/qemu/guest-lease.ts';
import { shimArgs } from '../../src/cloud/qemu/qemu-command.ts';
import { DrSettingsSchema } from '../../src/dr/config.ts';
import { leasePlan } from '../../src/dr/lease-plan.ts';
import type { ObservedVm } from '../../src/fleet/reconciler.ts';
import type { FleetProtection } from '../../src/fleet/protection.ts';
import type { FleetVm } from '../../src/fleet/state-machine.ts';

describe('lease rules', () => {
  it('reads the boot clock in centiseconds', () => {
    expect(parseUptimeCs('12345.67 890.12\n')).toBe(1_234_567);
    expect(() => parseUptimeCs('garbage')).toThrow(/\/proc\/uptime/);
  });

  it('decides like the watchdog: absent or empty is not leased, a deadline not yet passed is valid, garbage is lapsed', () => {
    expect(leaseState(null, 100)).toBe('none');
    expect(leaseState('', 100)).toBe('none');
    expect(leaseState(leaseText(100, 0, 'web1'), 100)).toBe('valid');
    expect(leaseState(leaseText(100, 0, 'web1'), 101)).toBe('lapsed');
    expect(leaseState('soon until whenever\n', 1)).toBe('lapsed');
  });

  it('polls a tenth of the lease, between 100 ms and 1 s', () => {
    expect(watchdogPollMs(15_000)).toBe(1_000);
    expect(watchdogPollMs(2_500)).toBe(250);
    expect(watchdogPollMs(500)).toBe(100);
  });

  it('config: the lease defaults to three quarters of the hold; with its poll it must end before the hold, and span two checks', () => {
    expect(DrSettingsSchema.parse({}).leaseMs).toBe(15_000);
    expect(DrSettingsSchema.parse({ checkIntervalMs: 500, fenceAfterMs: 1_500, fenceHoldMs: 3_500 }).leaseMs).toBe(2_625);
    const late = DrSettingsSchema.safeParse({ fenceHoldMs: 20_000, leaseMs: 19_500 });
    expect(late.success).toBe(false);
    expect(JSON.stringify(late.error?.issues)).toContain('must be below dr.fenceHoldMs (20000)');
    const short = DrSettingsSchema.safeParse({ checkIntervalMs: 5_000, leaseMs: 9_000 });
    expect(JSON.stringify(short.error?.issues)).toContain('at least 2 × dr.checkIntervalMs (10000)');
  });
});

describe('lease plan', () => {
  const protection = {} as FleetProtection;
  const vms = new Map<string, Pick<FleetVm, 'name' | 'deleted' | 'protection' | 'assignment'>>([
    ['web1', { name: 'web1', deleted: false, protection, assignment: { region: 'dc1', provider: 'qemu', generation: 3 } }],
    ['web2', { name: 'web2', deleted: false, protection: null, assignment: { region: 'dc1', provider: 'qemu', generation: 1 } }],
    ['web3', { name: 'web3', deleted: false, protection, assignment: { region: 'dc2', provider: 'qemu', generation: 2 } }],
    ['gone', { name: 'gone', deleted: true, protection, assignment: { region: 'dc1', provider: 'qemu', generation: 1 } }],
  ]);
  const copy = (id: string, vmName: string | undefined, generation: number, state: ObservedVm['state'] = 'running'): ObservedVm => ({ provider: 'qemu', id, name: id, state, managed: true, ...(vmName === undefined ? {} : { vmName }), generation });

  it('renews the current copy of a protected VM assigned here until the log was seen plus the lease; drops unprotected ones; lets stale ones lapse', () => {
    const plan = leasePlan({
      region: 'dc1',
      state: { vm: (n) => vms.get(n) },
      copies: [copy('a', 'web1', 3), copy('b', 'web1', 2), copy('c', 'web2', 1), copy('d', 'web3', 1), copy('e', 'gone', 1), copy('f', 'nobody', 1), copy('g', 'web1', 3, 'terminated'), { ...copy('h', 'web1', 3), managed: false }],
      logSeenAt: 1_000,
      leaseMs: 15_000,
    });
    expect([...(plan.get('qemu')?.renew ?? [])]).toEqual([['a', { untilMs: 16_000, vm: 'web1' }]]);
    expect(plan.get('qemu')?.release).toEqual(['c', 'e', 'f']);
  });
});

describe('the watchdog shell (real processes)', () => {
  let dir: string;
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dwcp-lease-'));
  });
  afterAll(async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  /** Runs `sleep 60` as the guest under the real shim, in its own directory; `ended` resolves with the status the shim recorded. */
  async function guest(name: string): Promise<{ files: LeaseFiles; ended: Promise<number> }> {
    await mkdir(join(dir, name));
    const files = leaseFilesOf(join(dir, name));
    const exit = join(dir, name, 'exit-status');
    const child = spawn('/bin/sh', shimArgs('sleep', ['60'], exit, { file: files.lease, pollMs: 100 }), { stdio: 'ignore' });
    children.push(child);
    const ended = new Promise<number>((resolve) => child.once('exit', () => resolve(readFile(exit, 'utf8').then((t) => Number(t.trim())))));
    return { files, ended };
  }

  const writeFor = async (files: LeaseFiles, ms: number): Promise<void> => writeLease(files, leaseText((await bootClockCs()) + Math.floor(ms / 10), Date.now() + ms, 'test'));
  const observe = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

  it('a lease left to lapse: the guest is killed after its deadline, never before, with a note and status 137', async () => {
    const g = await guest('lapse');
    const { files } = g;
    // The deadline counts from before the write (writeFor reads the boot clock first; the write's fsyncs take time under load).
    const deadline = Date.now() + 1_000;
    await writeFor(files, 1_000);
    const status = await g.ended;
    expect(Date.now()).toBeGreaterThanOrEqual(deadline - 10);
    expect(status).toBe(137);
    expect(await readFile(files.lapsed, 'utf8')).toMatch(/^lease lapsed: deadline \d+, boot clock \d+ \(centiseconds\)/);
    // A launch after the kill drops the lapsed lease and the note, so the new QEMU is not killed at once.
    await prepareLeaseForLaunch(files);
    expect(await readLease(files)).toBeNull();
    await expect(stat(files.lapsed)).rejects.toThrow();
  }, 30_000);

  it('no lease, then a lease kept valid by renewals: the guest runs on; once renewals stop, it is killed', async () => {
    const g = await guest('renewed');
    const { files } = g;
    let ended = false;
    void g.ended.then(() => (ended = true));
    // Unleased for 10 polls, then a 3 s lease renewed every 200 ms, 10 times: alive throughout (observed, not synchronised on).
    await observe(1_000);
    expect(ended).toBe(false);
    let lastDeadline = 0;
    for (let i = 0; i < 10; i++) {
      lastDeadline = Date.now() + 3_000;
      await writeFor(files, 3_000);
      await observe(200);
    }
    expect(ended).toBe(false);
    expect(await g.ended).toBe(137);
    expect(Date.now()).toBeGreaterThanOrEqual(lastDeadline - 20);
  }, 30_000);
});
