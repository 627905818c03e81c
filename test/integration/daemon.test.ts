/**
 * Real dwcpd processes: start-up, the admin socket, readiness, signals, the
 * member gater, hello and SIGHUP reloads. Each test waits on log lines the
 * daemon writes when the awaited thing happens, never on a timer.
 */
import { spawn } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, describe, expect, it } from 'vitest';
import { lintMetrics } from '../support/promtool.ts';
import {
  baseConfig,
  DaemonProcess,
  metricValue,
  prepareNode,
  ROOT,
  runCtl,
  runDwcpd,
  startDaemon,
  tempRoot,
  writeConfig,
  type NodeFiles,
} from './harness.ts';

const running: DaemonProcess[] = [];
const cleanups: (() => Promise<void>)[] = [];

async function start(node: NodeFiles, config: Record<string, unknown> | null, env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
  const d = await startDaemon(node, config, env);
  running.push(d);
  return d;
}

async function root(prefix: string): Promise<string> {
  const r = await tempRoot(prefix);
  cleanups.push(r.remove);
  return r.path;
}

afterEach(async () => {
  await Promise.all(running.splice(0).map((d) => d.stop('SIGKILL')));
  await Promise.all(cleanups.splice(0).map((f) => f()));
});

function connectedTo(name: string) {
  return (l: Record<string, unknown>) => l.msg === 'member connected' && l.member === name;
}

describe('dwcpd process', () => {
  it('serves dwcpctl on a 0600 socket and stops on SIGTERM, removing the socket', async () => {
    const dir = await root('basic');
    const a = await prepareNode(dir, 'a');
    const d = await start(a, baseConfig(a));
    await d.serving();
    expect(statSync(a.socket).mode & 0o777).toBe(0o600);

    const ctl = await runCtl(['--socket', a.socket, 'status', '--json']);
    expect(ctl.code, ctl.stderr).toBe(0);
    const status = JSON.parse(ctl.stdout) as Record<string, unknown>;
    expect(status).toMatchObject({ name: 'a', peer_id: a.peerId, federation: 'test-fed', trust: 'trusted', provider: 'onprem' });
    expect((status.listen_addrs as string[]).length).toBeGreaterThan(0);

    const { code } = await d.stop('SIGTERM');
    expect(code).toBe(0);
    expect(existsSync(a.socket)).toBe(false);
    expect(d.lines.some((l) => l.msg === 'dwcpd stopped')).toBe(true);
  });

  it('runs with no config file on embedded defaults overridden only by environment', async () => {
    const dir = await root('defaults');
    const a = await prepareNode(dir, 'a');
    const d = await start(a, null, {
      DWCP_DATA_DIR: a.dir,
      DWCP_ADMIN_SOCKET: a.socket,
      DWCP_METRICS_LISTEN: '127.0.0.1:0',
      DWCP_LISTEN: '/ip4/127.0.0.1/tcp/0',
    });
    const serving = await d.waitForLog((l) => l.msg === 'dwcpd serving', 'serving');
    expect(serving).toMatchObject({ federation: 'local', config: '(embedded defaults)', peerId: a.peerId, adminSocket: a.socket });
    const ctl = await runCtl(['status', '--json'], { DWCP_SOCKET: a.socket });
    expect(ctl.code, ctl.stderr).toBe(0);
    expect((await fetch(`${String(serving.metrics).replace('/metrics', '/readyz')}`)).status).toBe(200);
  });

  it('tells systemd READY=1 once serving locally, with no peers reachable', async () => {
    const dir = await root('notify');
    const a = await prepareNode(dir, 'a');
    const notifySocket = join(dir, 'notify.sock');
    const listener = spawn('python3', [join(ROOT, 'test/integration/notify-listener.py'), notifySocket], { stdio: ['ignore', 'pipe', 'inherit'] });
    cleanups.push(async () => void listener.kill());
    const lines = createInterface({ input: listener.stdout })[Symbol.asyncIterator]();
    // systemd-notify follows each message with a BARRIER=1 sync message; only the states matter here.
    const messages = {
      async next(): Promise<{ value: string }> {
        for (;;) {
          const { value } = await lines.next();
          if (value !== 'BARRIER=1') return { value: value as string };
        }
      },
    };
    expect((await messages.next()).value).toBe('listening');

    // A member that will never answer: readiness must not wait for it.
    const ghost = await prepareNode(dir, 'ghost');
    const d = await start(
      a,
      baseConfig(a, { members: [{ name: 'ghost', peerId: ghost.peerId, region: 'x', provider: 'onprem', addrs: ['/ip4/127.0.0.1/tcp/9'] }] }),
      { NOTIFY_SOCKET: notifySocket },
    );
    const first = (await messages.next()).value as string;
    expect(first).toMatch(/^READY=1\|STATUS=serving/);
    expect(d.lines.some((l) => l.msg === 'dwcpd serving')).toBe(true);
    // SIGTERM right after READY=1 must already be a graceful stop.
    expect(await d.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    expect((await messages.next()).value).toBe('STOPPING=1');
  });

  it('replaces a stale socket and refuses to start on a live one', async () => {
    const dir = await root('stale');
    const a = await prepareNode(dir, 'a');
    const first = await start(a, baseConfig(a));
    await first.serving();
    await first.stop('SIGKILL');
    expect(existsSync(a.socket)).toBe(true);

    const second = await start(a, baseConfig(a));
    await second.serving();
    expect(second.lines.some((l) => String(l.msg).includes('stale'))).toBe(true);

    const b = await prepareNode(dir, 'b');
    const third = await start(b, baseConfig(b, { adminSocket: a.socket }));
    const { code } = await third.exited;
    expect(code).toBe(1);
    expect(third.stderr.join('\n')).toMatch(/in use/);
    // The live daemon still answers on its socket.
    expect((await runCtl(['--socket', a.socket, 'status'])).code).toBe(0);
  });

  it('exits 78 naming the bad field of an invalid config', async () => {
    const dir = await root('badcfg');
    const a = await prepareNode(dir, 'a');
    await writeConfig(a, baseConfig(a, { members: [{ name: 'b', peerId: 'not-a-peer-id', region: 'r', provider: 'aws', trust: 'maybe' }] }));
    const res = await runDwcpd(['--config', a.configPath]);
    expect(res.code).toBe(78);
    expect(res.stderr).toContain('members[0].trust: "maybe" is not one of trusted|untrusted');
    expect(res.stderr).toContain('members[0].peerId');
  });

  it('connects members both ways, refuses and counts a non-member, admits it after SIGHUP', async () => {
    const dir = await root('mesh');
    const [a, b, c] = await Promise.all(['a', 'b', 'c'].map((n) => prepareNode(dir, n)));
    const member = (n: NodeFiles, addrs: string[] = []) => ({ name: n.name, peerId: n.peerId, region: `r-${n.name}`, provider: 'onprem', addrs });

    // a knows b without an address (b dials a); a does not know c at all. a logs at info until the reload.
    const da = await start(a!, baseConfig(a!, { members: [member(b!)], logLevel: 'info' }));
    const aAddrs = (await da.serving()).listen;
    const db = await start(b!, baseConfig(b!, { members: [member(a!, aAddrs)] }));
    await Promise.all([da.waitForLog(connectedTo('b'), 'b connected'), db.waitForLog(connectedTo('a'), 'a connected')]);

    const dc = await start(c!, baseConfig(c!, { members: [member(a!, aAddrs)] }));
    await dc.serving();
    await da.waitForLog((l) => l.reason === 'not_member' && l.peerId === c!.peerId, 'refusal of c');
    const scraped = await da.scrape();
    expect(metricValue(scraped, 'dwcp_connections_refused_total', { reason: 'not_member' })).toBeGreaterThanOrEqual(1);
    expect(metricValue(scraped, 'dwcp_members_connected')).toBe(1);

    const status = JSON.parse((await runCtl(['--socket', a!.socket, 'status', '--json'])).stdout) as { members: Record<string, unknown>[] };
    expect(status.members).toEqual([expect.objectContaining({ name: 'b', peer_id: b!.peerId, connected: true, link_mode: 'datacenter', trust: 'trusted' })]);

    // An invalid file on SIGHUP is refused and the running configuration kept.
    await writeConfig(a!, baseConfig(a!, { members: [member(b!), { ...member(c!), trust: 'maybe' }] }));
    da.child.kill('SIGHUP');
    const refused = await da.waitForLog((l) => String(l.msg).startsWith('reload refused'), 'reload refused');
    expect(String(refused.err)).toContain('members[1].trust: "maybe" is not one of trusted|untrusted');
    expect(da.lines.some((l) => l.level === 'debug')).toBe(false);

    // Reload a's member list with c in it and the log level at debug: the gater follows without a restart.
    await writeConfig(a!, baseConfig(a!, { members: [member(b!), member(c!)], logLevel: 'debug' }));
    da.child.kill('SIGHUP');
    await da.waitForLog((l) => l.msg === 'configuration reloaded', 'reload');
    await Promise.all([da.waitForLog(connectedTo('c'), 'c connected'), dc.waitForLog(connectedTo('a'), 'a connected')]);
    // The first RTT sample of the new member is a debug line: the new level is in force.
    await da.waitForLog((l) => l.msg === 'member rtt' && l.member === 'c' && l.level === 'debug', 'debug line after reload');
    const members = JSON.parse((await runCtl(['--socket', a!.socket, 'members', '--json'])).stdout) as { members: { name: string; connected: boolean }[] };
    expect(members.members.map((m) => [m.name, m.connected])).toEqual([['b', true], ['c', true]]);
    // Three daemon starts, two reloads and three dwcpctl runs in sequence: 30 s is tight on a loaded 2-core machine.
  }, 60_000);

  it('redials a member that went away, with back-off, until it is back', async () => {
    const dir = await root('redial');
    const [a, b] = await Promise.all(['a', 'b'].map((n) => prepareNode(dir, n)));
    // Only a dials (b lists a without addresses), so reconnection is a's work alone.
    const bConfig = baseConfig(b!, { members: [{ name: 'a', peerId: a!.peerId, region: 'r-a', provider: 'onprem' }] });
    const first = await start(b!, bConfig);
    const bAddr = (await first.serving()).listen[0]!;
    const da = await start(a!, baseConfig(a!, { members: [{ name: 'b', peerId: b!.peerId, region: 'r-b', provider: 'onprem', addrs: [bAddr] }] }));
    await da.waitForLog(connectedTo('b'), 'b connected');

    const beforeKill = da.lines.length;
    await first.stop('SIGKILL');
    await da.waitForLog((l) => l.msg === 'member disconnected' && l.member === 'b', 'b disconnected');
    await da.waitForLog((l) => l.msg === 'member dial failed' && l.member === 'b', 'a failed redial');

    // b comes back on the same port; a's next redial must find it.
    const port = /\/tcp\/(\d+)/.exec(bAddr)![1];
    const second = await start(b!, { ...bConfig, listen: [`/ip4/127.0.0.1/tcp/${port}`] });
    await Promise.all([second.waitForLog(connectedTo('a'), 'a reconnected'), da.waitForLog(connectedTo('b'), 'b reconnected', beforeKill)]);
    expect(da.lines.filter(connectedTo('b')).length).toBe(2);
    const retries = da.lines.filter((l) => l.msg === 'member dial failed' && l.member === 'b').map((l) => Number(l.retryInMs));
    // Capped exponential: never above reconnectMaxMs (1000 in these tests).
    expect(Math.max(...retries)).toBeLessThanOrEqual(1_000);
    expect(metricValue(await da.scrape(), 'dwcp_dial_attempts_total', { peer: 'b', result: 'error' })).toBe(retries.length);
  });

  it('exports metrics of a live, connected daemon that pass promtool', async (ctx) => {
    const dir = await root('promtool');
    const [a, b] = await Promise.all(['a', 'b'].map((n) => prepareNode(dir, n)));
    const da = await start(a!, baseConfig(a!, { members: [{ name: 'b', peerId: b!.peerId, region: 'r-b', provider: 'onprem' }] }));
    const aAddrs = (await da.serving()).listen;
    const db = await start(b!, baseConfig(b!, { members: [{ name: 'a', peerId: a!.peerId, region: 'r-a', provider: 'onprem', addrs: aAddrs }] }));
    await db.waitForLog(connectedTo('a'), 'a connected');
    // The first ping runs on connect; its RTT sample is what makes the histogram series appear.
    await db.waitForLog((l) => l.msg === 'member rtt' && l.member === 'a', 'first rtt sample');
    const text = await db.scrape();
    expect(metricValue(text, 'dwcp_peer_rtt_seconds_count', { peer: 'a' })).toBeGreaterThanOrEqual(1);
    expect(metricValue(text, 'dwcp_protocol_sent_bytes_total', { protocol: '/dwcp/hello/1.0.0' })).toBeGreaterThan(0);
    expect(lintMetrics(text, ctx)).toEqual({ status: 0, output: '' });
  });

  it('refuses a member whose hello disagrees with the member list, naming the field', async () => {
    const dir = await root('hello');
    const [a, b] = await Promise.all(['a', 'b'].map((n) => prepareNode(dir, n)));
    // a expects b in region "r-b"; b says it is in "elsewhere".
    const da = await start(a!, baseConfig(a!, { members: [{ name: 'b', peerId: b!.peerId, region: 'r-b', provider: 'onprem' }] }));
    const aAddrs = (await da.serving()).listen;
    const db = await start(
      b!,
      baseConfig(b!, {
        node: { name: 'b', region: 'elsewhere', provider: 'onprem' },
        members: [{ name: 'a', peerId: a!.peerId, region: 'r-a', provider: 'onprem', addrs: aAddrs }],
      }),
    );
    const refused = await da.waitForLog((l) => l.msg === 'member connection refused by hello', 'hello refusal');
    expect(refused).toMatchObject({ reason: 'identity_mismatch', member: 'b' });
    expect(String(refused.err)).toContain('region is "elsewhere"');
    await db.waitForLog((l) => l.msg === 'member dial failed' && String(l.err).includes('refused this node'), 'b learns why');
    expect(metricValue(await da.scrape(), 'dwcp_connections_refused_total', { reason: 'identity_mismatch' })).toBeGreaterThanOrEqual(1);
    expect(metricValue(await da.scrape(), 'dwcp_members_connected')).toBe(0);
  });

  it('refuses, whole, a SIGHUP that flips a member\'s trust, and keeps the running configuration', async () => {
    const dir = await root('trustflip');
    const [a, b, c, d] = await Promise.all(['a', 'b', 'c', 'd'].map((n) => prepareNode(dir, n)));
    const member = (n: NodeFiles, extra: Record<string, unknown> = {}) => ({ name: n.name, peerId: n.peerId, region: `r-${n.name}`, provider: 'onprem', ...extra });
    // Four trusted members (c and d never start): enough that d turning untrusted is a valid file (n >= 3f + 1 for PBFT).
    const da = await start(a!, baseConfig(a!, { members: [member(b!), member(c!), member(d!)], logLevel: 'info' }));
    const aAddrs = (await da.serving()).listen;
    const db = await start(b!, baseConfig(b!, { members: [member(a!, { addrs: aAddrs }), member(c!), member(d!)] }));
    await Promise.all([da.waitForLog(connectedTo('b'), 'b connected'), db.waitForLog(connectedTo('a'), 'a connected')]);

    await writeConfig(a!, baseConfig(a!, { members: [member(b!), member(c!), member(d!, { trust: 'untrusted' })], logLevel: 'debug' }));
    const mark = da.lines.length;
    da.child.kill('SIGHUP');
    const refused = await da.waitForLog((l) => String(l.msg).startsWith('reload refused'), 'reload refused', mark);
    expect(refused.changes).toEqual(['member d: trust trusted -> untrusted', 'federation scope: Raft -> PBFT']);
    expect(String(refused.msg)).toContain('coordinated restart');
    expect(da.lines.slice(mark).some((l) => String(l.msg).startsWith('configuration reloaded'))).toBe(false);

    // Nothing of the refused file applied: d still trusted, the federation scope still on Raft, the log level unchanged.
    const status = JSON.parse((await runCtl(['--socket', a!.socket, 'status', '--json'])).stdout) as {
      members: { name: string; trust: string; connected: boolean }[];
      scopes: { scope: string; protocol: string }[];
    };
    expect(status.members.map((m) => [m.name, m.trust])).toEqual([['b', 'trusted'], ['c', 'trusted'], ['d', 'trusted']]);
    expect(status.members.find((m) => m.name === 'b')?.connected).toBe(true);
    expect(status.scopes).toEqual(expect.arrayContaining([expect.objectContaining({ scope: 'federation', protocol: 'raft' })]));
    expect(da.lines.slice(mark).some((l) => l.level === 'debug')).toBe(false);
  }, 60_000);

  it('dwcpd id prints the peer ID and init writes a key and a config that validates', async () => {
    const dir = await root('init');
    const res = await runDwcpd(['init', '--data-dir', join(dir, 'n'), '--name', 'dc9', '--region', 'eu-1', '--provider', 'private']);
    expect(res.code, res.stderr).toBe(0);
    const out = JSON.parse(res.stdout) as { peerId: string; config: string; key: string };
    expect(statSync(out.key).mode & 0o777).toBe(0o600);
    const id = await runDwcpd(['id', '--data-dir', join(dir, 'n')]);
    expect(id.stdout.trim()).toBe(out.peerId);
    const again = await runDwcpd(['init', '--data-dir', join(dir, 'n')]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('already exists');
  });
});
