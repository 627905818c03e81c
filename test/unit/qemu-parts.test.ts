/**
 * The qemu provider's pure parts: /proc parsing, QEMU's command line (no
 * network-facing display, the sandbox, option values escaped, recognising
 * the guest's own QEMU), how a guest's end is told, run statuses as
 * instance states, the capacity check; and the `qemu` config entry with
 * what the fleet declares for it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveConfig } from '../../src/config/load.ts';
import { regionDeclaration } from '../../src/fleet/region-declaration.ts';
import { parseCmdline, parseRss, parseStat, readProcess } from '../../src/cloud/qemu/procfs.ts';
import { describeExitStatus, isGuestCommandLine, qemuArgs, shimArgs, type GuestCommand } from '../../src/cloud/qemu/qemu-command.ts';
import { capacityProblem, describeGuestEnd, stateOfRunStatus } from '../../src/cloud/qemu/guest-state.ts';

describe('procfs', () => {
  it('parses stat past a command name holding spaces and parentheses', () => {
    const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
    fields[0] = 'S';
    fields[14 - 3] = '250'; // utime
    fields[15 - 3] = '50'; // stime
    fields[20 - 3] = '4'; // threads
    fields[22 - 3] = '123456'; // starttime
    expect(parseStat(`4242 (qemu (x) y) ${fields.join(' ')}\n`)).toEqual({ state: 'S', cpuSeconds: 3, startTicks: 123456, threads: 4 });
    expect(() => parseStat('garbage')).toThrow(/no "\)"/);
  });

  it('parses cmdline and VmRSS, and reads this very process', async () => {
    expect(parseCmdline(Buffer.from('qemu\0-name\0guest=x\0'))).toEqual(['qemu', '-name', 'guest=x']);
    expect(parseRss('Name:\tqemu\nVmRSS:\t  2048 kB\n')).toBe(2048 * 1024);
    expect(parseRss('Name:\tkthreadd\n')).toBeNull();
    const self = await readProcess(process.pid);
    expect(self?.argv[0]).toBe(process.execPath);
    expect(self?.rssBytes).toBeGreaterThan(0);
    expect(await readProcess(2 ** 22 + 7)).toBeNull();
  });

  it('reads a process caught exiting (memory released, cmdline empty, not yet a zombie) as gone, not as a stranger', async () => {
    const proc = await mkdtemp(join(tmpdir(), 'dwcp-proc-'));
    try {
      const fields = Array.from({ length: 50 }, (_, i) => String(i + 3));
      fields[0] = 'R';
      await mkdir(join(proc, '4242'));
      await writeFile(join(proc, '4242', 'stat'), `4242 (qemu-system-x86) ${fields.join(' ')}\n`);
      await writeFile(join(proc, '4242', 'status'), 'Name:\tqemu-system-x86\n');
      await writeFile(join(proc, '4242', 'cmdline'), '');
      expect(await readProcess(4242, proc)).toBeNull();
      await writeFile(join(proc, '4242', 'cmdline'), 'qemu\0-name\0');
      expect((await readProcess(4242, proc))?.argv).toEqual(['qemu', '-name']);
    } finally {
      await rm(proc, { recursive: true, force: true });
    }
  });
});

const GUEST: GuestCommand = {
  id: 'qemu-0123456789ab',
  vcpus: 2,
  memoryMiB: 512,
  accel: 'tcg',
  sandbox: true,
  paths: { qmp: '/var/lib/dwcp,odd/qemu/vms/x/qmp.sock', serial: '/d/serial.log', pid: '/d/qemu.pid', disk: '/d/disk.qcow2', exit: '/d/exit-status' },
  boot: { kind: 'kernel', kernel: '/i/vmlinux', initrd: '/i/initrd.img', cmdline: 'console=ttyS0 quiet' },
};

describe('QEMU command line', () => {
  it('listens on nothing but its QMP Unix socket, sandboxed, and escapes commas in option values', () => {
    const args = qemuArgs(GUEST);
    const text = args.join(' ');
    expect(text).not.toMatch(/vnc|spice|tcp:|telnet|-nic (?!none)|-netdev/);
    expect(args).toEqual(expect.arrayContaining(['-display', 'none', '-nodefaults', '-no-user-config', '-accel', 'tcg', '-smp', '2', '-m', '512M']));
    expect(args[args.indexOf('-sandbox') + 1]).toBe('on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny');
    expect(args).toContain('socket,id=qmp,path=/var/lib/dwcp,,odd/qemu/vms/x/qmp.sock,server=on,wait=off');
    expect(args.slice(-6)).toEqual(['-kernel', '/i/vmlinux', '-initrd', '/i/initrd.img', '-append', 'console=ttyS0 quiet']);
    expect(qemuArgs({ ...GUEST, sandbox: false, accel: 'kvm' })).toEqual(expect.arrayContaining(['-cpu', 'host']));
    expect(qemuArgs({ ...GUEST, sandbox: false })).not.toContain('-sandbox');
    expect(qemuArgs({ ...GUEST, boot: { kind: 'disk' } }).join(' ')).toContain('bootindex=0');
  });

  it('recognises the guest\'s own QEMU and no other', () => {
    const argv = ['/usr/bin/qemu-system-x86_64', ...qemuArgs(GUEST)];
    expect(isGuestCommandLine(argv, GUEST.id, GUEST.paths.qmp)).toBe(true);
    expect(isGuestCommandLine(argv, 'qemu-ffffffffffff', GUEST.paths.qmp)).toBe(false);
    expect(isGuestCommandLine(argv, GUEST.id, '/elsewhere/qmp.sock')).toBe(false);
    expect(isGuestCommandLine(['/usr/bin/vim', 'notes'], GUEST.id, GUEST.paths.qmp)).toBe(false);
  });

  it('runs QEMU as the shell\'s child and records its status', () => {
    const sh = shimArgs('/usr/bin/qemu', ['-m', '1'], '/d/exit-status', { file: '/d/lease', pollMs: 250 });
    expect(sh.slice(2)).toEqual(['dwcp-qemu', '/d/exit-status', '/d/lease', '0.250', '/usr/bin/qemu', '-m', '1']);
    expect(sh[1]).not.toContain('exec ');
  });
});

describe('guest state', () => {
  it('tells how a guest ended', () => {
    expect(describeExitStatus(137)).toBe('killed by SIGKILL (signal 9)');
    expect(describeExitStatus(1)).toBe('exited with status 1');
    const end = { exitStatus: 0, shutdownCause: null, requested: null, logTail: null } as const;
    expect(describeGuestEnd({ ...end, shutdownCause: 'guest-shutdown' })).toBe('the guest powered off');
    expect(describeGuestEnd({ ...end, shutdownCause: 'guest-shutdown', requested: 'stop' })).toBe('stopped by dwcp: the guest powered off');
    expect(describeGuestEnd({ ...end, shutdownCause: 'host-qmp-quit', requested: 'terminate' })).toBe('terminated by dwcp: quit through QMP');
    expect(describeGuestEnd({ ...end, exitStatus: 137 })).toBe('QEMU killed by SIGKILL (signal 9)');
    expect(describeGuestEnd({ ...end, exitStatus: 1, logTail: 'qemu: could not load kernel' })).toBe('QEMU exited with status 1: qemu: could not load kernel');
    expect(describeGuestEnd({ ...end, exitStatus: null })).toMatch(/^QEMU ended without a shutdown event and without an exit status/);
  });

  it('maps QEMU run statuses to instance states', () => {
    expect(stateOfRunStatus('running')).toBe('running');
    expect(stateOfRunStatus('inmigrate')).toBe('pending');
    expect(stateOfRunStatus('shutdown')).toBe('stopping');
    expect(stateOfRunStatus('paused')).toBe('running');
  });

  it('checks vCPUs and memory of running guests, disks of every guest, and the filesystem', () => {
    const GIB = 1024 ** 3;
    const q = {
      vm: 'VM web1 (qemu.small)',
      want: { vcpus: 2, memoryMiB: 1024, diskBytes: 10 * GIB },
      newDisk: true,
      running: [{ vcpus: 2, memoryMiB: 1024, diskBytes: GIB }],
      disks: [GIB, 5 * GIB],
      capacity: { vcpus: 4, memoryMiB: 4096, diskBytes: 20 * GIB },
      filesystemFreeBytes: 100 * GIB,
    };
    expect(capacityProblem(q)).toBeNull();
    expect(capacityProblem({ ...q, want: { ...q.want, vcpus: 3 } })).toBe('not enough capacity on this host for VM web1 (qemu.small) (3 vCPU, 1024 MiB, 10 GiB disk): would use 5/4 vCPUs and 2048/4096 MiB');
    expect(capacityProblem({ ...q, disks: [GIB, 10 * GIB] })).toBe('not enough disk capacity on this host for VM web1 (qemu.small) (2 vCPU, 1024 MiB, 10 GiB disk): disks would total 21 GiB of the 20 GiB declared');
    expect(capacityProblem({ ...q, disks: [GIB, 10 * GIB], newDisk: false })).toBeNull();
    expect(capacityProblem({ ...q, filesystemFreeBytes: 4.5 * GIB })).toBe('VM web1 (qemu.small): its 10 GiB disk does not fit the filesystem of the qemu data directory (4.5 GiB free)');
  });
});

describe('qemu config entry', () => {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-qemu-config-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  let files = 0;
  const resolve = (clouds: string) => {
    const path = join(dir, `c${files++}.yaml`);
    writeFileSync(path, `federation: f\nnode: {name: n1, region: r1, provider: onprem}\n${clouds}`);
    return resolveConfig({ configPath: path, env: {} });
  };

  it('fills its defaults and declares its capacity and prices to the fleet', () => {
    const config = resolve('clouds:\n  providers:\n    - kind: qemu\n      capacity: {vcpus: 8, memoryGiB: 16, diskGiB: 200}\n      pricePerVcpuHour: 0.01\n      types: {tiny: {vcpus: 1, memoryMiB: 256}}\n');
    const [entry] = config.clouds.providers;
    expect(entry).toMatchObject({ kind: 'qemu', name: 'qemu', region: 'onprem', binary: 'qemu-system-x86_64', qemuImg: 'qemu-img', accel: 'auto', kvmProbeTimeoutMs: 10_000, types: { tiny: { vcpus: 1, memoryMiB: 256, diskGiB: 10 } }, stopTimeoutMs: 30_000 });
    const declared = regionDeclaration({ node: config.node, providers: config.clouds.providers }, { types: () => [], quote: () => ({ hourly: 0 }) as never });
    expect(declared.providers).toEqual([{ name: 'qemu', kind: 'qemu', capacity: { vcpus: 8, memoryBytes: 16 * 1024 ** 3, diskBytes: 200 * 1024 ** 3 }, prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0.003 } }]);
  });

  it('refuses a second qemu provider and bad fields, naming them', () => {
    let problems: string[] = [];
    try {
      resolve('clouds:\n  providers:\n    - kind: qemu\n    - kind: qemu\n      name: other\n      accel: fast\n');
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      problems = (err as ConfigError).problems;
    }
    expect(problems.join('\n')).toMatch(/clouds\.providers\[1\]\.accel/);
    try {
      resolve('clouds:\n  providers:\n    - kind: qemu\n    - kind: qemu\n      name: other\n');
    } catch (err) {
      problems = (err as ConfigError).problems;
    }
    expect(problems).toEqual([expect.stringContaining('clouds.providers[1].kind: "qemu" is given twice (providers[0] is the qemu provider already)')]);
  });
});
