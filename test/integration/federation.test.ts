/**
 * The local federation launcher (scripts/federation.ts) with real daemons:
 * `up` brings N processes to "every member connected" (the done
 * criterion: within 10 s), `down` stops them all gracefully and leaves no
 * socket behind; plus the plan (names, trust, ports, generated configs) and
 * the refusals, checked without starting anything where possible.
 *
 * The nodes differ (prices, capacity, jurisdiction, labels: the built-in
 * spread, a plan file, --label) so that after `up` the fleet's placement has
 * real choices: `place` explains all three regions and `vm create
 * --placement auto` lands on the cheapest.
 *
 * Every directory a test launches into is brought `down` in afterAll, so a
 * failing assertion never leaves daemons behind.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, realpath, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { processesNaming } from '../../src/cloud/qemu/procfs.ts';
import { resolveConfig } from '../../src/config/load.ts';
import { FEDERATION_ID, nodeConfig, parseLabelFlag, parsePlanFile, planFederation } from '../../scripts/federation-plan.ts';
import { runCtl } from './harness.ts';

const LAUNCHER = fileURLToPath(new URL('../../scripts/federation.ts', import.meta.url));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function launcher(args: string[]): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [LAUNCHER, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const dirs: string[] = [];
async function federationDir(): Promise<string> {
  const dir = await realpath(await mkdtemp(join(tmpdir(), 'dwcp-fed-')));
  dirs.push(dir);
  return dir;
}

afterAll(async () => {
  await Promise.all(
    dirs.map(async (dir) => {
      await launcher(['down', '--dir', dir]);
      await rm(dir, { recursive: true, force: true });
    }),
  );
}, 30_000);

/** Holds port on 127.0.0.1; connections are dropped at once, or close() would wait for the daemons' dials to end. */
function listen(port: number): Promise<Server | undefined> {
  return new Promise((resolve) => {
    const server = createServer((socket) => socket.destroy());
    server.once('error', () => resolve(undefined));
    server.listen({ host: '127.0.0.1', port, exclusive: true }, () => resolve(server));
  });
}

async function portsFree(ports: number[]): Promise<boolean> {
  const servers = await Promise.all(ports.map(listen));
  await Promise.all(servers.map((s) => s && new Promise((r) => s.close(r))));
  return servers.every((s) => s !== undefined);
}

/** A base port P with P..P+n and P+1000..P+1000+n free on 127.0.0.1 (the launcher's fixed layout). */
async function freeBasePort(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 40_000);
    const ports = Array.from({ length: n + 1 }, (_, i) => [base + i, base + 1000 + i]).flat();
    if (await portsFree(ports)) return base;
  }
  throw new Error(`no free range of ${n + 1} ports found`);
}

/** Gone, or exited and waiting to be reaped: PID 1 of a container may never reap the orphaned daemons. */
function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

async function peerIds(n: number): Promise<string[]> {
  return Promise.all(Array.from({ length: n }, async () => peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()));
}

describe('federation plan', () => {
  it('names, trusts, places and numbers --nodes 4 --untrusted 2', () => {
    const plan = planFederation({ nodes: 4, untrusted: 2, dir: '/srv/fed', basePort: 4800 });
    expect(plan.map((n) => [n.name, n.provider, n.trust, n.region])).toEqual([
      ['dc1', 'onprem', 'trusted', 'dc1'],
      ['dc2', 'onprem', 'trusted', 'dc2'],
      ['cloud1', 'aws', 'untrusted', 'aws-us-east-1'],
      ['cloud2', 'gcp', 'untrusted', 'gcp-us-central1'],
    ]);
    expect(plan.map((n) => n.listen)).toEqual([4800, 4801, 4802, 4803].map((p) => `/ip4/127.0.0.1/tcp/${p}`));
    expect(plan.map((n) => n.metricsUrl)).toEqual([5800, 5801, 5802, 5803].map((p) => `http://127.0.0.1:${p}/metrics`));
    expect(plan[2]).toMatchObject({ dir: '/srv/fed/cloud1', adminSocket: '/srv/fed/cloud1/admin.sock', pidPath: '/srv/fed/cloud1/dwcpd.pid' });
  });

  it('cycles aws, gcp, azure, oracle and never repeats a region', () => {
    const plan = planFederation({ nodes: 30, untrusted: 30, dir: '/srv/fed', basePort: 4800 });
    expect(plan.slice(0, 5).map((n) => n.provider)).toEqual(['aws', 'gcp', 'azure', 'oracle', 'aws']);
    expect(plan[4]!.region).toBe('aws-eu-west-1');
    expect(new Set(plan.map((n) => n.region)).size).toBe(30);
  });

  it('writes configs the daemon accepts, each listing every other node with its trust', async () => {
    const plan = planFederation({ nodes: 4, untrusted: 2, dir: '/srv/fed', basePort: 4800 });
    const ids = await peerIds(4);
    const dir = await federationDir();
    for (const [i, node] of plan.entries()) {
      const configPath = join(dir, `${node.name}.yaml`);
      await writeFile(configPath, stringify(nodeConfig(plan, ids, i)));
      const config = resolveConfig({ configPath, env: {} });
      expect(config).toMatchObject({
        federation: FEDERATION_ID,
        node: { name: node.name, provider: node.provider, trust: node.trust },
        listen: [node.listen],
        metricsListen: node.metricsListen,
        adminSocket: node.adminSocket,
        dataDir: node.dir,
        logLevel: 'info',
      });
      expect(config.members.map((m) => [m.name, m.peerId, m.provider, m.trust, m.addrs])).toEqual(
        plan.flatMap((m, j) => (j === i ? [] : [[m.name, ids[j], m.provider, m.trust, [m.listen]]])),
      );
    }
  });

  it('--provider qemu gives the trusted nodes a qemu provider the daemon accepts (with their capacity and prices); cloud nodes still simulate', async () => {
    const plan = planFederation({ nodes: 4, untrusted: 2, dir: '/srv/fed', basePort: 4800, onPrem: { kind: 'qemu', accel: 'tcg', imageDir: '/srv/images' } });
    const ids = await peerIds(4);
    const dir = await federationDir();
    const kinds = [];
    for (const [i, node] of plan.entries()) {
      const configPath = join(dir, `${node.name}-qemu.yaml`);
      await writeFile(configPath, stringify(nodeConfig(plan, ids, i)));
      const provider = resolveConfig({ configPath, env: {} }).clouds.providers[0]!;
      kinds.push(provider.kind);
      if (provider.kind === 'qemu') {
        expect(provider).toMatchObject({ accel: 'tcg', imageDir: '/srv/images', pricePerVcpuHour: node.facts.pricePerVcpuHour, capacity: { vcpus: node.facts.capacity.vcpus } });
      }
    }
    expect(kinds).toEqual(['qemu', 'qemu', 'local', 'local']);
  });

  it('spreads prices, capacity, jurisdiction and labels; a plan file replaces fields per node, --label adds labels', () => {
    const plan = planFederation({ nodes: 3, untrusted: 0, dir: '/srv/fed', basePort: 4800 });
    expect(plan.map((n) => [n.facts.pricePerVcpuHour, n.facts.capacity.vcpus, n.facts.jurisdiction, n.facts.labels.tier])).toEqual([
      [0.01, 4, 'eu', 'bronze'],
      [0.02, 8, 'us', 'silver'],
      [0.03, 12, 'eu', 'gold'],
    ]);
    const planFile = parsePlanFile('dc2: {jurisdiction: null, labels: {gpu: "yes"}, capacity: {vcpus: 2, memoryMiB: 2048}, pricePerVcpuHour: 0.5}\n', 'fed.yaml');
    const custom = planFederation({ nodes: 3, untrusted: 0, dir: '/srv/fed', basePort: 4800, planFile, labels: [parseLabelFlag('team=web'), parseLabelFlag('dc2:tier=spare')] });
    expect(custom[1]!.facts).toEqual({ labels: { gpu: 'yes', team: 'web', tier: 'spare' }, compliance: [], capacity: { vcpus: 2, memoryGiB: 2, diskGiB: 1000 }, pricePerVcpuHour: 0.5, pricePerGiBHour: 0.002 });
    expect(custom[0]!.facts.labels).toEqual({ tier: 'bronze', team: 'web' });
    const config = nodeConfig(custom, ['a', 'b', 'c'], 1);
    expect(config.node).not.toHaveProperty('jurisdiction');
    expect(config.clouds.providers).toEqual([{ kind: 'local', capacity: { vcpus: 2, memoryGiB: 2, diskGiB: 1000 }, pricePerVcpuHour: 0.5, pricePerGiBHour: 0.002 }]);

    expect(() => parsePlanFile('dc1: {capacity: {vcpus: 0, memoryGiB: 1}, colour: red}', 'fed.yaml')).toThrow(
      '--plan fed.yaml: dc1.capacity.vcpus: 0 is too small: expected at least 1; dc1.colour: unknown key (not part of the schema)',
    );
    expect(() => parsePlanFile('dc1: {pricePerVcpuHour: cheap}', 'fed.yaml')).toThrow('--plan fed.yaml: dc1.pricePerVcpuHour: "cheap" is not a number');
    expect(() => planFederation({ nodes: 2, untrusted: 0, dir: '/srv/fed', basePort: 4800, planFile: parsePlanFile('dc3: {}', 'fed.yaml'), planSource: 'fed.yaml' })).toThrow(
      '--plan fed.yaml: dc3: no such node in this federation (dc1, dc2)',
    );
    expect(() => parseLabelFlag('Tier=x')).toThrow('--label "Tier=x": "Tier" is not a label key');
    expect(() => parseLabelFlag('tier')).toThrow('--label "tier": expected [NODE:]KEY=VALUE');
  });

  it('refuses impossible counts, ports and socket paths, naming the flag and the limit', () => {
    const ok = { nodes: 3, untrusted: 0, dir: '/srv/fed', basePort: 4800 };
    expect(() => planFederation({ ...ok, untrusted: 4 })).toThrow('--untrusted: 4 is not an integer from 0 to 3');
    expect(() => planFederation({ ...ok, nodes: 0 })).toThrow('--nodes: 0 is not an integer from 1 to 1000');
    expect(() => planFederation({ ...ok, basePort: 64_535 })).toThrow(/--base-port: 64535 puts the last metrics port at 65537/);
    expect(() => planFederation({ ...ok, dir: 'fed' })).toThrow(/must be an absolute path/);
    expect(() => planFederation({ ...ok, untrusted: 1 })).toThrow('--untrusted 1 with --nodes 3: untrusted members make the federation scope run PBFT, which needs at least 4 members (n >= 3f + 1); use --nodes 4 or more');
    expect(() => planFederation({ ...ok, dir: `/${'d'.repeat(100)}` })).toThrow(/over the 10[37]-byte Unix socket path limit/);
  });
});

describe('federation launcher', () => {
  // Nine launcher processes start at once: at load 16 that took over 10 s.
  it('answers bad usage with exit 2 and the usage text, starting nothing', { timeout: 60_000 }, async () => {
    const dir = await federationDir();
    const badPlan = join(dir, 'plan.yaml');
    await writeFile(badPlan, 'dc1: {jurisdiction: EU}\n');
    const runs = await Promise.all([
      launcher([]),
      launcher(['up', '--dir', dir]),
      launcher(['up', '--nodes', '3', '--untrusted', '4', '--dir', join(dir, 'fed')]),
      launcher(['up', '--nodes', 'three', '--dir', dir]),
      launcher(['up', '--nodes', '3', '--dir', join(dir, 'fed'), '--plan', badPlan]),
      launcher(['up', '--nodes', '3', '--dir', join(dir, 'fed'), '--label', 'dc4:tier=x']),
      launcher(['up', '--nodes', '3', '--dir', join(dir, 'fed'), '--provider', 'xen']),
      launcher(['up', '--nodes', '3', '--dir', join(dir, 'fed'), '--accel', 'tcg']),
      launcher(['up', '--nodes', '3', '--dir', join(dir, 'fed'), '--provider', 'qemu', '--accel', 'hvf']),
    ]);
    expect(runs.map((r) => r.code)).toEqual([2, 2, 2, 2, 2, 2, 2, 2, 2]);
    expect(runs.map((r) => r.stderr.split('\n')[0])).toEqual([
      'federation: a command is required',
      'federation: --nodes is required',
      'federation: --untrusted: 4 is not an integer from 0 to 3',
      'federation: --nodes: "three" is not a non-negative integer',
      `federation: --plan ${badPlan}: dc1.jurisdiction: "EU" is not a lowercase word (a-z, 0-9, "-", at most 32 characters)`,
      'federation: --label dc4:tier=x: dc4: no such node in this federation (dc1, dc2, dc3)',
      'federation: --provider: "xen" is not local or qemu',
      'federation: --accel: only with --provider qemu',
      'federation: --accel: "hvf" is not auto, kvm or tcg',
    ]);
    for (const r of runs) expect(r.stderr).toContain('usage: npm run federation -- up --nodes N');
    expect(existsSync(join(dir, 'dc1'))).toBe(false);
    expect(existsSync(join(dir, 'fed'))).toBe(false);
  });

  it('brings 3 nodes to all-members-connected within 10 s, places on the cheapest, refuses a second up, and stops them all', { timeout: 45_000 }, async () => {
    const dir = await federationDir();
    const basePort = await freeBasePort(3);
    const started = Date.now();
    const up = await launcher(['up', '--nodes', '3', '--dir', dir, '--base-port', String(basePort), '--timeout-ms', '10000']);
    expect(up.stderr).toBe('');
    expect(up.code).toBe(0);
    const nodes = JSON.parse(up.stdout) as { name: string; socket: string; metrics: string; peerId: string; pid: number; fleet: { pricePerVcpuHour: number } }[];
    expect(nodes.map((n) => n.name)).toEqual(['dc1', 'dc2', 'dc3']);
    expect(new Set(nodes.map((n) => n.peerId)).size).toBe(3);
    for (const n of nodes) {
      const body = await (await fetch(n.metrics)).text();
      expect(body).toMatch(/^dwcp_members_connected 2$/m);
      expect(existsSync(n.socket)).toBe(true);
      expect(isRunning(n.pid)).toBe(true);
    }
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(nodes.map((n) => n.fleet.pricePerVcpuHour)).toEqual([0.01, 0.02, 0.03]);

    // Placement has real choices: asked on dc2, three regions at three prices, and the cheapest (dc1) wins.
    const ctl = (...args: string[]) => runCtl(['--socket', nodes[1]!.socket, '--timeout', '20s', ...args]);
    const deadline = Date.now() + 10_000;
    let explained = await ctl('place', 'x', '--cpu', '1', '--memory', '1GiB', '--image', 'base');
    // Each region declares itself once the log has a leader: wait until all three are in the answer.
    while (!/dc3\/local score/.test(explained.stdout) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      explained = await ctl('place', 'x', '--cpu', '1', '--memory', '1GiB', '--image', 'base');
    }
    expect(explained.stdout).toMatch(/^would place on dc1\/local$/m);
    expect(explained.stdout).toMatch(/^ {2}dc1\/local score [\d.]+ \(\$0\.011\/h\)/m);
    expect(explained.stdout).toMatch(/^ {2}dc2\/local score [\d.]+ \(\$0\.022\/h\)/m);
    expect(explained.stdout).toMatch(/^ {2}dc3\/local score [\d.]+ \(\$0\.033\/h\)/m);
    const created = await ctl('vm', 'create', 'web1', '--cpu', '1', '--memory', '1GiB', '--image', 'base', '--placement', 'auto', '--json');
    expect(created.stderr).toBe('');
    expect(JSON.parse(created.stdout)).toMatchObject({ vm: 'web1', region: 'dc1', provider: 'local' });

    const status = await launcher(['status', '--dir', dir]);
    expect(JSON.parse(status.stdout)).toEqual(
      nodes.map((n) => ({ name: n.name, pid: n.pid, running: true, socket: n.socket, metrics: n.metrics, membersConfigured: 2, membersConnected: 2 })),
    );

    const again = await launcher(['up', '--nodes', '3', '--dir', dir, '--base-port', String(basePort)]);
    expect(again.code).toBe(1);
    expect(again.stderr).toMatch(/already has a running federation \(dc1 pid \d+, dc2 pid \d+, dc3 pid \d+\); run "npm run federation -- down --dir /);

    const down = await launcher(['down', '--dir', dir]);
    expect(down.code).toBe(0);
    expect(JSON.parse(down.stdout)).toEqual(nodes.map((n) => ({ name: n.name, pid: n.pid, stopped: 'graceful' })));
    for (const n of nodes) {
      expect(isRunning(n.pid)).toBe(false);
      expect(existsSync(n.socket)).toBe(false);
      expect(existsSync(join(dir, n.name, 'dwcpd.pid'))).toBe(false);
    }
  });

  it('--provider qemu: a trusted node runs a real guest (the test guest built into the federation directory), and down stops it with the daemon', { timeout: 240_000 }, async () => {
    const dir = await federationDir();
    const basePort = await freeBasePort(1);
    const up = await launcher(['up', '--nodes', '1', '--dir', dir, '--base-port', String(basePort), '--timeout-ms', '120000', '--provider', 'qemu', '--accel', 'tcg']);
    expect(up.stderr).toBe('');
    const [node] = JSON.parse(up.stdout) as { socket: string; pid: number }[];
    expect(existsSync(join(dir, 'images', 'tiny', 'image.json'))).toBe(true);
    try {
      const ctl = (...args: string[]) => runCtl(['--socket', node!.socket, '--timeout', '60s', ...args]);
      const created = await ctl('vm', 'create', 'g1', '--cpu', '1', '--memory', '256MiB', '--image', 'tiny', '--placement', 'auto', '--json');
      expect(created.stderr).toBe('');
      expect(JSON.parse(created.stdout)).toMatchObject({ vm: 'g1', region: 'dc1', provider: 'qemu' });
      // The guest boots under TCG (11 s quiet, 25 s loaded here) and then ticks on its serial console.
      const deadline = Date.now() + 180_000;
      let serial = '';
      // (--tail is in bytes; the serial console ends its lines with CR LF.)
      const ticking = /^tick \d+ \d+\r?$/m;
      while (!ticking.test(serial) && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 1_000));
        serial = (await ctl('vm', 'console', 'g1', '--tail', '400')).stdout;
      }
      expect(serial).toMatch(ticking);
    } finally {
      const down = await launcher(['down', '--dir', dir]);
      expect(JSON.parse(down.stdout)).toEqual([{ name: 'dc1', pid: node!.pid, stopped: 'graceful', guestsStopped: 1 }]);
    }
    expect(processesNaming(dir).map((p) => p.cmdline)).toEqual([]);
  });

  it('reports a daemon that cannot bind its port, with its log line, and leaves the rest for down', { timeout: 20_000 }, async () => {
    const dir = await federationDir();
    const basePort = await freeBasePort(2);
    const squatter = await listen(basePort + 1);
    expect(squatter).toBeDefined();
    try {
      const up = await launcher(['up', '--nodes', '2', '--dir', dir, '--base-port', String(basePort), '--timeout-ms', '10000']);
      expect(up.code).toBe(1);
      expect(up.stdout).toBe('');
      const [reason] = up.stderr.split('\n');
      expect(reason).toMatch(/^federation: dc2 \(pid \d+\) stopped with exit code 1 before the federation connected: .*EADDRINUSE/);
      expect(reason).toContain(`127.0.0.1:${basePort + 1}`);
      expect(reason).toContain(`run "npm run federation -- down --dir ${dir}"`);
      expect(up.stderr).toContain(`last lines of ${join(dir, 'dc2', 'dwcpd.log')}`);

      const down = await launcher(['down', '--dir', dir]);
      expect(JSON.parse(down.stdout)).toEqual([
        { name: 'dc1', pid: expect.any(Number), stopped: 'graceful' },
        { name: 'dc2', pid: expect.any(Number), stopped: 'not running' },
      ]);
    } finally {
      await new Promise((r) => squatter?.close(r));
    }
  });
});

describe('federation launcher, pid files', () => {
  it('never signals a pid that no longer runs the node\'s daemon', { timeout: 10_000 }, async () => {
    const dir = await federationDir();
    const plan = planFederation({ nodes: 1, untrusted: 0, dir, basePort: 4800 });
    await mkdir(plan[0]!.dir);
    await writeFile(plan[0]!.configPath, stringify(nodeConfig(plan, await peerIds(1), 0)));
    // A live process that is not dwcpd, as after the daemon died and its pid was reused.
    const stranger = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'ignore' });
    const exited = new Promise((r) => stranger.once('exit', r));
    try {
      await writeFile(plan[0]!.pidPath, `${stranger.pid}\n`);
      const down = await launcher(['down', '--dir', dir]);
      expect(JSON.parse(down.stdout)).toEqual([{ name: 'dc1', pid: stranger.pid, stopped: 'not running' }]);
      expect(stranger.exitCode).toBe(null);
      expect(isRunning(stranger.pid!)).toBe(true);
      expect(existsSync(plan[0]!.pidPath)).toBe(false);
    } finally {
      stranger.kill();
      await exited;
    }
  });
});
