/**
 * planReload: which SIGHUPs apply live and which are refused whole because
 * they change trust or consensus membership (src/daemon/reload.ts).
 */
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config/load.ts';
import type { DwcpConfig } from '../../src/config/schema.ts';
import { planReload } from '../../src/daemon/reload.ts';
import { configScratch, memberLine } from '../support/config-file.ts';

const scratch = configScratch();
afterAll(() => scratch.remove());

const peerIds: string[] = [];
beforeAll(async () => {
  for (let i = 0; i < 5; i++) peerIds.push(peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString());
});

/** This node dc1 (onprem) and members m1… with the given trust ('t' trusted, 'u' untrusted). */
function config(trusts: string, extra = ''): DwcpConfig {
  const members = [...trusts].map((t, i) => memberLine(`m${i + 1}`, peerIds[i] as string, 'onprem', t === 'u' ? ', trust: untrusted' : '')).join('');
  const text = `federation: acme\nnode: {name: dc1, region: fra1, provider: onprem}\n${extra}members:\n${members}`;
  return resolveConfig({ configPath: scratch.file(text), env: {} });
}

describe('planReload', () => {
  it('applies a log level and added or removed trusted members live (Raft membership lives in its log)', () => {
    expect(planReload(config('tt'), config('ttt', 'logLevel: debug\n'))).toEqual({ kind: 'apply', needRestart: [] });
    expect(planReload(config('ttt'), config('t'))).toEqual({ kind: 'apply', needRestart: [] });
  });

  it('names raft: and pbft: changes as needing a restart, and applies the rest', () => {
    expect(planReload(config('tt'), config('tt', 'raft: {electionTicks: 20}\npbft: {logWindow: 256}\n'))).toEqual({ kind: 'apply', needRestart: ['raft', 'pbft'] });
  });

  it('names a changed garbage budget as needing a restart (the driver is started once per process)', () => {
    expect(config('tt').gcBudgetMiB).toBe(0);
    expect(planReload(config('tt'), config('tt', 'gcBudgetMiB: 48\n'))).toEqual({ kind: 'apply', needRestart: ['gcBudgetMiB'] });
    expect(() => config('tt', 'gcBudgetMiB: -1\n')).toThrow(/gcBudgetMiB/);
  });

  it('refuses a member whose trust flips, and the switch of the federation scope it causes', () => {
    expect(planReload(config('ttt'), config('ttu'))).toEqual({ kind: 'refuse', changes: ['member m3: trust trusted -> untrusted', 'federation scope: Raft -> PBFT'] });
    expect(planReload(config('ttu'), config('ttt'))).toEqual({ kind: 'refuse', changes: ['member m3: trust untrusted -> trusted', 'federation scope: PBFT -> Raft'] });
  });

  it('refuses a change of the PBFT replica set, even by a trusted member', () => {
    expect(planReload(config('ttu'), config('ttut'))).toEqual({ kind: 'refuse', changes: ['PBFT replicas: dc1,m1,m2,m3 -> dc1,m1,m2,m3,m4'] });
  });

  it('refuses a new untrusted member that would start PBFT', () => {
    expect(planReload(config('ttt'), config('tttu')).kind).toBe('refuse');
  });
});
