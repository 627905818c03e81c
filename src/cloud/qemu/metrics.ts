/**
 * The qemu provider's Prometheus metrics: its guests by state, every QMP call
 * it makes (a histogram of durations by command and result), and each
 * guest's real use as last sampled: CPU seconds of its QEMU process, resident
 * memory, vCPUs, and bytes its disk read and wrote.
 *
 * Invariants: `vm` is the instance id (unique; a name may repeat), so the
 * series of a guest that is terminated disappear at the next sample rather
 * than linger; `command` is one of the QMP commands the provider sends (a
 * closed set in its code), `result` ok|error, `state` the five instance
 * states, all exported (zeros included). Per-guest values are set from the
 * provider's samples, so a counter here is QEMU's own cumulative figure, not
 * a sum dwcpd keeps: it restarts with the guest's QEMU, which rate() handles.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { INSTANCE_STATES, type InstanceState } from '../provider.ts';

/** One guest's use, as the provider last measured it. */
export interface VmUtilisation {
  readonly id: string;
  readonly name: string;
  readonly vcpus: number;
  /** User plus system CPU time of the QEMU process since it started (vCPU threads included). */
  readonly cpuSeconds: number;
  /** Resident memory of the QEMU process. */
  readonly memoryBytes: number;
  /** What the guest itself reports through the balloon device; null until it has. */
  readonly guestMemory: { readonly totalBytes: number; readonly availableBytes: number } | null;
  /** From QMP query-blockstats, since QEMU started. */
  readonly diskReadBytes: number;
  readonly diskWrittenBytes: number;
  /** Null: the guest has no network interface. */
  readonly network: { readonly receivedBytes: number; readonly sentBytes: number } | null;
  /** Epoch ms. */
  readonly sampledAt: number;
}

export interface QemuMetrics {
  /** A QMP command finished. */
  observeQmp(command: string, seconds: number, ok: boolean): void;
  setGuests(counts: Readonly<Record<InstanceState, number>>): void;
  /** Replaces the per-guest figures with these samples (guests absent here drop out). */
  setUtilisation(samples: readonly VmUtilisation[]): void;
}

/** QMP answers in well under a millisecond on an idle host; a loaded TCG host or a stuck guest takes seconds. */
const QMP_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function createQemuMetrics(registers: Registry[]): QemuMetrics {
  let samples: readonly VmUtilisation[] = [];
  const qmp = new Histogram({
    name: 'dwcp_qemu_qmp_duration_seconds',
    help: 'Duration of QMP commands the qemu provider sent to its guests, by command and result (ok|error).',
    labelNames: ['command', 'result'],
    buckets: QMP_BUCKETS,
    registers,
  });
  const guests = new Gauge({
    name: 'dwcp_qemu_guests',
    help: 'QEMU guests of this host by instance state.',
    labelNames: ['state'],
    registers,
  });
  for (const state of INSTANCE_STATES) guests.set({ state }, 0);
  new Counter({
    name: 'dwcp_vm_cpu_seconds_total',
    help: 'CPU time (user plus system) of each guest\'s QEMU process since it started, from /proc.',
    labelNames: ['vm'],
    registers,
    collect() {
      this.reset();
      for (const s of samples) this.inc({ vm: s.id }, s.cpuSeconds);
    },
  });
  new Gauge({
    name: 'dwcp_vm_memory_bytes',
    help: 'Resident memory of each guest\'s QEMU process, from /proc.',
    labelNames: ['vm'],
    registers,
    collect() {
      this.reset();
      for (const s of samples) this.set({ vm: s.id }, s.memoryBytes);
    },
  });
  new Gauge({
    name: 'dwcp_vm_vcpus',
    help: 'vCPUs of each running guest.',
    labelNames: ['vm'],
    registers,
    collect() {
      this.reset();
      for (const s of samples) this.set({ vm: s.id }, s.vcpus);
    },
  });
  new Counter({
    name: 'dwcp_vm_disk_bytes_total',
    help: 'Bytes each guest read from and wrote to its disk since its QEMU started (QMP query-blockstats), by direction (read|write).',
    labelNames: ['vm', 'direction'],
    registers,
    collect() {
      this.reset();
      for (const s of samples) {
        this.inc({ vm: s.id, direction: 'read' }, s.diskReadBytes);
        this.inc({ vm: s.id, direction: 'write' }, s.diskWrittenBytes);
      }
    },
  });
  return {
    observeQmp(command, seconds, ok) {
      qmp.observe({ command, result: ok ? 'ok' : 'error' }, seconds);
    },
    setGuests(counts) {
      for (const state of INSTANCE_STATES) guests.set({ state }, counts[state]);
    },
    setUtilisation(next) {
      samples = [...next];
    },
  };
}
