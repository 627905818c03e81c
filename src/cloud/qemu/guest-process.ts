/**
 * One guest's QEMU process, as the operating system sees it: started
 * detached through its shell (so it outlives dwcpd and its exit status is
 * recorded), recognised again by pid, start time and command line, killed
 * only once recognised, and its end read back from the files it leaves.
 *
 * Invariants:
 * - A pid is acted on (signalled, adopted) only when /proc shows, for that
 *   pid, the start time recorded at launch and this guest's command line
 *   (qemu-command.ts isGuestCommandLine): a pid reused by any other process
 *   is never touched.
 * - `launch` resolves only once QMP answers on the guest's socket; if QEMU
 *   ends first or the deadline passes, it rejects with what QEMU said (its
 *   exit status and last log line) and leaves no process behind (the
 *   shell's whole process group is killed on a deadline).
 * - The QMP socket is made 0600 as soon as it exists; its directory is
 *   already 0700, so nobody else can reach it in between.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, open, readFile, rm } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { isGuestCommandLine } from './qemu-command.ts';
import { readProcess, type ProcessInfo } from './procfs.ts';
import { QmpClient, QmpError } from './qmp.ts';
import type { VmFiles } from './vm-store.ts';

export interface ProcessRef {
  readonly pid: number;
  readonly startTicks: number;
  readonly shimPid: number;
}

export type Recognition = { readonly kind: 'ours'; readonly info: ProcessInfo } | { readonly kind: 'gone' } | { readonly kind: 'foreign'; readonly why: string };

/** Whether `ref` is still this guest's QEMU. */
export async function recognise(ref: ProcessRef, id: string, files: VmFiles): Promise<Recognition> {
  const info = await readProcess(ref.pid);
  if (info === null) return { kind: 'gone' };
  if (info.startTicks !== ref.startTicks || !isGuestCommandLine(info.argv, id, files.qmp)) {
    return { kind: 'foreign', why: `pid ${ref.pid} now belongs to another process (${(info.argv[0] ?? '?').slice(0, 80)}, started at tick ${info.startTicks}, not ${ref.startTicks}); not touched` };
  }
  return { kind: 'ours', info };
}

export class LaunchError extends Error {}

export interface LaunchOptions {
  readonly id: string;
  readonly shell: string;
  readonly binary: string;
  readonly args: readonly string[];
  readonly shimArgs: readonly string[];
  readonly files: VmFiles;
  /** Until QMP answers. */
  readonly deadlineMs: number;
  readonly qmp: { connectTimeoutMs: number; callTimeoutMs: number; onCall?: (command: string, seconds: number, ok: boolean) => void };
  readonly signal?: AbortSignal;
}

export interface Launched {
  readonly qmp: QmpClient;
  readonly ref: ProcessRef;
  readonly child: ChildProcess;
  readonly startedAt: number;
}

/** Starts QEMU through its shell and connects to its QMP socket. */
export async function launch(o: LaunchOptions): Promise<Launched> {
  const { files } = o;
  await Promise.all([files.qmp, files.pid, files.exit].map((f) => rm(f, { force: true })));
  const log = await open(files.log, 'a', 0o600);
  let child: ChildProcess;
  try {
    await log.write(`--- dwcp: starting QEMU for ${o.id} at ${new Date().toISOString()}: ${o.binary} ${o.args.join(' ')}\n`);
    child = spawn(o.shell, [...o.shimArgs], { detached: true, stdio: ['ignore', log.fd, log.fd], cwd: files.dir });
  } finally {
    await log.close();
  }
  child.unref();
  const startedAt = Date.now();
  let ended: string | null = null;
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => resolve());
    child.once('error', (err) => {
      ended = `could not start ${o.shell}: ${err.message}`;
      resolve();
    });
  });
  const deadline = performance.now() + o.deadlineMs;
  try {
    for (;;) {
      if (o.signal?.aborted) throw new LaunchError('cut short: dwcpd is stopping');
      if (child.exitCode !== null || child.signalCode !== null || ended !== null) throw new LaunchError(ended ?? `QEMU exited at once: ${await endOf(files)}`);
      const remaining = deadline - performance.now();
      if (remaining <= 0) throw new LaunchError(`QMP did not answer within ${o.deadlineMs} ms of starting QEMU`);
      let qmp: QmpClient;
      try {
        qmp = await QmpClient.connect({ path: files.qmp, connectTimeoutMs: Math.max(1, Math.min(remaining, o.qmp.connectTimeoutMs)), callTimeoutMs: o.qmp.callTimeoutMs, ...(o.qmp.onCall ? { onCall: o.qmp.onCall } : {}) });
      } catch (err) {
        // Not listening yet (QEMU is starting): try again shortly, unless QEMU has ended.
        if (err instanceof QmpError && err.code === 'unavailable') {
          await Promise.race([exited, delay(50)]);
          continue;
        }
        throw err;
      }
      await chmod(files.qmp, 0o600);
      const pid = Number((await readFile(files.pid, 'utf8')).trim());
      const info = await readProcess(pid);
      if (info === null || !isGuestCommandLine(info.argv, o.id, files.qmp)) {
        qmp.close();
        throw new LaunchError(`QEMU's pid file names ${pid}, which is not this guest's QEMU`);
      }
      return { qmp, ref: { pid, startTicks: info.startTicks, shimPid: child.pid ?? 0 }, child, startedAt };
    }
  } catch (err) {
    // Nothing of a failed launch may linger: the shell leads its own process group (detached), QEMU is in it.
    if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // Already gone.
      }
      await exited;
    }
    if (err instanceof LaunchError) throw err;
    throw new LaunchError(err instanceof Error ? err.message : String(err), { cause: err });
  }
}

/** "exited with status 1: <QEMU's last log line>", or what is known, for a QEMU that ended during its launch. */
async function endOf(files: VmFiles): Promise<string> {
  const status = await readExitStatus(files.exit);
  const tail = await logTail(files.log);
  const how = status === null ? 'ended' : status > 128 ? `was killed by signal ${status - 128}` : `exited with status ${status}`;
  return tail === null ? how : `${how}: ${tail}`;
}

/** The status the guest's shell recorded, or null when there is none (yet). */
export async function readExitStatus(file: string): Promise<number | null> {
  try {
    const n = Number((await readFile(file, 'utf8')).trim());
    return Number.isInteger(n) && n >= 0 ? n : null;
  } catch {
    return null;
  }
}

const TAIL_BYTES = 4096;

/** The last line QEMU wrote to its log that is not dwcp's own, or null. */
export async function logTail(file: string): Promise<string | null> {
  let text: string;
  try {
    const handle = await open(file, 'r');
    try {
      const { size } = await handle.stat();
      const start = Math.max(0, size - TAIL_BYTES);
      const buffer = Buffer.alloc(size - start);
      await handle.read(buffer, 0, buffer.length, start);
      text = buffer.toString('utf8');
    } finally {
      await handle.close();
    }
  } catch {
    return null;
  }
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('--- dwcp:'));
  const last = lines.at(-1);
  return last === undefined ? null : last.slice(0, 300);
}

/** SIGKILLs the guest's QEMU if it is still the one `ref` names; true if it was signalled. */
export async function killGuest(ref: ProcessRef, id: string, files: VmFiles): Promise<boolean> {
  const seen = await recognise(ref, id, files);
  if (seen.kind !== 'ours') return false;
  try {
    process.kill(ref.pid, 'SIGKILL');
    return true;
  } catch {
    return false;
  }
}

/** Whether the guest's shell (which writes the exit status) is still running. */
export async function shellRunning(ref: ProcessRef, files: VmFiles): Promise<boolean> {
  const info = await readProcess(ref.shimPid);
  return info !== null && info.argv.includes('dwcp-qemu') && info.argv.includes(files.exit);
}
