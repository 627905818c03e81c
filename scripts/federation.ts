#!/usr/bin/env node
/**
 * The local federation launcher: `up` starts N dwcpd processes on 127.0.0.1,
 * each a member of all the others, and waits until every one reports all its
 * members connected and has its fleet region declared in the federation log
 * (its log says so; placement needs the region); `down` stops them; `status` reports on them. Each node
 * lives in `<dir>/<name>/` (key, dwcpd.yaml, dwcpd.log, dwcpd.pid, admin.sock),
 * so a federation is found again from its directory alone.
 *
 * Invariants: the daemons are detached and outlive the launcher, including
 * when `up` fails (the operator inspects them, then runs `down`); a directory
 * never holds two running federations; a pid from a pid file is only
 * signalled while, as far as the OS can tell, it is still the daemon started
 * with that node's config (pids get reused); the daemons never inherit DWCP_*
 * variables, which would override the generated configs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { lstat, mkdir, open, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stringify } from 'yaml';
import { resolveConfig } from '../src/config/load.ts';
import type { DwcpConfig } from '../src/config/schema.ts';
import { loadOrCreateIdentity } from '../src/daemon/identity.ts';
import { DAEMON_NODE_FLAGS } from '../src/daemon/node-flags.ts';
import { processesNaming, readProcess } from '../src/cloud/qemu/procfs.ts';
import { isGuestCommandLine } from '../src/cloud/qemu/qemu-command.ts';
import { vmFiles } from '../src/cloud/qemu/vm-store.ts';
import { buildGuestImage, guestSources, GuestImageError } from './guest-image/build.ts';
import {
  CONFIG_FILE,
  DEFAULT_BASE_PORT,
  PID_FILE,
  PlanError,
  SOCKET_FILE,
  nodeConfig,
  parseLabelFlag,
  parsePlanFile,
  planFederation,
  type OnPremRuntime,
  type PlanFile,
  type PlannedNode,
} from './federation-plan.ts';

const DAEMON_MAIN = fileURLToPath(new URL('../src/daemon/main.ts', import.meta.url));

const DEFAULT_TIMEOUT_MS = 30_000;
/** The test guest's name in a federation's own image directory (`vm create --image tiny`). */
const GUEST_IMAGE_NAME = 'tiny';
/** Polling processes we do not control; there is no event to wait on. */
const POLL_MS = 100;
const SCRAPE_TIMEOUT_MS = 1_000;
/** Longer than the daemon's own stop budget (9 s + 1 s hard exit), so a healthy daemon always stops gracefully. */
const GRACEFUL_STOP_MS = 12_000;
const KILL_WAIT_MS = 3_000;
const LOG_TAIL_LINES = 8;
const LOG_LINE_CHARS = 400;

const USAGE = `usage: npm run federation -- up --nodes N [--untrusted M] --dir DIR [--base-port P] [--timeout-ms T]
                                   [--plan FILE] [--label [NODE:]KEY=VALUE]...
                                   [--provider local|qemu [--accel auto|kvm|tcg] [--image-dir DIR]]
       npm run federation -- down --dir DIR
       npm run federation -- status --dir DIR

  up      create DIR/<name>/ for N nodes (trusted dc1.., then M untrusted cloud1..), start a dwcpd
          in each and wait until every node has all N-1 members connected and its fleet region
          declared in the federation log; prints a JSON array of
          {name, socket, metrics, peerId, pid, fleet}. Ports: libp2p P+i, metrics P+1000+i (P default ${DEFAULT_BASE_PORT}).
          On failure the daemons are left running for inspection: run "down" afterwards.
          Each node is a fleet region with one local provider; by default node i (from 0) gets
          $0.01×(i+1)/vCPU-h and $0.001×(i+1)/GiB-h, 4×(i+1) vCPUs, 8×(i+1) GiB, 100×(i+1) GiB disk,
          jurisdiction eu (even i, compliance gdpr) or us (odd i), and label tier=bronze|silver|gold.
  --plan  a YAML or JSON file mapping node names to any of labels, jurisdiction (null: none),
          compliance, capacity {vcpus, memoryGiB, diskGiB}, pricePerVcpuHour, pricePerGiBHour;
          each field given replaces the default for that node.
  --label add a label to every node (KEY=VALUE) or to one (NODE:KEY=VALUE), after the plan file; repeatable.
  --provider  what runs the trusted nodes' VMs: local (simulated records, the default) or qemu (real guests,
          docs/qemu.md; images from --image-dir (<DIR>/<name>/ as "npm run guest-image -- --out" writes),
          by default DIR/images with the test guest built as "tiny"); --accel defaults to auto (a KVM
          probe, else TCG).
          Untrusted (cloud) nodes always simulate.
  down    SIGTERM every daemon of DIR, SIGKILL those still running after ${GRACEFUL_STOP_MS / 1000} s, then stop the QEMU guests
          they left running (--provider qemu); prints a JSON summary.
  status  per node: whether its pid is running and how many members it has connected (JSON).`;

const OPTIONS = {
  nodes: { type: 'string' },
  untrusted: { type: 'string' },
  dir: { type: 'string' },
  'base-port': { type: 'string' },
  'timeout-ms': { type: 'string' },
  plan: { type: 'string' },
  label: { type: 'string', multiple: true },
  provider: { type: 'string' },
  accel: { type: 'string' },
  'image-dir': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

/** Bad invocation: exit 2 with the usage text. */
class UsageError extends Error {}
/** The command ran and failed: exit 1 with the message alone. */
class LaunchError extends Error {}

function downHint(dir: string): string {
  return `run "npm run federation -- down --dir ${dir}"`;
}

function intFlag(flags: Flags, key: 'nodes' | 'untrusted' | 'base-port' | 'timeout-ms', fallback?: number): number {
  const raw = flags[key];
  if (raw === undefined) {
    if (fallback === undefined) throw new UsageError(`--${key} is required`);
    return fallback;
  }
  if (!/^\d+$/.test(raw)) throw new UsageError(`--${key}: ${JSON.stringify(raw)} is not a non-negative integer`);
  return Number(raw);
}

function onlyFlags(command: string, flags: Flags, allowed: (keyof Flags)[]): void {
  for (const key of Object.keys(flags) as (keyof Flags)[]) {
    if (!allowed.includes(key)) throw new UsageError(`--${key} is not an option of "${command}"`);
  }
}

function dirFlag(flags: Flags): string {
  if (flags.dir === undefined || flags.dir === '') throw new UsageError('--dir is required');
  return flags.dir;
}

/** --provider local|qemu with its --accel and --image-dir: what runs the trusted nodes' VMs. */
function runtimeFlags(flags: Flags): OnPremRuntime {
  const kind = flags.provider ?? 'local';
  if (kind !== 'local' && kind !== 'qemu') throw new UsageError(`--provider: ${JSON.stringify(kind)} is not local or qemu`);
  if (kind === 'local') {
    for (const key of ['accel', 'image-dir'] as const) if (flags[key] !== undefined) throw new UsageError(`--${key}: only with --provider qemu`);
    return { kind };
  }
  const accel = flags.accel ?? 'auto';
  if (accel !== 'auto' && accel !== 'kvm' && accel !== 'tcg') throw new UsageError(`--accel: ${JSON.stringify(accel)} is not auto, kvm or tcg`);
  if (flags['image-dir'] === '') throw new UsageError('--image-dir: expected a directory');
  return { kind, accel, ...(flags['image-dir'] === undefined ? {} : { imageDir: resolve(flags['image-dir']) }) };
}

/** --plan FILE read and checked, before anything is created. */
async function planFileFlag(flags: Flags): Promise<{ planFile?: PlanFile; planSource?: string }> {
  if (flags.plan === undefined) return {};
  if (flags.plan === '') throw new UsageError('--plan: expected a file name');
  let text: string;
  try {
    text = await readFile(flags.plan, 'utf8');
  } catch (err) {
    throw new UsageError(`--plan ${flags.plan}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  return { planFile: parsePlanFile(text, flags.plan), planSource: flags.plan };
}

/** The directory a federation lives in, symlinks resolved so that every command names the same paths. */
async function federationDir(dir: string, create: boolean): Promise<string> {
  if (create) await mkdir(dir, { recursive: true, mode: 0o700 });
  try {
    return await realpath(dir);
  } catch (err) {
    throw new LaunchError(`--dir: ${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

// ---------------------------------------------------------------- processes

const HAVE_PROCFS = existsSync('/proc/self/cmdline');

/** Whether pid exists and has not exited; one that exited but is not yet reaped (a zombie) has. */
function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    // ESRCH: gone; EPERM: another user's process, so none we started.
    return false;
  }
  if (!HAVE_PROCFS) return true;
  try {
    const procStat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !procStat.slice(procStat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return false;
  }
}

/**
 * Whether pid is still the daemon started with configPath, as far as the OS
 * tells: with procfs, a reused pid running something else is not ours.
 */
function isDaemonRunning(pid: number, configPath: string): boolean {
  if (!isAlive(pid)) return false;
  if (!HAVE_PROCFS) return true;
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(configPath);
  } catch {
    return false;
  }
}

/**
 * Polls until pid has exited or the deadline passes; true if it exited. Only
 * liveness counts here: an exiting process's cmdline reads empty before it is gone.
 */
async function waitForExit(pid: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (isAlive(pid)) {
    if (Date.now() >= deadline) return false;
    await sleep(POLL_MS / 2);
  }
  return true;
}

async function readPid(pidPath: string): Promise<number | null> {
  let text: string;
  try {
    text = await readFile(pidPath, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 ? pid : null;
}

/** A node directory found on disk, whatever plan created it. */
interface NodeOnDisk {
  name: string;
  dir: string;
  configPath: string;
  pidPath: string;
  pid: number | null;
  running: boolean;
  config: DwcpConfig | { error: string };
}

function readNodeConfig(configPath: string): DwcpConfig | { error: string } {
  try {
    return resolveConfig({ configPath, env: {} });
  } catch (err) {
    return { error: (err as Error).message };
  }
}

/** Port order is launch order (dc1.., then cloud1..); the name breaks ties and places unreadable configs last. */
function launchOrder(n: NodeOnDisk): number {
  return 'error' in n.config ? Infinity : Number(n.config.metricsListen.slice(n.config.metricsListen.lastIndexOf(':') + 1));
}

/** Every `<dir>/<name>/` holding a config or a pid file, in launch order. */
async function nodesOnDisk(dir: string): Promise<NodeOnDisk[]> {
  const entries = await readdir(dir, { withFileTypes: true });
  const found: NodeOnDisk[] = [];
  for (const entry of entries) {
    if (!entry.isDirectory()) continue;
    const nodeDir = join(dir, entry.name);
    const configPath = join(nodeDir, CONFIG_FILE);
    const pidPath = join(nodeDir, PID_FILE);
    if (!existsSync(configPath) && !existsSync(pidPath)) continue;
    const pid = await readPid(pidPath);
    const running = pid !== null && isDaemonRunning(pid, configPath);
    found.push({ name: entry.name, dir: nodeDir, configPath, pidPath, pid, running, config: readNodeConfig(configPath) });
  }
  return found.sort((a, b) => launchOrder(a) - launchOrder(b) || a.name.localeCompare(b.name, 'en', { numeric: true }));
}

// ---------------------------------------------------------------- metrics

type Scrape = { connected: number } | { error: string };

async function scrapeConnected(url: string): Promise<Scrape> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(SCRAPE_TIMEOUT_MS) });
    const body = await res.text();
    if (!res.ok) return { error: `HTTP ${res.status}` };
    const m = /^dwcp_members_connected (\S+)$/m.exec(body);
    return m ? { connected: Number(m[1]) } : { error: 'no dwcp_members_connected in /metrics' };
  } catch (err) {
    const cause = (err as Error & { cause?: NodeJS.ErrnoException }).cause;
    return { error: cause?.code ?? (err as Error).message };
  }
}

function describeScrape(s: Scrape, members: number): string {
  return 'connected' in s ? `${s.connected}/${members} members connected` : `metrics unreachable (${s.error})`;
}

// ---------------------------------------------------------------- up

interface StartedNode {
  node: PlannedNode;
  peerId: string;
  pid: number;
  child: ChildProcess;
  /** Size of the log before this start: only what follows is this run's output. */
  logOffset: number;
}

interface ExitReport {
  started: StartedNode;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The daemons inherit the environment minus DWCP_*, which would override their configs. */
function daemonEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('DWCP_')));
}

async function startNode(node: PlannedNode, peerId: string): Promise<StartedNode> {
  const logOffset = await stat(node.logPath).then((s) => s.size, () => 0);
  const logFd = openSync(node.logPath, 'a', 0o600);
  let child: ChildProcess;
  try {
    child = spawn(process.execPath, [...DAEMON_NODE_FLAGS, DAEMON_MAIN, '--config', node.configPath], {
      cwd: node.dir,
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env: daemonEnv(),
    });
  } finally {
    closeSync(logFd);
  }
  const pid = child.pid;
  if (pid === undefined) {
    const err = await new Promise<Error>((resolve) => child.once('error', resolve));
    throw new LaunchError(`${node.name}: cannot start ${process.execPath}: ${err.message}; nodes started before it are left running, ${downHint(dirname(node.dir))}`);
  }
  await writeFile(node.pidPath, `${pid}\n`, { mode: 0o600 });
  child.unref();
  return { node, peerId, pid, child, logOffset };
}

/** This run's last log lines, and the one that best says why the daemon stopped. */
async function logTail(started: StartedNode): Promise<{ lines: string[]; reason: string }> {
  let text = '';
  const fh = await open(started.node.logPath, 'r');
  try {
    const { size } = await fh.stat();
    const from = Math.max(started.logOffset, size - 64 * 1024);
    const buf = Buffer.alloc(size - from);
    await fh.read(buf, 0, buf.length, from);
    text = buf.toString('utf8');
  } finally {
    await fh.close();
  }
  const lines = text.split('\n').filter((l) => l.trim() !== '');
  // The daemon's error records carry the whole error; its stderr echo and Node crash traces are the fallback.
  const records = lines.flatMap((line) => {
    try {
      const entry = JSON.parse(line) as { level?: unknown; msg?: unknown; err?: unknown };
      return [{ level: entry.level, text: entry.err === undefined ? String(entry.msg) : `${String(entry.msg)}: ${condense(String(entry.err))}` }];
    } catch {
      return [];
    }
  });
  const reason =
    records.findLast((r) => r.level === 'fatal')?.text ??
    records.findLast((r) => r.level === 'error')?.text ??
    lines.findLast((l) => l.startsWith('dwcpd:')) ??
    lines.at(-1) ??
    '(nothing in its log)';
  return { lines: lines.slice(-LOG_TAIL_LINES).map((l) => (l.length > LOG_LINE_CHARS ? `${l.slice(0, LOG_LINE_CHARS)}…` : l)), reason };
}

/**
 * Whether this run's log of the node says the federation log answered its
 * region declaration: declared, or refused (a shrink below what is assigned;
 * the previous declaration stays in force, so the region is known either way).
 */
async function regionDeclared(started: StartedNode): Promise<boolean> {
  const fh = await open(started.node.logPath, 'r');
  try {
    const { size } = await fh.stat();
    const buf = Buffer.alloc(Math.max(0, size - started.logOffset));
    await fh.read(buf, 0, buf.length, started.logOffset);
    return /"msg":"fleet region (declared|declaration refused)/.test(buf.toString('utf8'));
  } finally {
    await fh.close();
  }
}

/** An error message on one line: stack frames dropped, the rest joined. */
function condense(text: string): string {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('at '))
    .join(' ');
}

async function exitFailure(report: ExitReport, dir: string): Promise<LaunchError> {
  const { node, pid, child } = report.started;
  child.removeAllListeners('exit');
  const how = report.code !== null ? `exit code ${report.code}` : `signal ${report.signal}`;
  const { lines, reason } = await logTail(report.started);
  const hint = /EADDRINUSE/.test(reason) ? ' (a port is already in use: pick another --base-port)' : '';
  return new LaunchError(
    `${node.name} (pid ${pid}) stopped with ${how} before the federation connected: ${reason}${hint}; ` +
      `the other daemons are left running, ${downHint(dir)}\n` +
      `  last lines of ${node.logPath}:\n${lines.map((l) => `    ${l}`).join('\n')}`,
  );
}

async function refuseIfRunning(dir: string): Promise<void> {
  const running = (await nodesOnDisk(dir)).filter((n) => n.running);
  if (running.length > 0) {
    throw new LaunchError(`${dir} already has a running federation (${running.map((n) => `${n.name} pid ${n.pid}`).join(', ')}); ${downHint(dir)} first`);
  }
}

async function up(flags: Flags): Promise<string> {
  onlyFlags('up', flags, ['nodes', 'untrusted', 'dir', 'base-port', 'timeout-ms', 'plan', 'label', 'provider', 'accel', 'image-dir']);
  const nodes = intFlag(flags, 'nodes');
  const untrusted = intFlag(flags, 'untrusted', 0);
  const basePort = intFlag(flags, 'base-port', DEFAULT_BASE_PORT);
  const timeoutMs = intFlag(flags, 'timeout-ms', DEFAULT_TIMEOUT_MS);
  if (timeoutMs < 1) throw new UsageError('--timeout-ms: must be at least 1');
  // Bad counts, ports or a too-long path are refused before anything is created; the real path may be longer.
  const dirArg = dirFlag(flags);
  const regions = { ...(await planFileFlag(flags)), labels: (flags.label ?? []).map(parseLabelFlag), onPrem: runtimeFlags(flags) };
  planFederation({ nodes, untrusted, dir: resolve(dirArg), basePort, ...regions });
  const dir = await federationDir(dirArg, true);
  await refuseIfRunning(dir);
  if (regions.onPrem.kind === 'qemu' && regions.onPrem.imageDir === undefined) {
    // Real guests need an image: the test guest, built here once per federation directory (a few seconds, nothing downloaded).
    const images = join(dir, 'images');
    if (!existsSync(join(images, GUEST_IMAGE_NAME, 'image.json'))) {
      try {
        await buildGuestImage(join(images, GUEST_IMAGE_NAME), await guestSources({}));
      } catch (err) {
        if (err instanceof GuestImageError) throw new LaunchError(`--provider qemu: cannot build the test guest (${err.message}); or give --image-dir`);
        throw err;
      }
    }
    regions.onPrem = { ...regions.onPrem, imageDir: images };
  }
  const plan = planFederation({ nodes, untrusted, dir, basePort, ...regions });

  const peerIds: string[] = [];
  for (const node of plan) peerIds.push((await loadOrCreateIdentity(node.dir)).peerId.toString());
  for (const [i, node] of plan.entries()) {
    const header = `# Written by scripts/federation.ts for the local federation in ${dir}; rewritten by every "up".\n`;
    await writeFile(node.configPath, header + stringify(nodeConfig(plan, peerIds, i)), { mode: 0o600 });
    await rm(node.pidPath, { force: true });
  }

  const started: StartedNode[] = [];
  let exited: ExitReport | undefined;
  let wake = (): void => {};
  const firstExit = new Promise<void>((resolve) => (wake = resolve));
  for (const [i, node] of plan.entries()) {
    const s = await startNode(node, peerIds[i]!);
    s.child.once('exit', (code, signal) => {
      exited ??= { started: s, code, signal };
      wake();
    });
    started.push(s);
  }

  const deadline = Date.now() + timeoutMs;
  const declared = plan.map(() => false);
  for (;;) {
    const scrapes = await Promise.all(plan.map((n) => scrapeConnected(n.metricsUrl)));
    if (exited) throw await exitFailure(exited, dir);
    const behind = plan.flatMap((n, i) => {
      const s = scrapes[i]!;
      return 'connected' in s && s.connected === nodes - 1 ? [] : [`${n.name} (${describeScrape(s, nodes - 1)})`];
    });
    // Then every node's fleet region in the log: before that, placement on it answers "unknown region".
    if (behind.length === 0) {
      for (const [i, s] of started.entries()) declared[i] ||= await regionDeclared(s);
      if (declared.every(Boolean)) break;
    }
    const left = deadline - Date.now();
    if (left <= 0) {
      const undeclared = behind.length > 0 ? [] : plan.flatMap((n, i) => (declared[i] ? [] : [n.name]));
      throw new LaunchError(
        (behind.length > 0
          ? `not every node had its ${nodes - 1} other members connected within ${timeoutMs} ms: ${behind.join(', ')}; `
          : `not every node had its fleet region declared in the federation log within ${timeoutMs} ms: ${undeclared.join(', ')} (no "fleet region declared" in its log yet); `) +
          `the daemons are left running (logs in ${dir}/<name>/dwcpd.log), ${downHint(dir)}`,
      );
    }
    await Promise.race([sleep(Math.min(POLL_MS, left)), firstExit]);
  }
  for (const s of started) s.child.removeAllListeners('exit');
  return JSON.stringify(started.map((s) => ({ name: s.node.name, socket: s.node.adminSocket, metrics: s.node.metricsUrl, peerId: s.peerId, pid: s.pid, fleet: s.node.facts })));
}

// ---------------------------------------------------------------- down

type StopOutcome = 'graceful' | 'killed' | 'not running';

/** The admin socket a node's config names; the planned one if the config is unreadable. */
function adminSocketOf(node: NodeOnDisk): string {
  return 'error' in node.config ? join(node.dir, SOCKET_FILE) : node.config.adminSocket;
}

async function stopNode(node: NodeOnDisk): Promise<StopOutcome> {
  if (!node.running || node.pid === null) return 'not running';
  const { pid } = node;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return 'not running';
  }
  if (await waitForExit(pid, GRACEFUL_STOP_MS)) return 'graceful';
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // It exited between the last poll and the kill.
  }
  if (!(await waitForExit(pid, KILL_WAIT_MS))) throw new LaunchError(`${node.name} (pid ${pid}) is still running ${KILL_WAIT_MS} ms after SIGKILL`);
  // A killed daemon cannot remove its socket; the next start would cope, but down leaves a clean directory.
  const socket = adminSocketOf(node);
  const st = await lstat(socket).catch(() => undefined);
  if (st?.isSocket()) await rm(socket, { force: true });
  return 'killed';
}

/**
 * The QEMU guests a node's qemu provider left running: they outlive dwcpd on
 * purpose (the provider adopts them again at its next start), but a local
 * federation brought down should leave no process behind. Only a pid that
 * /proc shows running this guest's QEMU command line is signalled.
 */
async function stopGuests(node: NodeOnDisk): Promise<number> {
  const root = join('error' in node.config ? node.dir : node.config.dataDir, 'qemu');
  const ids = await readdir(join(root, 'vms')).catch(() => [] as string[]);
  const stopped = await Promise.all(
    ids.map(async (id) => {
      const files = vmFiles(root, id);
      const pid = Number((await readFile(files.pid, 'utf8').catch(() => '')).trim());
      const info = await readProcess(pid);
      if (info === null || !isGuestCommandLine(info.argv, id, files.qmp)) return false;
      // QEMU's wrapper shell (the lease watchdog) names the guest's directory too; it records QEMU's exit and ends just after it.
      const wrappers = processesNaming(dirname(files.pid)).filter((p) => p.pid !== pid);
      // QEMU quits on SIGTERM (its disk flushed); a guest still there after the grace period is killed.
      process.kill(pid, 'SIGTERM');
      if (!(await waitForExit(pid, KILL_WAIT_MS))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // It exited between the last poll and the kill.
        }
      }
      // Down leaves no process behind: wait for the wrapper to have written the exit status and gone.
      await Promise.all(wrappers.map((w) => waitForExit(w.pid, KILL_WAIT_MS)));
      return true;
    }),
  );
  return stopped.filter(Boolean).length;
}

async function down(flags: Flags): Promise<string> {
  onlyFlags('down', flags, ['dir']);
  const dir = await federationDir(dirFlag(flags), false);
  const nodes = await nodesOnDisk(dir);
  // All at once: each has its own deadline, so ten slow daemons cost 12 s, not 120 s.
  const outcomes = await Promise.all(nodes.map(stopNode));
  // After the daemons: a daemon still running would start a stopped guest again.
  const guests = await Promise.all(nodes.map(stopGuests));
  await Promise.all(nodes.map((n) => rm(n.pidPath, { force: true })));
  return JSON.stringify(nodes.map((n, i) => ({ name: n.name, pid: n.pid, stopped: outcomes[i]!, ...(guests[i]! > 0 ? { guestsStopped: guests[i]! } : {}) })));
}

// ---------------------------------------------------------------- status

async function status(flags: Flags): Promise<string> {
  onlyFlags('status', flags, ['dir']);
  const dir = await federationDir(dirFlag(flags), false);
  const nodes = await nodesOnDisk(dir);
  const rows = await Promise.all(
    nodes.map(async ({ name, pid, running, config }) => {
      if ('error' in config) return { name, pid, running, membersConnected: null, error: config.error };
      const metrics = `http://${config.metricsListen}/metrics`;
      const scrape = running ? await scrapeConnected(metrics) : undefined;
      return {
        name,
        pid,
        running,
        socket: config.adminSocket,
        metrics,
        membersConfigured: config.members.length,
        membersConnected: scrape && 'connected' in scrape ? scrape.connected : null,
        ...(scrape && 'error' in scrape ? { error: `metrics unreachable (${scrape.error})` } : {}),
      };
    }),
  );
  return JSON.stringify(rows);
}

// ---------------------------------------------------------------- main

async function main(argv: string[]): Promise<string> {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const { values: flags, positionals } = parsed;
  if (flags.help) return USAGE;
  delete flags.help;
  if (positionals.length !== 1) throw new UsageError(positionals.length === 0 ? 'a command is required' : `unexpected argument "${positionals[1]}"`);
  const command = positionals[0]!;
  try {
    switch (command) {
      case 'up':
        return await up(flags);
      case 'down':
        return await down(flags);
      case 'status':
        return await status(flags);
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof PlanError) throw new UsageError(err.message);
    throw err;
  }
}

function finish(code: number, stream: NodeJS.WriteStream, text: string): void {
  // Exit explicitly: pooled HTTP connections to the daemons would otherwise keep the launcher alive.
  stream.write(`${text}\n`, () => process.exit(code));
}

main(process.argv.slice(2)).then(
  (out) => finish(0, process.stdout, out),
  (err: unknown) => {
    if (err instanceof UsageError) finish(2, process.stderr, `federation: ${err.message}\n${USAGE}`);
    else finish(1, process.stderr, `federation: ${err instanceof LaunchError ? err.message : ((err as Error).stack ?? String(err))}`);
  },
);
