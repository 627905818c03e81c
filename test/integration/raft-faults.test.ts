/**
 * Raft + KV under real faults with real processes: 3 (or 5) dwcpd daemons in
 * one Raft group, six clients putting unique values to five keys and reading
 * them with strong consistency through rotating daemons, while the test
 * kills the leader with SIGKILL, pauses a follower with SIGSTOP, cuts a
 * member off (empty member list + SIGHUP: its gater refuses its peers),
 * kills two of five, or stops and restarts every daemon.
 *
 * After each fault heals and the load stops, one barrier write commits and
 * every node reads every key with strong consistency; then:
 * (a) the whole history, final reads included, is linearizable (so every
 *     acknowledged write is still there, on every node);
 * (b) every node answered at the same applied index with the same values;
 * (c) no daemon logged an error (in particular no "raft node stopped");
 * (d) writes were acknowledged during the fault wherever a quorum remained.
 *
 * Phases end on events (a leader's own log line, N more acknowledged puts),
 * each with a bound; the only timed phase is the SIGSTOP, whose length is
 * the fault itself. Failures print the seed (RAFT_FAULTS_SEED replays the
 * client choices; the scheduling is the OS's) and the timeline.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { checkHistory, type RegisterOp } from '../sim/linearizability.ts';
import { MAX_ELECTION_TIMEOUT_MS, RaftCluster, RegisterLoad, within, type Leader, type Settled } from './raft-cluster.ts';

const SEED = Number(process.env.RAFT_FAULTS_SEED ?? Date.now() % 2 ** 31);
const KEYS = ['k0', 'k1', 'k2', 'k3', 'k4'];
/** Acknowledged puts that make a phase: enough to cross a leader's term, few enough to stay fast. */
const PHASE_ACKS = 15;
/** While a follower is paused, clients that picked it hang until their deadline: ask for fewer, to keep the pause near its two election timeouts. */
const PAUSED_ACKS = 5;
/** Bound of one phase on a loaded 2-core machine: an election or two plus the acks. */
const PHASE_MS = 15_000;

let cluster: RaftCluster | undefined;
let running: RegisterLoad | undefined;
afterEach(async () => {
  // A test that failed mid-phase leaves its clients running: stop them before their daemons go.
  await running?.stop();
  await cluster?.destroy();
  running = undefined;
  cluster = undefined;
});

interface Running {
  cluster: RaftCluster;
  load: RegisterLoad;
  leader: Leader;
}

/** Starts `size` daemons, waits for a leader and for the load to get going. */
async function startLoaded(size: number, seed: number): Promise<Running> {
  const c = await RaftCluster.start('raft-faults', size);
  cluster = c;
  const leader = await within(c.waitForLeader(), PHASE_MS, 'a first leader', () => c.processes.map((d) => d.describe()).join('\n'));
  const load = new RegisterLoad(c, { clients: 6, keys: KEYS, seed, putRatio: 0.5, timeoutMs: 1_500 });
  running = load;
  load.start();
  load.mark(`leader ${leader.name} (term ${leader.term})`);
  await load.waitForAcks(PHASE_ACKS, 'warm-up', PHASE_MS);
  return { cluster: c, load, leader };
}

function describeOps(ops: readonly RegisterOp[], t0: number): string {
  const at = (t: number | null) => (t === null ? '?' : (t - t0).toFixed(1));
  return [...ops]
    .sort((a, b) => a.invoke - b.invoke)
    .slice(-60)
    .map((o) => `  c${o.client} ${o.kind} ${o.key}=${o.value ?? 'null'} [${at(o.invoke)}, ${at(o.response)}]`)
    .join('\n');
}

function describeReads(settled: Settled): string {
  return [
    `barrier at index ${settled.barrierIndex}`,
    ...settled.reads.map((r) => `  ${r.node} applied ${r.appliedIndex}: ${[...r.values].map(([k, v]) => `${k}=${v ?? 'null'}`).join(' ')}`),
  ].join('\n');
}

/**
 * Stops the load, settles the cluster and runs checks (a)–(d). `mustProgress`
 * is a span (the fault, or the time after a full outage) in which a quorum
 * was up, so writes had to be acknowledged.
 */
async function stopAndCheck(run: Running, mustProgress: { from: number; to: number }): Promise<void> {
  const { cluster: c, load } = run;
  await load.stop();
  const settled = await c.settle(KEYS, load.ops);
  const context = `${load.summary()}\n${describeReads(settled)}`;

  expect(load.unexpected, context).toEqual([]);

  // (a) Every acknowledged write is readable, everywhere, in an order consistent with real time.
  const verdict = checkHistory(load.ops);
  const verdictText =
    verdict.kind === 'ok'
      ? 'ok'
      : verdict.kind === 'violation'
        ? `not linearizable on ${verdict.key}:\n${describeOps(verdict.ops, load.t0)}`
        : `inconclusive on ${verdict.key} after ${verdict.steps} steps`;
  expect(verdictText, context).toBe('ok');

  // (b) Converged: every node answered at one applied index with one set of values.
  expect(settled.reads.length, context).toBe(c.size);
  const first = settled.reads[0]!;
  expect(first.appliedIndex, context).toBeGreaterThanOrEqual(settled.barrierIndex);
  for (const r of settled.reads) {
    expect({ node: r.node, appliedIndex: r.appliedIndex, values: [...r.values] }, context).toEqual({
      node: r.node,
      appliedIndex: first.appliedIndex,
      values: [...first.values],
    });
  }

  // (c) No daemon stopped its Raft node, broke an invariant or logged any other error.
  expect(c.problems(), context).toEqual([]);

  // (d) Progress where a quorum remained.
  expect(load.ackedBetween(mustProgress.from, mustProgress.to), context).toBeGreaterThan(0);
}

describe('raft + kv under process faults', () => {
  it(`keeps every acknowledged write when the leader is killed with SIGKILL and restarted (seed ${SEED})`, { timeout: 90_000 }, async () => {
    const run = await startLoaded(3, SEED);
    const { cluster: c, load, leader } = run;
    const from = load.mark(`SIGKILL leader ${leader.name}`);
    expect((await c.stopNode(leader.index, 'SIGKILL')).signal).toBe('SIGKILL');
    const next = await within(c.waitForLeader(leader.term), PHASE_MS, 'a new leader', () => load.summary());
    load.mark(`new leader ${next.name} (term ${next.term})`);
    await load.waitForAcks(PHASE_ACKS, 'writes without the old leader', PHASE_MS);
    const to = load.mark(`restarting ${leader.name}`);
    await c.startNode(leader.index);
    load.mark(`${leader.name} serving again`);
    await load.waitForAcks(PHASE_ACKS, 'writes after the restart', PHASE_MS);
    await stopAndCheck(run, { from, to });
  });

  it(`keeps every acknowledged write across a follower paused with SIGSTOP for two election timeouts (seed ${SEED + 1})`, { timeout: 90_000 }, async () => {
    const run = await startLoaded(3, SEED + 1);
    const { cluster: c, load, leader } = run;
    const follower = (leader.index + 1) % c.size;
    const from = load.mark(`SIGSTOP follower n${follower + 1}`);
    c.signal(follower, 'SIGSTOP');
    // The pause's length is the fault under test, not a wait for something to happen.
    await Promise.all([delay(2 * MAX_ELECTION_TIMEOUT_MS), load.waitForAcks(PAUSED_ACKS, 'writes while a follower is paused', PHASE_MS)]);
    const to = load.mark(`SIGCONT n${follower + 1}`);
    c.signal(follower, 'SIGCONT');
    await load.waitForAcks(PHASE_ACKS, 'writes after the follower resumed', PHASE_MS);
    await stopAndCheck(run, { from, to });
  });

  it(`keeps every acknowledged write when the leader is cut off by its member gater and let back (seed ${SEED + 2})`, { timeout: 90_000 }, async () => {
    const run = await startLoaded(3, SEED + 2);
    const { cluster: c, load, leader } = run;
    const cut = c.daemon(leader.index);
    const others = c.up.filter((i) => i !== leader.index);
    const from = load.mark(`cutting off leader ${leader.name}`);
    await c.setIsolated(leader.index, true);
    load.mark(`${leader.name} reloaded with no members`);
    const after = cut.lines.length;
    const next = await within(c.waitForLeader(leader.term, others), PHASE_MS, 'a leader among the rest', () => load.summary());
    load.mark(`new leader ${next.name} (term ${next.term})`);
    await load.waitForAcks(PHASE_ACKS, 'writes while the old leader is cut off', PHASE_MS);
    const to = load.mark(`letting ${leader.name} back`);
    await c.setIsolated(leader.index, false);
    // Cut off, it can learn of no leader: the first one it names is news from the others.
    const rejoined = (l: Record<string, unknown>) => l.msg === 'raft leader elected' && Number(l.term) >= next.term;
    await within(cut.waitForLog(rejoined, 'a leader after rejoining', after), PHASE_MS, `${leader.name} following a leader again`, () => load.summary());
    load.mark(`${leader.name} follows again`);
    await load.waitForAcks(PHASE_ACKS, 'writes after the member came back', PHASE_MS);
    await stopAndCheck(run, { from, to });
  });

  it(`keeps every acknowledged write with 5 nodes when two followers are killed and restarted (seed ${SEED + 3})`, { timeout: 120_000 }, async () => {
    const run = await startLoaded(5, SEED + 3);
    const { cluster: c, load, leader } = run;
    const victims = c.up.filter((i) => i !== leader.index).slice(0, 2);
    const names = victims.map((i) => `n${i + 1}`).join(' and ');
    const from = load.mark(`SIGKILL followers ${names}`);
    for (const exit of await Promise.all(victims.map((i) => c.stopNode(i, 'SIGKILL')))) expect(exit.signal).toBe('SIGKILL');
    await load.waitForAcks(PHASE_ACKS, 'writes with 3 of 5', PHASE_MS);
    const to = load.mark(`restarting ${names}`);
    await Promise.all(victims.map((i) => c.startNode(i)));
    load.mark(`${names} serving again`);
    await load.waitForAcks(PHASE_ACKS, 'writes after the restarts', PHASE_MS);
    await stopAndCheck(run, { from, to });
  });

  it(`keeps every acknowledged write when every daemon is stopped with SIGTERM and started again (seed ${SEED + 4})`, { timeout: 90_000 }, async () => {
    const run = await startLoaded(3, SEED + 4);
    const { cluster: c, load } = run;
    const all = c.up;
    load.mark('SIGTERM all');
    const exits = await Promise.all(all.map((i) => c.stopNode(i, 'SIGTERM')));
    expect(exits.map((e) => e.code)).toEqual(all.map(() => 0));
    load.mark('all stopped; starting again');
    await Promise.all(all.map((i) => c.startNode(i)));
    const leader = await within(c.waitForLeader(), PHASE_MS, 'a leader after the restart', () => load.summary());
    const back = load.mark(`leader ${leader.name} (term ${leader.term})`);
    await load.waitForAcks(PHASE_ACKS, 'writes after the restart', PHASE_MS);
    await stopAndCheck(run, { from: back, to: Infinity });
  });
});
