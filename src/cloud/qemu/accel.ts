/**
 * Which accelerator the guests of this host run on. `tcg` and `kvm` are
 * taken as configured; `auto` must prove KVM works before using it, because
 * KVM's presence is no proof: on a nested-virtualisation host /dev/kvm opens
 * and QMP reports KVM enabled, yet a Linux guest hangs right after its
 * real-mode setup ("Probing EDD"), while a hand-made boot sector that enters
 * long mode and touches 256 MiB runs fine. So the probe boots a real kernel.
 *
 * The probe: the host's kernel (kvmProbeKernel, default the newest
 * /boot/vmlinuz-*) booted under KVM with no root filesystem and `panic=-1`,
 * `-no-reboot`: a kernel that gets through its whole start-up panics for
 * want of a root filesystem and QEMU exits at once. KVM works when that
 * happens within the deadline (about a second on working KVM) and the
 * serial output shows the panic; anything else (the deadline passes, QEMU
 * fails) falls back to TCG, and the reason is returned for the log line.
 */
import { spawn } from 'node:child_process';
import { access, constants, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Accel } from './qemu-command.ts';

export type AccelMode = 'auto' | 'kvm' | 'tcg';

export interface AccelChoice {
  /** Null: the configured accelerator cannot be used (kvm without a usable /dev/kvm); `reason` says why. */
  readonly accel: Accel | null;
  readonly reason: string;
}

export interface AccelOptions {
  readonly mode: AccelMode;
  readonly binary: string;
  readonly probeKernel?: string | undefined;
  readonly probeTimeoutMs: number;
  readonly kvmDevice?: string;
  readonly signal?: AbortSignal;
}

/** The newest /boot/vmlinuz-*, or null. */
export async function newestHostKernel(boot = '/boot'): Promise<string | null> {
  try {
    const kernels = (await readdir(boot)).filter((n) => n.startsWith('vmlinuz-')).sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
    return kernels[0] === undefined ? null : join(boot, kernels[0]);
  } catch {
    return null;
  }
}

export async function chooseAccel(o: AccelOptions): Promise<AccelChoice> {
  if (o.mode === 'tcg') return { accel: 'tcg', reason: 'configured (accel: tcg)' };
  const device = o.kvmDevice ?? '/dev/kvm';
  try {
    await access(device, constants.R_OK | constants.W_OK);
  } catch (err) {
    const why = `${device} is not usable by this user (${(err as NodeJS.ErrnoException).code ?? String(err)})`;
    return o.mode === 'kvm' ? { accel: null, reason: `accel: kvm is configured but ${why}` } : { accel: 'tcg', reason: `${why}: using TCG` };
  }
  if (o.mode === 'kvm') return { accel: 'kvm', reason: 'configured (accel: kvm)' };
  const kernel = o.probeKernel ?? (await newestHostKernel());
  if (kernel === null) return { accel: 'tcg', reason: 'no kernel to prove KVM with (set kvmProbeKernel; none in /boot): using TCG' };
  const probe = await probeBoot(o.binary, kernel, o.probeTimeoutMs, o.signal);
  return probe.ok ? { accel: 'kvm', reason: `a probe boot of ${kernel} under KVM finished in ${probe.ms} ms` } : { accel: 'tcg', reason: `KVM is present but a probe boot of ${kernel} under it ${probe.why}: using TCG` };
}

const MAX_PROBE_OUTPUT = 256 * 1024;

async function probeBoot(binary: string, kernel: string, timeoutMs: number, signal: AbortSignal | undefined): Promise<{ ok: true; ms: number } | { ok: false; why: string }> {
  const started = performance.now();
  const args = ['-machine', 'pc', '-accel', 'kvm', '-cpu', 'host', '-m', '128M', '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-serial', 'stdio', '-kernel', kernel, '-append', 'console=ttyS0 panic=-1 loglevel=3'];
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const take = (chunk: Buffer): void => {
    if (output.length < MAX_PROBE_OUTPUT) output += chunk.toString('latin1');
  };
  child.stdout.on('data', take);
  child.stderr.on('data', take);
  return new Promise((resolve) => {
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    const onAbort = (): void => {
      child.kill('SIGKILL');
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    child.once('error', (err) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      resolve({ ok: false, why: `could not start (${err.message})` });
    });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      const ms = Math.round(performance.now() - started);
      if (timedOut) resolve({ ok: false, why: `did not finish within ${timeoutMs} ms (nested virtualisation?)` });
      else if (signal?.aborted) resolve({ ok: false, why: 'was cut short (dwcpd is stopping)' });
      else if (code === 0 && /Kernel panic/.test(output)) resolve({ ok: true, ms });
      else resolve({ ok: false, why: `ended without reaching the end of the kernel's start-up (${sig === null ? `status ${code}` : `signal ${sig}`}; ${lastLine(output)})` });
    });
  });
}

function lastLine(text: string): string {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  return (lines.at(-1) ?? 'no output').slice(0, 200);
}
