/**
 * dwcpctl against a RaftCluster's fleet, as the fleet's real-process tests
 * (migration, DR) drive it: a command with a generous timeout, its --json
 * output parsed (stderr must be empty), a VM's desired record and every
 * region's copies of it, and a wait until a VM runs where it should.
 */
import { expect } from 'vitest';
import type { FleetDesiredVm, FleetVm } from '../../src/admin/schema.ts';
import type { RaftCluster } from './raft-cluster.ts';
import { eventually, type CtlResult } from './harness.ts';

export interface FleetCtl {
  ctl(i: number, ...args: string[]): Promise<CtlResult>;
  json<T>(i: number, ...args: string[]): Promise<T>;
  desired(i: number, name: string): Promise<FleetDesiredVm | undefined>;
  /** Every region's copies of a VM, as node i sees the fleet. */
  copies(i: number, name: string): Promise<FleetVm[]>;
  runningAt(i: number, name: string, region: string, generation: string): Promise<void>;
}

/** `cluster` is read at each call (tests assign it in beforeAll). */
export function fleetCtl(cluster: () => RaftCluster, settleMs: number): FleetCtl {
  const ctl = (i: number, ...args: string[]): Promise<CtlResult> => cluster().ctl(i, '--timeout', '60s', ...args);
  async function json<T>(i: number, ...args: string[]): Promise<T> {
    const res = await ctl(i, ...args, '--json');
    expect(res.stderr, `n${i + 1}: ${args.join(' ')}`).toBe('');
    return JSON.parse(res.stdout) as T;
  }
  const desired = async (i: number, name: string): Promise<FleetDesiredVm | undefined> => (await json<{ vms: FleetDesiredVm[] }>(i, 'vm', 'list', '--desired', name)).vms[0];
  const copies = async (i: number, name: string): Promise<FleetVm[]> => (await json<{ vms: FleetVm[] }>(i, 'vm', 'list', '--all')).vms.filter((v) => v.desired_vm === name);
  async function runningAt(i: number, name: string, region: string, generation: string): Promise<void> {
    await eventually(`${name} running at ${region} g${generation} (seen from n${i + 1})`, settleMs, async () => {
      const vm = await desired(i, name);
      return vm?.region === region && vm.generation === generation && vm.status === 'running' ? vm : undefined;
    });
  }
  return { ctl, json, desired, copies, runningAt };
}
