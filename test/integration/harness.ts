/**
 * Runs real dwcpd and dwcpctl processes for integration tests.
 *
 * A daemon is started from a config object written as YAML; start() resolves
 * when the daemon logs "dwcpd serving" (read from its stdout as it happens, no
 * polling), with the actual listen and metrics addresses taken from that line,
 * so tests can bind port 0 everywhere. Every log line is kept for assertions
 * and for the failure message when a daemon dies early.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { loadOrCreateIdentity } from '../../src/daemon/identity.ts';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.ts';

export const ROOT = new URL('../../', import.meta.url).pathname;
export const DWCPD = join(ROOT, 'src/daemon/main.ts');
export const DWCPCTL = join(ROOT, 'src/cli/main.ts');

export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

export interface NodeFiles {
  name: string;
  dir: string;
  configPath: string;
  socket: string;
  peerId: string;
}

/** Creates a node's directory and key; the config is written by start(). */
export async function prepareNode(root: string, name: string): Promise<NodeFiles> {
  const dir = join(root, name);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const identity = await loadOrCreateIdentity(dir);
  return { name, dir, configPath: join(dir, 'dwcpd.yaml'), socket: join(dir, 'admin.sock'), peerId: identity.peerId.toString() };
}

export function baseConfig(node: NodeFiles, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    federation: 'test-fed',
    node: { name: node.name, region: `r-${node.name}`, provider: 'onprem' },
    listen: ['/ip4/127.0.0.1/tcp/0'],
    dataDir: node.dir,
    adminSocket: node.socket,
    metricsListen: '127.0.0.1:0',
    logLevel: 'debug',
    // Loopback RTT on a loaded 2-core CI machine can reach tens of ms: wide thresholds keep trusted links "datacenter".
    // Every test member dials from 127.0.0.1, and a test that crashes and redials a member does so faster than
    // the per-host default of 5 connections a second allows (the daemon resets the excess before Noise).
    network: { inboundConnectionsPerHostPerSecond: 1_000, reconnectInitialMs: 100, reconnectMaxMs: 1_000, pingIntervalMs: 500, datacenterMaxRttMs: 1_000, internetMinRttMs: 5_000 },
    ...extra,
  };
}

export class DaemonProcess {
  readonly child: ChildProcess;
  readonly node: NodeFiles;
  readonly lines: LogLine[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #waiters: { match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];

  constructor(child: ChildProcess, node: NodeFiles) {
    this.child = child;
    this.node = node;
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    createInterface({ input: child.stdout! }).on('line', (text) => {
      let line: LogLine;
      try {
        line = JSON.parse(text) as LogLine;
      } catch {
        line = { msg: text, level: 'raw' };
      }
      this.lines.push(line);
      this.#waiters = this.#waiters.filter((w) => (w.match(line) ? (w.resolve(line), false) : true));
    });
    createInterface({ input: child.stderr! }).on('line', (text) => this.stderr.push(text));
  }

  /**
   * Resolves with the first log line that matches, among lines from index `after` on
   * (default: all, past and future); rejects if the daemon exits first.
   */
  waitForLog(match: (l: LogLine) => boolean, what: string, after = 0): Promise<LogLine> {
    const seen = this.lines.slice(after).find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      this.#waiters.push({ match, resolve });
      void this.exited.then(({ code, signal }) =>
        reject(new Error(`${this.node.name} exited (code ${code}, signal ${signal}) before logging ${what}\n${this.describe()}`)),
      );
    });
  }

  describe(): string {
    return [...this.lines.slice(-15).map((l) => JSON.stringify(l)), ...this.stderr.slice(-10)].join('\n');
  }

  async serving(): Promise<{ metrics: string; listen: string[] }> {
    const line = await this.waitForLog((l) => l.msg === 'dwcpd serving', '"dwcpd serving"');
    return { metrics: String(line.metrics), listen: line.listen as string[] };
  }

  async scrape(): Promise<string> {
    const { metrics } = await this.serving();
    const res = await fetch(metrics);
    return res.text();
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }
}

/** Starts dwcpd on `config` written to the node's config file, or with no config file at all when it is null. */
export async function startDaemon(node: NodeFiles, config: Record<string, unknown> | null, env: NodeJS.ProcessEnv = {}): Promise<DaemonProcess> {
  if (config) await writeConfig(node, config);
  const child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, DWCPD, ...(config ? ['--config', node.configPath] : [])], {
    env: { ...cleanEnv(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  return new DaemonProcess(child, node);
}

/** Daemons started and not yet exited: a test (or bench) process that ends without stopping them, e.g. killed at its timeout, takes them with it. */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function writeConfig(node: NodeFiles, config: Record<string, unknown>): Promise<void> {
  await writeFile(node.configPath, stringify(config), { mode: 0o600 });
}

/** The test's environment without anything that would redirect the daemon (DWCP_*, NOTIFY_SOCKET). */
export function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DWCP_') && k !== 'NOTIFY_SOCKET'));
}

export interface CtlResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCtl(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CtlResult> {
  return runNode(DWCPCTL, args, env);
}

/**
 * dwcpctl bound to one node's socket: `ctl(...args)` runs it, `ctlJson(...args)`
 * adds --json, requires exit 0 (the failure message carries its stderr) and parses stdout.
 */
export function ctlOn(socket: string): { ctl: (...args: string[]) => Promise<CtlResult>; ctlJson: <T>(...args: string[]) => Promise<T> } {
  const ctl = (...args: string[]): Promise<CtlResult> => runCtl(['--socket', socket, ...args]);
  const ctlJson = async <T>(...args: string[]): Promise<T> => {
    const result = await ctl(...args, '--json');
    if (result.code !== 0) throw new Error(`dwcpctl ${args.join(' ')} --json exited ${result.code}: ${result.stderr}`);
    return JSON.parse(result.stdout) as T;
  };
  return { ctl, ctlJson };
}

export function runDwcpd(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CtlResult> {
  return runNode(DWCPD, args, env);
}

function runNode(script: string, args: string[], env: NodeJS.ProcessEnv): Promise<CtlResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], { env: { ...cleanEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export async function tempRoot(prefix: string): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `dwcp-${prefix}-`));
  return { path, remove: () => rm(path, { recursive: true, force: true }) };
}

/**
 * Polls `check` every `pollMs` until it returns a value, or throws once `ms`
 * pass, naming what did not happen and the last error `check` threw (there
 * is no event to wait on for another daemon's view).
 */
export async function eventually<T>(what: string, ms: number, check: () => Promise<T | undefined>, pollMs = 100): Promise<T> {
  const deadline = performance.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (err) {
      last = err;
    }
    if (performance.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms${last === undefined ? '' : `: ${String(last)}`}`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

/** Reads one sample's value from Prometheus text, e.g. metric('dwcp_members_connected'). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    if (want.every((w) => (m[2] ?? '').includes(w))) return Number(m[3]);
  }
  return undefined;
}
