/**
 * What Linux's /proc says about one process: whether it is alive (and not a
 * zombie), when it started, its command line, the CPU time it used and its
 * resident memory. The qemu provider uses it to tell its own QEMU from a
 * process that reused the pid, and to measure a guest's real use.
 *
 * The parsers are pure (text in, fields out) and tested on captured text;
 * `readProcess` is the thin reader.
 *
 * Invariants:
 * - A process that is gone, or a zombie (exited, not yet reaped: it holds no
 *   resources and will never answer), or exiting (its memory, and with it
 *   its command line, already released), reads as null: never as alive.
 * - `startTicks` (field 22 of stat, clock ticks since boot) with the pid
 *   names one process for the life of the host: a reused pid has a later
 *   start.
 * - CPU time is in seconds: Linux reports it to user space in USER_HZ ticks,
 *   which is 100 on every architecture Linux exports it for (a fixed ABI,
 *   unlike the kernel's internal HZ).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

export const USER_HZ = 100;

export interface ProcStat {
  /** R, S, D, Z, T, … */
  readonly state: string;
  readonly cpuSeconds: number;
  readonly startTicks: number;
  /** Threads of the process (QEMU has one per vCPU plus its own). */
  readonly threads: number;
}

export interface ProcessInfo extends ProcStat {
  readonly pid: number;
  readonly argv: readonly string[];
  /** VmRSS; null when the kernel did not say (a kernel thread). */
  readonly rssBytes: number | null;
}

/**
 * /proc/PID/stat: the command name is in parentheses and may itself hold
 * spaces and parentheses, so fields are counted from the last ")".
 */
export function parseStat(text: string): ProcStat {
  const close = text.lastIndexOf(')');
  if (close < 0) throw new Error('not a /proc/PID/stat line: no ")"');
  const fields = text.slice(close + 2).trim().split(/\s+/);
  // fields[0] is field 3 (state); field N is fields[N - 3].
  const at = (n: number): number => {
    const v = Number(fields[n - 3]);
    if (!Number.isFinite(v)) throw new Error(`not a /proc/PID/stat line: field ${n} is ${JSON.stringify(fields[n - 3])}`);
    return v;
  };
  return { state: fields[0] ?? '?', cpuSeconds: (at(14) + at(15)) / USER_HZ, startTicks: at(22), threads: at(20) };
}

/** /proc/PID/cmdline: NUL-separated arguments. */
export function parseCmdline(bytes: Buffer): string[] {
  const text = bytes.toString('utf8');
  const parts = text.split('\0');
  if (parts.at(-1) === '') parts.pop();
  return parts;
}

/** VmRSS from /proc/PID/status, in bytes. */
export function parseRss(status: string): number | null {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  return m ? Number(m[1]) * 1024 : null;
}

/**
 * The process as /proc shows it now; null when it is gone, a zombie, or on
 * its way to being one. A dying process gives up its memory (so its cmdline
 * reads empty) before its state turns Z, and the three files are separate
 * reads: an empty command line is taken as that window, never as a process
 * we could recognise. (Kernel threads also have none; we never own one.)
 */
export async function readProcess(pid: number, proc = '/proc'): Promise<ProcessInfo | null> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  try {
    const [stat, cmdline, status] = await Promise.all([
      readFile(`${proc}/${pid}/stat`, 'utf8'),
      readFile(`${proc}/${pid}/cmdline`),
      readFile(`${proc}/${pid}/status`, 'utf8'),
    ]);
    const parsed = parseStat(stat);
    if (parsed.state === 'Z' || parsed.state === 'X') return null;
    const argv = parseCmdline(cmdline);
    if (argv.length === 0) return null;
    return { pid, ...parsed, argv, rssBytes: parseRss(status) };
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // ENOENT: gone; ESRCH: went while being read.
    if (code === 'ENOENT' || code === 'ESRCH') return null;
    throw err;
  }
}

/**
 * The processes whose command line contains `text` (a guest's or a run's
 * directory), arguments joined by spaces. Synchronous, so that an 'exit'
 * handler can find what it must stop; a process gone while listed is left out.
 */
export function processesNaming(text: string, proc = '/proc'): { pid: number; cmdline: string }[] {
  return readdirSync(proc)
    .filter((entry) => /^\d+$/.test(entry))
    .flatMap((entry) => {
      try {
        const cmdline = parseCmdline(readFileSync(`${proc}/${entry}/cmdline`)).join(' ');
        return cmdline.includes(text) ? [{ pid: Number(entry), cmdline }] : [];
      } catch {
        return [];
      }
    });
}
