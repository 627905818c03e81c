/**
 * dwcpctl: the pure table/JSON rendering against fixtures, then the real
 * binary as a child process against a real admin server on a temp socket
 * (exit codes, one-line errors, flags before and after the command).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MemberInfo, StatusResponse } from '../../src/admin/schema.ts';
import { startAdminServer, toStatusResponse, type AdminServer } from '../../src/admin/server.ts';
import {
  formatDuration,
  formatJson,
  formatMembers,
  formatRtt,
  formatStatus,
  renderTable,
  shortPeerId,
} from '../../src/cli/format.ts';
import { main } from '../../src/cli/main.ts';
import { VERSION } from '../../src/daemon/version.ts';
import type { NodeStatus } from '../../src/federation/status.ts';
import { BETA, GAMMA, NODE_STATUS } from '../support/status-fixture.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics } from '../../src/metrics/metrics.ts';

const NODE: NodeStatus = {
  ...NODE_STATUS,
  listenAddrs: ['/ip4/10.0.0.1/tcp/4777', '/ip6/::1/tcp/4777'],
  uptimeSeconds: 93784.9,
  members: [
    BETA,
    { ...GAMMA, name: 'gamma-long-name', region: 'eu', rttMs: 0.4231, phi: 0.43, health: 'alive' },
    { ...GAMMA, name: 'delta', peerId: 'shortid', region: 'ap-south', rttMs: 123.456, linkMode: 'hybrid', phi: 12.345, health: 'suspected' },
  ],
};

const STATUS: StatusResponse = toStatusResponse(NODE);
const MEMBER_KEYS = ['name', 'peer_id', 'region', 'provider', 'trust', 'addrs', 'connected', 'rtt_ms', 'link_mode', 'last_seen', 'last_error', 'phi', 'health'];
const STATUS_KEYS = ['name', 'peer_id', 'region', 'provider', 'trust', 'federation', 'version', 'listen_addrs', 'started_at', 'uptime_seconds', 'members', 'scopes'];

const MEMBERS_TABLE = [
  'NAME             PEER                   REGION     TRUST      CONNECTED  RTT      LINK        HEALTH     PHI',
  'beta             12D3KooWZyXw...zyxwvu  us-east-1  untrusted  no         -        internet    unknown    -',
  'gamma-long-name  12D3KooWGamm...Gamma1  eu         trusted    yes        0.42 ms  datacenter  alive      0.4',
  'delta            shortid                ap-south   trusted    yes        123 ms   hybrid      suspected  12.3',
  '',
].join('\n');

describe('formatting', () => {
  it('renders the members table aligned, with "-" for an unknown RTT or phi', () => {
    expect(formatMembers(STATUS.members)).toBe(MEMBERS_TABLE);
  });

  it('renders status as a header block, then the members table', () => {
    expect(formatStatus(STATUS)).toBe(
      [
        'Node:        alpha',
        'Peer ID:     12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef',
        'Region:      eu-west',
        'Provider:    onprem',
        'Trust:       trusted',
        'Federation:  acme',
        'Version:     0.1.0',
        'Listen:      /ip4/10.0.0.1/tcp/4777',
        '             /ip6/::1/tcp/4777',
        'Uptime:      1d 2h 3m 4s (since 2026-01-02T03:04:05.000Z)',
        '',
        'SCOPE       PROTOCOL  REPLICAS',
        'datacenter  raft      3',
        'federation  raft      3',
        '',
        MEMBERS_TABLE,
      ].join('\n'),
    );
  });

  it('says so when there are no members or no listen addresses', () => {
    expect(formatMembers([])).toBe('(no members configured)\n');
    expect(formatStatus({ ...STATUS, listen_addrs: [], members: [] })).toContain('Listen:      -\n');
  });

  it('leaves no trailing whitespace in tables', () => {
    const out = renderTable(['A', 'LONGER'], [['xxxxx', ''], ['y', 'z']]);
    expect(out).toBe('A      LONGER\nxxxxx\ny      z\n');
  });

  it('shortens peer IDs but keeps short ones whole', () => {
    expect(shortPeerId('12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef')).toBe('12D3KooWAbCd...abcdef');
    expect(shortPeerId('shortid')).toBe('shortid');
  });

  it('formats RTT and durations', () => {
    expect(formatRtt(null)).toBe('-');
    expect(formatRtt(0)).toBe('0.00 ms');
    expect(formatRtt(12.34)).toBe('12.3 ms');
    expect(formatDuration(0)).toBe('0s');
    expect(formatDuration(59.9)).toBe('59s');
    expect(formatDuration(3600)).toBe('1h 0m 0s');
    expect(formatDuration(90061)).toBe('1d 1h 1m 1s');
  });

  it('emits JSON with the proto field names, null for unknown RTT and booleans for connected', () => {
    const parsed = JSON.parse(formatJson(STATUS)) as StatusResponse;
    expect(Object.keys(parsed)).toEqual(STATUS_KEYS);
    for (const m of parsed.members) expect(Object.keys(m)).toEqual(MEMBER_KEYS);
    const [beta, gamma] = parsed.members as [MemberInfo, MemberInfo];
    expect(beta.rtt_ms).toBeNull();
    expect(beta.connected).toBe(false);
    expect(beta.last_seen).toBeNull();
    expect(gamma.rtt_ms).toBe(0.4231);
    expect(gamma.connected).toBe(true);
  });
});

const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

async function dwcpctl(args: string[], opts: { env?: NodeJS.ProcessEnv; uid?: number } = {}): Promise<CliRun> {
  const env: NodeJS.ProcessEnv = { ...process.env, DWCP_SOCKET: '', DWCP_ADMIN_SOCKET: '', ...opts.env };
  const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'], ...(opts.uid === undefined ? {} : { uid: opts.uid }) });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

/** main() in this process, for the argument checks that need no daemon and no fresh process. */
async function mainInProcess(args: string[]): Promise<CliRun> {
  let stdout = '';
  let stderr = '';
  const code = await main(args, { DWCP_SOCKET: '' }, { stdout: (t) => (stdout += t), stderr: (t) => (stderr += t) });
  return { code, stdout, stderr };
}

describe('dwcpctl argument checks', () => {
  it.each([
    [['--timeout', 'soon', 'status'], /^dwcpctl: --timeout: "soon" is not a duration from 1 ms to 3600000 ms \(e\.g\. 500ms, 2s, 1m, or milliseconds\)$/],
    [['status', '--timeout', '0'], /^dwcpctl: --timeout: "0" is not/],
    [['status', '--timeout', '2d'], /^dwcpctl: --timeout: "2d" is not/],
    [['status', '--timeout', '0.5ms'], /^dwcpctl: --timeout: "0.5ms" is not/],
    [['status', '--timeout', '2h'], /^dwcpctl: --timeout: "2h" is not/],
    [['status', '--timeout'], /^dwcpctl: flag --timeout needs a value$/],
    [['members', 'beta'], /^dwcpctl: members takes no arguments \(got "beta"\)$/],
    [['--socket', '', 'status'], /^dwcpctl: --socket needs a path$/],
    [['--json'], /^dwcpctl: no command given$/],
    [['nope', '--frob'], /^dwcpctl: unknown command "nope"$/],
  ])('%j is a usage error (exit 2)', async (args, firstLine) => {
    const run = await mainInProcess(args);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe('');
    const [line, usage] = run.stderr.split('\n');
    expect(line).toMatch(firstLine);
    expect(usage).toMatch(/^usage: dwcpctl /);
  });

  it('accepts --help anywhere, even with a command', async () => {
    const run = await mainInProcess(['status', '-h']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^usage: dwcpctl /);
  });
});

describe('dwcpctl end to end', () => {
  let dir: string;
  let socket: string;
  let server: AdminServer;

  beforeAll(async () => {
    const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
    if (major < 22 || (major === 22 && minor < 18)) {
      throw new Error(`dwcpctl runs as TypeScript and needs Node >= 22.18, but vitest runs on ${process.version}: use npm test, or put node_modules/.bin first on PATH`);
    }
    dir = await mkdtemp(join(tmpdir(), 'dwcp-cli-'));
    socket = join(dir, 'admin.sock');
    server = await startAdminServer({ socketPath: socket, status: () => NODE, logger: createLogger('silent'), metrics: createMetrics({ defaultMetrics: false }) });
  });

  afterAll(async () => {
    await server?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('status --json prints the status with proto field names', async () => {
    const run = await dwcpctl(['--socket', socket, 'status', '--json']);
    expect(run).toMatchObject({ code: 0, stderr: '' });
    const parsed = JSON.parse(run.stdout) as StatusResponse;
    expect(parsed).toEqual(STATUS);
    expect(Object.keys(parsed)).toEqual(STATUS_KEYS);
    expect(parsed.members[0]?.rtt_ms).toBeNull();
    expect(parsed.members[1]?.connected).toBe(true);
  });

  it('takes global flags after the command and prints a table by default', async () => {
    const run = await dwcpctl(['members', '--socket', socket, '--timeout', '3000']);
    expect(run).toEqual({ code: 0, stdout: MEMBERS_TABLE, stderr: '' });
  });

  it('finds the socket through DWCP_SOCKET', async () => {
    const run = await dwcpctl(['status'], { env: { DWCP_SOCKET: socket } });
    expect(run.code).toBe(0);
    expect(run.stdout).toBe(formatStatus(STATUS));
  });

  it('fails with one line naming a missing socket, exit 1', async () => {
    const missing = join(dir, 'nope.sock');
    const run = await dwcpctl(['status', '--socket', missing]);
    expect(run).toEqual({
      code: 1,
      stdout: '',
      stderr: `dwcpctl: no daemon socket at ${missing} (is dwcpd running? set --socket or DWCP_SOCKET)\n`,
    });
  });

  it.runIf(process.getuid?.() === 0)('fails with one line when the caller may not use the socket', async () => {
    const run = await dwcpctl(['status', '--socket', socket], { uid: 65534 });
    expect(run).toEqual({ code: 1, stdout: '', stderr: `dwcpctl: permission denied on admin socket ${socket} (run as the daemon's user or root)\n` });
  });

  it('exits 2 with a usage hint on an unknown command or flag', async () => {
    const unknownCommand = await dwcpctl(['frobnicate', '--socket', socket]);
    expect(unknownCommand.code).toBe(2);
    expect(unknownCommand.stdout).toBe('');
    expect(unknownCommand.stderr.split('\n')[0]).toBe('dwcpctl: unknown command "frobnicate"');
    expect(unknownCommand.stderr).toContain('usage: dwcpctl');

    const unknownFlag = await dwcpctl(['status', '--frob']);
    expect(unknownFlag.code).toBe(2);
    expect(unknownFlag.stderr.split('\n')[0]).toBe('dwcpctl: unknown flag --frob');
    expect(unknownFlag.stdout).toBe('');
  });

  it('prints help and version, exit 0', async () => {
    const help = await dwcpctl(['--help']);
    expect(help.code).toBe(0);
    for (const command of ['status', 'members', 'version', 'help']) expect(help.stdout).toMatch(new RegExp(`^  ${command}( |$)`, 'm'));
    // Wrapped for a terminal: no line past 100 columns (socket paths aside, which are never cut).
    for (const line of help.stdout.split('\n')) if (!line.includes('/')) expect(line.length, line).toBeLessThanOrEqual(100);
    // The global flags' texts start in one column.
    expect(help.stdout).toContain('\n  --json          print JSON');
    expect(help.stdout).toContain('\n  -h, --help      show this help');
    expect((await dwcpctl(['help'])).stdout).toBe(help.stdout);
    expect(await dwcpctl(['version'])).toEqual({ code: 0, stdout: `dwcpctl ${VERSION}\n`, stderr: '' });
  });
});

describe('durationFlag', () => {
  it('reads units and plain milliseconds, and refuses what is not a whole millisecond in range', async () => {
    const { durationFlag } = await import('../../src/cli/command.ts');
    expect(durationFlag('t', '500ms', 1, 10_000)).toBe(500);
    expect(durationFlag('t', '2s', 1, 10_000)).toBe(2000);
    expect(durationFlag('t', '1.5s', 1, 10_000)).toBe(1500);
    expect(durationFlag('t', '250', 1, 10_000)).toBe(250);
    expect(durationFlag('t', '1m', 1, 3_600_000)).toBe(60_000);
    for (const bad of ['', 's', '-1s', '1.0001s', '11s', '1 s', '0']) expect(() => durationFlag('t', bad, 1, 10_000), bad).toThrow(/^--t: /);
  });
});
