/**
 * The bench smoke tests' one way to run a bench: bench/run.ts in a child
 * process on this Node.js, its exit code and output (a non-zero exit is an
 * answer, not an error), and the matcher for the figures they only require
 * to be measured. They say nothing about speed.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

const RUN = fileURLToPath(new URL('../../bench/run.ts', import.meta.url));

export interface BenchOutcome {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `node bench/run.ts ...args`; killed after `timeout` ms (20 s unless told); `maxBuffer` as execFile's (1 MiB unless told). */
export function runBench(args: string[], opts: { timeout?: number; maxBuffer?: number } = {}): Promise<BenchOutcome> {
  const { timeout = 20_000, maxBuffer } = opts;
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [RUN, ...args], { timeout, ...(maxBuffer === undefined ? {} : { maxBuffer }) }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') reject(err);
      else resolve({ code: err === null ? 0 : Number(err.code), stdout, stderr });
    });
  });
}

/** A finite figure above zero. */
export const positive = expect.toSatisfy((v: unknown) => typeof v === 'number' && Number.isFinite(v) && v > 0);
