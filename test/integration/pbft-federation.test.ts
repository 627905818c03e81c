/**
 * PBFT end to end: real dwcpd processes over libp2p, signing with their node
 * keys, the federation scope ordered by PBFT whenever a member is untrusted.
 *
 * - Four untrusted daemons, the view-0 primary (n1: replicas are sorted
 *   names) started with DWCP_TEST_BYZANTINE=equivocate: every write through
 *   an honest member still commits, and the three honest members end with
 *   the same executed sequence and the same values.
 * - Four untrusted daemons, the primary killed with SIGKILL: a view change
 *   completes and writes resume; restarted after the others moved past a
 *   stable checkpoint, it catches up by state transfer.
 * - A mixed federation, three trusted and two untrusted: `--scope datacenter`
 *   commits through Raft (on trusted members only), `--scope federation`
 *   through PBFT, each visible in its own metrics, and `dwcpctl status`
 *   shows which protocol serves which scope.
 *
 * Waits are on events or on polled conditions with deadlines, never sleeps.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import type { AdminClient } from '../../src/admin/client.ts';
import type { PbftStatusResponse } from '../../src/admin/schema.ts';
import { metricValue, runCtl } from './harness.ts';
import { PBFT_TIMING, RaftCluster, within } from './raft-cluster.ts';

/** One write or strong read may wait out a view change (1 s, doubling) on a loaded machine. */
const CALL_TIMEOUT_MS = 15_000;
const POLL_MS = 100;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

let cluster: RaftCluster | null = null;
afterEach(async () => {
  await cluster?.destroy();
  cluster = null;
});

function put(c: RaftCluster, i: number, key: string, value: string) {
  return c.admin(i, (a: AdminClient) => a.kv.put(key, encoder.encode(value), { scope: 'federation', client_id: '', seq: 0, timeout_ms: CALL_TIMEOUT_MS }));
}

async function localValue(c: RaftCluster, i: number, key: string): Promise<string | null> {
  const res = await c.admin(i, (a) => a.kv.get({ key, consistency: 'serializable', scope: 'federation', prefix: false, limit: 0, timeout_ms: CALL_TIMEOUT_MS }));
  const item = res.items[0];
  return item === undefined ? null : decoder.decode(item.value);
}

function pbftStatus(c: RaftCluster, i: number): Promise<PbftStatusResponse> {
  return c.admin(i, (a) => a.pbft.status());
}

/** Polls `check` until it returns a value, or fails naming `what` with the last observation. */
async function eventually<T>(what: string, budgetMs: number, check: () => Promise<T | null>, context: () => string = () => ''): Promise<T> {
  const deadline = performance.now() + budgetMs;
  let last = '';
  for (;;) {
    try {
      const value = await check();
      if (value !== null) return value;
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    if (performance.now() > deadline) throw new Error(`${what} not reached within ${budgetMs} ms ${last}\n${context()}`);
    // A poll interval, not a synchronisation: the condition is re-checked, whatever the timing.
    await delay(POLL_MS);
  }
}

describe('PBFT among four untrusted daemons', () => {
  it('keeps committing through an equivocating primary, and the honest three agree', async () => {
    // The equivocator must be the primary when the first request arrives. A start slowed by load can change the view
    // before that (an honest primary then serves, and nothing Byzantine happens): such a run proves nothing about
    // equivocation and is started again, up to three times. Safety (the honest three agree on every value) is checked
    // on every run, whatever happened.
    for (let attempt = 1; ; attempt++) {
      cluster = await RaftCluster.start('pbft-byz', 4, {
        trust: () => 'untrusted',
        env: (i) => (i === 0 ? { DWCP_TEST_BYZANTINE: 'equivocate' } : {}),
      });
      const c = cluster;
      // Every member connected to the other three before the first request: a request forwarded to a primary the
      // backups cannot reach yet is what times their view-change timers out on a loaded machine.
      await eventually('all four members connected to each other', 60_000, async () => {
        const counts = await Promise.all([0, 1, 2, 3].map(async (i) => metricValue(await c.daemon(i).scrape(), 'dwcp_members_connected')));
        return counts.every((n) => n === 3) ? true : null;
      });
      const keys = Array.from({ length: 12 }, (_, k) => `byz${attempt}/${k}`);
      for (const [k, key] of keys.entries()) {
        const res = await put(c, 1 + (k % 3), key, `v${k}`);
        expect(res.ok, key).toBe(true);
      }
      // The honest replicas converge on one executed sequence number and the same values.
      const honest = [1, 2, 3];
      const executed = await eventually('honest replicas at one executed sequence', 30_000, async () => {
        const seqs = await Promise.all(honest.map((i) => pbftStatus(c, i).then((s) => s.last_executed)));
        return seqs.every((s) => s === seqs[0]) && (seqs[0] ?? 0) >= keys.length / 2 ? seqs[0] ?? null : null;
      });
      expect(executed).toBeGreaterThan(0);
      for (const i of honest) {
        const values = await Promise.all(keys.map((key) => localValue(c, i, key)));
        expect(values, `n${i + 1}`).toEqual(keys.map((_, k) => `v${k}`));
      }
      expect(c.processes[0]?.lines.some((l) => /PBFT TEST MODE/.test(String(l.msg)))).toBe(true);
      expect(c.problems().filter((p) => !p.startsWith('n1'))).toEqual([]);
      // It did equivocate. (Whether an honest member can prove it depends on timing: a fetched commit
      // certificate proves it, a state transfer past the slot does not; test/unit/pbft-node.test.ts checks the proof.)
      const equivocated = c.processes[0]?.lines.filter((l) => l.msg === 'pbft test mode: sending conflicting pre-prepares').length ?? 0;
      if (equivocated > 0) break;
      if (attempt === 3) throw new Error('in three runs n1 never sent a pre-prepare as primary: the view moved on before every first request');
      console.log(`pbft-byz: run ${attempt}: the view moved past n1 before its first pre-prepare; starting again`);
      await cluster.destroy();
    }
  }, 300_000);

  it('changes view when the primary is killed, and the restarted primary catches up by state transfer', async () => {
    cluster = await RaftCluster.start('pbft-kill', 4, { trust: () => 'untrusted' });
    const c = cluster;
    for (let k = 0; k < 3; k++) expect((await put(c, 1, `before/${k}`, `b${k}`)).ok).toBe(true);
    // One replica's word is not enough: under load one may have started a view change alone (its status then names
    // the next view's primary, which the others do not follow, and it may stay there). The view 2f + 1 = 3 agree on is the one in force.
    const agreed = await eventually('three of the four replicas agree on the view and its primary', 30_000, async () => {
      const all = await Promise.all([0, 1, 2, 3].map((i) => pbftStatus(c, i)));
      return all.find((s) => all.filter((o) => o.view === s.view && o.primary === s.primary).length >= 3) ?? null;
    });
    const primary = agreed.primary;
    const p = Number(primary.slice(1)) - 1;
    const client = p === 1 ? 2 : 1;
    await c.stopNode(p, 'SIGKILL');

    // Enough writes to move the others two checkpoints past what the dead primary executed.
    const writes = 3 * PBFT_TIMING.checkpointInterval;
    for (let k = 0; k < writes; k++) expect((await put(c, client, `after/${k}`, `a${k}`)).ok, `after/${k}`).toBe(true);
    const survivor = await pbftStatus(c, client);
    expect(survivor.view).toBeGreaterThan(agreed.view);
    expect(survivor.primary).not.toBe(primary);
    expect(survivor.stable_checkpoint).toBeGreaterThan(PBFT_TIMING.checkpointInterval);

    const restarted = await c.startNode(p);
    const caughtUp = await eventually(`${primary} catching up to executed ${survivor.last_executed}`, 60_000, async () => {
      const s = await pbftStatus(c, p);
      return s.last_executed >= survivor.last_executed ? s : null;
    }, () => restarted.describe());
    expect(await localValue(c, p, `after/${writes - 1}`)).toBe(`a${writes - 1}`);
    // Back in service: a write through it commits (it learns the new view from the traffic if it has not yet).
    expect((await put(c, p, 'after/restart', 'r')).ok).toBe(true);
    // Peers' messages for the newer view make it ask for the new-view it missed.
    await eventually(`${primary} entering the new view`, 30_000, async () => ((await pbftStatus(c, p)).view > 0 ? true : null));
    expect(metricValue(await restarted.scrape(), 'dwcp_pbft_state_transfers_total')).toBeGreaterThanOrEqual(1);
    expect(c.problems()).toEqual([]);
  }, 180_000);
});

describe('a mixed federation: three trusted members and two untrusted', () => {
  it('routes --scope datacenter through Raft and --scope federation through PBFT', async () => {
    cluster = await RaftCluster.start('pbft-mixed', 5, { trust: (i) => (i < 3 ? 'trusted' : 'untrusted') });
    const c = cluster;
    const socket = c.nodes[0]?.socket ?? '';
    const ctl = (...args: string[]) => runCtl(['--socket', socket, '--timeout', String(CALL_TIMEOUT_MS), ...args]);
    await within(c.waitForLeader(), 30_000, 'a Raft leader', () => '');

    const dc = await ctl('kv', 'put', 'dc-key', 'raft-value', '--scope', 'datacenter');
    expect(dc.code, dc.stderr).toBe(0);
    const fed = await ctl('kv', 'put', 'fed-key', 'pbft-value', '--scope', 'federation');
    expect(fed.code, fed.stderr).toBe(0);
    // The two scopes are two logs: each key lives in its own.
    expect((await ctl('kv', 'get', 'fed-key', '--scope', 'federation')).stdout).toContain('pbft-value');
    expect((await ctl('kv', 'get', 'dc-key', '--scope', 'datacenter')).stdout).toContain('raft-value');

    const status = await ctl('status', '--json');
    expect(status.code, status.stderr).toBe(0);
    const scopes = (JSON.parse(status.stdout) as { scopes: { scope: string; protocol: string; replicas: number }[] }).scopes;
    expect(scopes).toEqual([
      { scope: 'datacenter', protocol: 'raft', replicas: 3 },
      { scope: 'federation', protocol: 'pbft', replicas: 5 },
    ]);
    const text = await c.daemon(0).scrape();
    expect(metricValue(text, 'dwcp_pbft_requests_total', { result: 'committed' })).toBeGreaterThanOrEqual(2);
    expect(metricValue(await c.daemon(c.up[0] ?? 0).scrape(), 'dwcp_raft_commit_index')).toBeGreaterThan(0);

    // An untrusted member has no seat in the Raft log but serves the federation scope.
    const untrusted = c.nodes[4]?.socket ?? '';
    const onUntrusted = await runCtl(['--socket', untrusted, '--timeout', String(CALL_TIMEOUT_MS), 'kv', 'put', 'from-cloud', 'x', '--scope', 'federation']);
    expect(onUntrusted.code, onUntrusted.stderr).toBe(0);
    const refused = await runCtl(['--socket', untrusted, 'kv', 'put', 'from-cloud', 'x', '--scope', 'datacenter']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/untrusted/);
    const pbft = await runCtl(['--socket', untrusted, 'pbft', 'status']);
    // The primary of view v is the (v mod n)-th replica by name: n1 unless a view change happened (a slow start under load may cause one).
    const view = Number(/View:\s+(\d+)/.exec(pbft.stdout)?.[1]);
    expect(pbft.stdout).toMatch(new RegExp(`Primary:\\s+n${(view % 5) + 1}\\n`));
    expect(pbft.stdout).toMatch(/Replicas:\s+n1, n2, n3, n4, n5 \(n = 5, tolerates f = 1 Byzantine\)/);
    expect(c.problems()).toEqual([]);
  }, 120_000);
});
