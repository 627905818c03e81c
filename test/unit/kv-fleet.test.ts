/**
 * Fleet commands in the KV log: a fleet command is a KV write (op fleet) that
 * the KV state machine hands to the fleet state machine it carries. Checked:
 * the answer comes back (refusals included), a retried command gets its first
 * answer from the session, malformed fleet bytes never reach the log, and the
 * fleet state survives snapshot and restore byte for byte.
 */
import { describe, expect, it } from 'vitest';
import { decodeKvCommand, encodeKvCommand, KvResultSchema, type KvCommand } from '../../src/kv/command.ts';
import { KvStateMachine } from '../../src/kv/state-machine.ts';
import { encodeFleetCommand } from '../../src/fleet/commands.ts';
import { assign, create, localProvider, registerRegion, spec } from './fleet-fixtures.ts';

function fleetCommand(clientId: string, seq: number, command: Uint8Array): Uint8Array {
  const cmd: KvCommand = { clientId, seq, op: 'fleet', command };
  return encodeKvCommand(cmd);
}

describe('fleet commands in the KV log', () => {
  it('applies them through the fleet state machine and answers with its result, refusals included', () => {
    const kv = new KvStateMachine();
    const region = kv.apply(1, fleetCommand('s1', 1, encodeFleetCommand(registerRegion('eu-1', [localProvider(4, 8)]))));
    expect(region).toMatchObject({ ok: true, op: 'fleet', revision: 1, result: { ok: true, kind: 'register-region' } });
    expect(kv.apply(2, fleetCommand('s1', 2, encodeFleetCommand(create(spec('web1')))))).toMatchObject({ result: { ok: true, kind: 'create' } });
    expect(kv.apply(3, fleetCommand('s1', 3, encodeFleetCommand(assign('web1', 'eu-1', 1))))).toMatchObject({ result: { ok: true, kind: 'assign', region: 'eu-1' } });
    const big = kv.apply(4, fleetCommand('s2', 1, encodeFleetCommand(create(spec('big', { vcpus: 4 })))));
    expect(big).toMatchObject({ result: { ok: true } });
    const full = kv.apply(5, fleetCommand('s2', 2, encodeFleetCommand(assign('big', 'eu-1', 1))));
    expect(full).toMatchObject({ ok: true, op: 'fleet', result: { ok: false, code: 'insufficient_capacity' } });
    expect(kv.fleet.vm('web1')?.assignment).toMatchObject({ region: 'eu-1', generation: 1 });
    // The result crosses the wire (forwarded writes, PBFT replies) intact.
    expect(KvResultSchema.decode(KvResultSchema.encode(full))).toEqual(full);
  });

  it('answers a retried command from the session instead of applying it twice', () => {
    const kv = new KvStateMachine();
    const bytes = fleetCommand('s1', 1, encodeFleetCommand(registerRegion('eu-1', [localProvider(4, 8)])));
    kv.apply(1, bytes);
    const createWeb = fleetCommand('s1', 2, encodeFleetCommand(create(spec('web1'))));
    const first = kv.apply(2, createWeb);
    // Applied again, a create would be refused as name_taken: the session returns the first answer.
    expect(kv.apply(3, createWeb)).toEqual(first);
    expect(kv.fleet.vms()).toHaveLength(1);
  });

  it('refuses bytes that are not a fleet command at decode, naming the field', () => {
    const bad = encodeKvCommand({ clientId: 's1', seq: 1, op: 'put', key: 'k', value: new Uint8Array() });
    expect(() => fleetCommand('s1', 1, new TextEncoder().encode('{"kind":"create"}'))).toThrow(/command/);
    expect(() => fleetCommand('s1', 1, bad)).toThrow(/is not a valid fleet command/);
    const kv = new KvStateMachine();
    // A corrupted entry (never proposed by a correct node) changes nothing.
    const valid = fleetCommand('s1', 1, encodeFleetCommand(create(spec('web1'))));
    const corrupted = Uint8Array.from(valid);
    corrupted[corrupted.length - 3] = 0x7b;
    expect(kv.apply(1, corrupted)).toMatchObject({ ok: false, reason: 'invalid_command' });
    expect(kv.fleet.vms()).toHaveLength(0);
    expect(decodeKvCommand(valid)).toMatchObject({ op: 'fleet' });
  });

  it('carries the fleet state through snapshot and restore, byte for byte', () => {
    const kv = new KvStateMachine();
    expect(KvStateMachine.restore(kv.snapshot()).snapshot()).toEqual(kv.snapshot());
    kv.apply(1, fleetCommand('s1', 1, encodeFleetCommand(registerRegion('eu-1', [localProvider(4, 8)], { jurisdiction: 'eu' }))));
    kv.apply(2, fleetCommand('s1', 2, encodeFleetCommand(create(spec('web1')))));
    kv.apply(3, fleetCommand('s1', 3, encodeFleetCommand(assign('web1', 'eu-1', 1))));
    const snap = kv.snapshot();
    const restored = KvStateMachine.restore(snap);
    expect(restored.snapshot()).toEqual(snap);
    expect(restored.fleet.vm('web1')?.assignment).toMatchObject({ region: 'eu-1', provider: 'local', generation: 1 });
    expect(restored.fleet.regionUsage('eu-1')).toMatchObject({ vcpus: 2, instances: 1 });
    // The retried create still answers from the restored session.
    expect(restored.apply(4, fleetCommand('s1', 3, encodeFleetCommand(assign('web1', 'eu-1', 1))))).toMatchObject({ result: { ok: true } });
  });
});
