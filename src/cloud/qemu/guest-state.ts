/**
 * The qemu provider's judgements, pure: which instance state a QEMU run
 * status means, how a guest's end is told to people, and whether a guest
 * fits the host's declared capacity and its filesystem.
 *
 * Invariants:
 * - Every QEMU run status maps to one instance state, and QEMU's own word
 *   stays visible as the provider state (`paused`, `io-error`, …): a QEMU
 *   that holds its memory counts as running for capacity even when its
 *   guest does not run.
 * - Capacity counts the vCPUs and memory of guests that hold them (pending,
 *   running, stopping) and the disks of every guest not terminated (a
 *   stopped guest keeps its disk); the answer names the VM, its size and the
 *   limit it would pass.
 */
import type { InstanceState } from '../provider.ts';
import { describeExitStatus } from './qemu-command.ts';

/** QEMU's RunState (query-status) as an instance state. */
export function stateOfRunStatus(status: string): InstanceState {
  switch (status) {
    case 'running':
      return 'running';
    case 'prelaunch':
    case 'inmigrate':
    case 'restore-vm':
      return 'pending';
    case 'shutdown':
      return 'stopping';
    default:
      // paused, suspended, postmigrate, finish-migrate, save-vm, debug, guest-panicked, internal-error, io-error, watchdog, colo:
      // the process holds the guest's memory and CPUs; the provider state says why it does not run.
      return 'running';
  }
}

/** The SHUTDOWN event's reason (QAPI ShutdownCause) in words. */
const SHUTDOWN_CAUSES: Readonly<Record<string, string>> = {
  'guest-shutdown': 'the guest powered off',
  'guest-reset': 'the guest reset',
  'guest-panic': 'the guest panicked',
  'host-qmp-quit': 'quit through QMP',
  'host-qmp-system-reset': 'reset through QMP',
  'host-signal': 'QEMU was sent a termination signal',
  'host-ui': 'closed from the QEMU user interface',
  'host-error': 'QEMU hit an error',
  'subsystem-reset': 'a subsystem reset',
  'snapshot-load': 'a snapshot was loaded',
};

export interface GuestEnd {
  /** The exit status the shell recorded (128+N: killed by signal N); null when none was recorded. */
  readonly exitStatus: number | null;
  /** The reason of QEMU's last SHUTDOWN event, when dwcpd saw one. */
  readonly shutdownCause: string | null;
  /** What dwcpd had asked, when the end was its own doing. */
  readonly requested: 'stop' | 'terminate' | null;
  /** QEMU's last log line, for an end that was an error. */
  readonly logTail: string | null;
}

/** One line for people: "the guest powered off", "killed by SIGKILL (signal 9)", "exited with status 1: qemu-system-x86_64: …". */
export function describeGuestEnd(end: GuestEnd): string {
  const parts: string[] = [];
  if (end.requested === 'stop') parts.push('stopped by dwcp');
  if (end.requested === 'terminate') parts.push('terminated by dwcp');
  if (end.shutdownCause !== null) parts.push(SHUTDOWN_CAUSES[end.shutdownCause] ?? `shutdown (${end.shutdownCause})`);
  if (end.exitStatus === null) {
    if (end.shutdownCause === null && end.requested === null) parts.push('QEMU ended without a shutdown event and without an exit status (its shell was killed too, or the host restarted)');
  } else if (end.exitStatus !== 0 || end.shutdownCause === null) {
    const status = describeExitStatus(end.exitStatus);
    const signalled = end.exitStatus > 128;
    parts.push(!signalled && end.exitStatus !== 0 && end.logTail !== null ? `QEMU ${status}: ${end.logTail}` : `QEMU ${status}`);
  }
  return parts.join(': ');
}

export interface Footprint {
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly diskBytes: number;
}

export interface HostCapacity {
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly diskBytes: number;
}

export interface CapacityQuestion {
  /** "VM web1 (qemu.small)". */
  readonly vm: string;
  readonly want: Footprint;
  /** Whether the disk is new (a create): a start re-uses its disk. */
  readonly newDisk: boolean;
  /** Guests holding CPUs and memory now, the one asked about excluded. */
  readonly running: readonly Footprint[];
  /** Every guest's disk that is not terminated, the one asked about excluded. */
  readonly disks: readonly number[];
  readonly capacity: HostCapacity;
  /** Free bytes of the filesystem the disks live on; null when unknown. */
  readonly filesystemFreeBytes: number | null;
}

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

function gib(bytes: number): string {
  return `${(bytes / GIB).toFixed(bytes % GIB === 0 ? 0 : 1)} GiB`;
}

/** Null when the guest fits; else why not, naming the VM and the limit. */
export function capacityProblem(q: CapacityQuestion): string | null {
  const vcpus = q.running.reduce((n, f) => n + f.vcpus, q.want.vcpus);
  const memoryMiB = q.running.reduce((n, f) => n + f.memoryMiB, q.want.memoryMiB);
  const size = `${q.want.vcpus} vCPU, ${q.want.memoryMiB} MiB, ${gib(q.want.diskBytes)} disk`;
  if (vcpus > q.capacity.vcpus || memoryMiB > q.capacity.memoryMiB) {
    return `not enough capacity on this host for ${q.vm} (${size}): would use ${vcpus}/${q.capacity.vcpus} vCPUs and ${memoryMiB}/${q.capacity.memoryMiB} MiB`;
  }
  if (!q.newDisk) return null;
  const disk = q.disks.reduce((n, d) => n + d, q.want.diskBytes);
  if (disk > q.capacity.diskBytes) return `not enough disk capacity on this host for ${q.vm} (${size}): disks would total ${gib(disk)} of the ${gib(q.capacity.diskBytes)} declared`;
  if (q.filesystemFreeBytes !== null && q.want.diskBytes > q.filesystemFreeBytes) {
    return `${q.vm}: its ${gib(q.want.diskBytes)} disk does not fit the filesystem of the qemu data directory (${gib(q.filesystemFreeBytes)} free)`;
  }
  return null;
}
