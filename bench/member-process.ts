/**
 * The child-process side shared by the raft bench's throwaway clusters (dwcp in
 * bench/dwcp-cluster.ts, etcd in bench/etcd.ts): spawning a member with its
 * output kept for a failure report, stopping it, failing a start as soon as a
 * member dies, retrying a probe until a deadline, and owning the members and
 * their data dir so that nothing outlives a cluster.
 *
 * Invariants:
 * - Both pipes of every member are drained, so a chatty member never blocks on
 *   a full pipe; only the last LOG_TAIL_BYTES are kept.
 * - `exited` never rejects: it resolves with how the member ended, also when it
 *   could not be started at all.
 * - A stopped member has exited: SIGTERM first, SIGKILL after the grace period.
 * - A member group's stop() runs once however often it is called, and removes
 *   the data dir after every member has exited. If this process exits without
 *   stop() (a crash, process.exit), the members are killed and the dir removed.
 * - Error texts name the member as the caller describes it, so a dwcpd and an
 *   etcd failure read differently.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import fs from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';

/** Bytes of each member's output kept to explain a failure. */
const LOG_TAIL_BYTES = 8192;
/** Polling processes we do not control: no event crosses from a member to us. */
const POLL_MS = 100;

/** A spawned member process, its output tail and its end. */
export interface LoggedProcess {
  child: ChildProcess;
  /** How the process ended (`exit code N`, `killed by SIG…`, or why it could not start); never rejects. */
  exited: Promise<string>;
  logTail(): string;
}

/** A member of a cluster (`M` is the cluster's own description of it) and its process. */
export interface MemberProcess<M> extends LoggedProcess {
  member: M;
}

/** How a start failure names a member and its output, e.g. `dwcpd member n1 (pid 42)` and `output`. */
export interface MemberLabel<M> {
  describe(member: M): string;
  /** What the kept output is called in the error: `output`, `log`. */
  logName: string;
}

export function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Spawns `command` with stdin closed and both output pipes drained into a bounded tail. */
export function spawnLogged(command: string, args: readonly string[], env: NodeJS.ProcessEnv): LoggedProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let tail = '';
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString('utf8')).slice(-LOG_TAIL_BYTES);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<string>((resolve) => {
    child.once('error', (err) => resolve(`could not start ${command}: ${err.message}`));
    child.once('exit', (code, signal) => resolve(signal !== null ? `killed by ${signal}` : `exit code ${code}`));
  });
  return { child, exited, logTail: () => tail.trim() };
}

/** SIGTERM, then SIGKILL if the process has not exited after `graceMs`; resolves once it has exited. */
export async function stopMember(p: LoggedProcess, graceMs: number): Promise<void> {
  if (p.child.exitCode === null && p.child.signalCode === null && p.child.pid !== undefined) {
    p.child.kill('SIGTERM');
    if ((await Promise.race([p.exited, delay(graceMs, 'timeout' as const)])) === 'timeout') p.child.kill('SIGKILL');
  }
  await p.exited;
}

/** Stops all processes at once (see stopMember). */
export async function stopMembers(processes: readonly LoggedProcess[], graceMs: number): Promise<void> {
  await Promise.all(processes.map((p) => stopMember(p, graceMs)));
}

/** Rejects as soon as any member exits, naming it and quoting its output. */
function firstExit<M>(processes: readonly MemberProcess<M>[], label: MemberLabel<M>): Promise<never> {
  return Promise.race(
    processes.map((p) =>
      p.exited.then((how) => {
        throw new Error(`${label.describe(p.member)} exited while starting (${how}); its ${label.logName} ends:\n${p.logTail() || '(empty)'}`);
      }),
    ),
  );
}

/**
 * Resolves when `probe` does; rejects when it does or as soon as a member
 * exits. Once a member has died the probe's signal aborts, or the probing
 * would hold the event loop until its deadline.
 */
export async function awaitReady<M>(processes: readonly MemberProcess<M>[], label: MemberLabel<M>, probe: (signal: AbortSignal) => Promise<void>): Promise<void> {
  const died = firstExit(processes, label);
  died.catch(() => {});
  const probing = new AbortController();
  const ready = probe(probing.signal);
  ready.catch(() => {});
  await Promise.race([ready, died]).finally(() => probing.abort());
}

/**
 * Retries `attempt` (given the milliseconds left) until it resolves, the
 * deadline passes or `signal` aborts; the error names `what` and the last failure.
 */
export async function retryUntil<T>(what: string, deadline: number, signal: AbortSignal, attempt: (leftMs: number) => Promise<T>): Promise<T> {
  for (let lastError = 'none'; ; ) {
    signal.throwIfAborted();
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`${what} before the start deadline; last error: ${lastError}`);
    try {
      return await attempt(left);
    } catch (err) {
      lastError = errorText(err);
      await delay(Math.min(POLL_MS, Math.max(0, deadline - Date.now())), undefined, { signal });
    }
  }
}

/** The members of one cluster and the data dir they own. */
export interface MemberGroup<M> {
  /** The caller adds each member as it spawns it. */
  readonly processes: MemberProcess<M>[];
  /** Stops the members (with `stopAll`), then removes the dir; idempotent. */
  stop(): Promise<void>;
}

/** Takes ownership of `root`: from now on it and every member added are removed by stop(), or at process exit at the latest. */
export function ownMembers<M>(root: string, stopAll: (processes: readonly MemberProcess<M>[]) => Promise<void>): MemberGroup<M> {
  const processes: MemberProcess<M>[] = [];
  const killOnExit = (): void => {
    for (const p of processes) p.child.kill('SIGKILL');
    rmSync(root, { recursive: true, force: true });
  };
  process.once('exit', killOnExit);
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      await stopAll(processes);
      await fs.rm(root, { recursive: true, force: true });
      process.removeListener('exit', killOnExit);
    })());
  return { processes, stop };
}
