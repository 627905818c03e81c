/**
 * dwcpctl against a RaftCluster's nodes as the fleet's real-process tests
 * drive it: answers as JSON (stderr must be empty), the desired state of a
 * VM, and the wait for a VM to run where and at the generation expected.
 */
import { expect } from 'vitest';
import type { FleetDesiredVm } from '../../src/admin/schema.ts';
import type { RaftCluster } from './raft-cluster.ts';
import { eventually, type CtlResult } from './harness.ts';

export interface FleetCtl {
  ctl(i: number, ...args: string[]): Promise<CtlResult>;
  json<T>(i: number, ...args: string[]): Promise<T>;
  desired(i: number, name: string): Promise<FleetDesiredVm | undefined>;
  /** Waits until node i sees `name` running at `region` at `generation`. */
  runningAt(i: number, name: string, region: string, generation: string): Promise<void>;
}

/** `cluster()` is read at each call (the cluster is started in beforeAll); waits last at most `settleMs`. */
export function fleetCtl(cluster: () => RaftCluster, settleMs: number): FleetCtl {
  const ctl = (i: number, ...args: string[]): Promise<CtlResult> => cluster().ctl(i, '--timeout', '60s', ...args);
  const json = async <T>(i: number, ...args: string[]): Promise<T> => {
    const res = await ctl(i, ...args, '--json');
    expect(res.stderr, `n${i + 1}: ${args.join(' ')}`).toBe('');
    return JSON.parse(res.stdout) as T;
  };
  const desired = async (i: number, name: string): Promise<FleetDesiredVm | undefined> => (await json<{ vms: FleetDesiredVm[] }>(i, 'vm', 'list', '--desired', name)).vms[0];
  const runningAt = async (i: number, name: string, region: string, generation: string): Promise<void> => {
    await eventually(`${name} running at ${region} g${generation} (seen from n${i + 1})`, settleMs, async () => {
      const vm = await desired(i, name);
      return vm?.region === region && vm.generation === generation && vm.status === 'running' ? vm : undefined;
    });
  };
  return { ctl, json, desired, runningAt };
}
