/**
 * PbftClient against a fake local replica that records request()/relay()
 * calls, with replies signed by FakeKeys: a result needs f + 1 matching
 * replies; lanes give concurrent calls distinct client ids with strictly
 * increasing timestamps; waiting, busy, timeout, retries, too_large and
 * stop() behave as documented, and onResult sees each outcome.
 *
 * Real timers: vitest's fake timers do not drive AbortSignal.timeout, which
 * the client's deadlines use, so deadlines and retry periods are small and
 * every wait is on a recorded call (ChangeWatch), never a sleep.
 */
import { describe, expect, it } from 'vitest';
import { PbftClient, PbftClientError, type PbftClientOptions, type PbftClientReplica } from '../../src/consensus/pbft/client.ts';
import { seal } from '../../src/consensus/pbft/encoding.ts';
import type { ClientRequest, Reply, RequestResult } from '../../src/consensus/pbft/types.ts';
import { FakeKeys } from '../sim/pbft-harness.ts';
import { ChangeWatch, settle } from '../support/change-watch.ts';

const MEMBERS = ['a', 'b', 'c', 'd'];
const keys = new FakeKeys('pbft-client-test');
const verify = keys.verifier((id) => MEMBERS.includes(id));
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const op = (text: string) => encoder.encode(text);

class FakeReplica implements PbftClientReplica {
  readonly requests: ClientRequest[] = [];
  readonly relays: ClientRequest[] = [];
  readonly watch = new ChangeWatch();
  /** What request() answers; a function of how many calls came before. */
  answer: (calls: number) => RequestResult = () => ({ kind: 'accepted' });

  request(request: ClientRequest): RequestResult {
    const result = this.answer(this.requests.length);
    this.requests.push(request);
    this.watch.changed();
    return result;
  }

  relay(request: ClientRequest): void {
    this.relays.push(request);
    this.watch.changed();
  }

  /** The n-th distinct request (by client and timestamp) handed to the replica. */
  async nth(n: number): Promise<ClientRequest> {
    await this.watch.until(() => this.distinct().length > n, `request #${n + 1} reaching the local replica`);
    return this.distinct()[n] as ClientRequest;
  }

  distinct(): ClientRequest[] {
    const seen = new Set<string>();
    return this.requests.filter((r) => {
      const key = `${r.client}@${r.timestamp}`;
      if (seen.has(key)) return false;
      seen.add(key);
      return true;
    });
  }
}

function reply(from: string, request: Pick<ClientRequest, 'client' | 'timestamp'>, result: string): Reply {
  return { type: 'reply', from, view: 0, client: request.client, timestamp: request.timestamp, result: op(result) };
}

function setup(overrides: Partial<PbftClientOptions> = {}) {
  const replica = new FakeReplica();
  const results: Array<{ result: string; seconds: number }> = [];
  const client = new PbftClient({
    member: 'a',
    members: MEMBERS,
    f: 1,
    lanes: 2,
    maxWaiting: 1,
    retryMs: 60_000,
    maxRequestBytes: 64 * 1024,
    sign: keys.signer('a'),
    replica,
    onResult: (result, seconds) => results.push({ result, seconds }),
    ...overrides,
  });
  return { client, replica, results, labels: () => results.map((r) => r.result) };
}

/** Tracks whether a promise settled, without making its rejection unhandled. */
function track<T>(promise: Promise<T>): { promise: Promise<T>; settled: () => boolean } {
  let done = false;
  promise.then(
    () => (done = true),
    () => (done = true),
  );
  return { promise, settled: () => done };
}

async function clientError(promise: Promise<unknown>): Promise<PbftClientError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof PbftClientError) return err;
    throw err;
  }
  throw new Error('expected a PbftClientError, but the call succeeded');
}

/** f + 1 = 2 matching replies from peers. */
function answer(client: PbftClient, request: ClientRequest, result: string): void {
  client.onReply(reply('b', request, result));
  client.onReply(reply('c', request, result));
}

describe('pbft client: f + 1 matching replies', () => {
  it('accepts a result only once f + 1 distinct members signed the same one', async () => {
    const { client, replica, labels, results } = setup();
    const call = track(client.invoke(op('put k v'), false, 10_000));
    const request = await replica.nth(0);
    expect(request.client).toMatch(/^a\/[01]$/);
    expect(request.readOnly).toBe(false);
    expect(decoder.decode(request.operation)).toBe('put k v');

    client.onReply(reply('b', request, 'x'));
    await settle();
    expect(call.settled(), 'one reply is not enough').toBe(false);

    client.onReply(reply('c', request, 'y'));
    await settle();
    expect(call.settled(), 'two different results are not enough').toBe(false);

    // None of these is a second vote for 'x': a repeat, a non-member, another request. (A reply naming
    // another sender than its channel's never gets here: PbftNode.receive drops it.)
    client.onReply(reply('b', request, 'x'));
    client.onReply(reply('e', request, 'x'));
    client.onReply(reply('d', { client: request.client, timestamp: request.timestamp - 1 }, 'x'));
    client.onReply(reply('d', { client: request.client === 'a/0' ? 'a/1' : 'a/0', timestamp: request.timestamp }, 'x'));
    await settle();
    expect(call.settled(), 'duplicate, non-member and other-request replies count for nothing').toBe(false);

    // The local replica's own reply counts like any member's.
    client.onReply(reply('a', request, 'x'));
    expect(decoder.decode(await call.promise)).toBe('x');
    expect(labels()).toEqual(['committed']);
    expect(results[0]?.seconds).toBeGreaterThanOrEqual(0);
    expect(client.inFlight).toBe(0);
  });

  it('gathers a client batch until the local replica\'s queued writes are durable, then signs it once', async () => {
    let land: () => void = () => {};
    const replica = new FakeReplica();
    const gated = Object.assign(replica, { durable: () => new Promise<void>((resolve) => (land = resolve)) });
    const { client } = setup({ replica: gated, lanes: 4 });
    const first = track(client.invoke(op('put a 1'), false, 10_000));
    await settle(); // turns pass: the batch waits for the write, not for the turn's end
    const second = track(client.invoke(op('put b 2'), false, 10_000));
    await settle();
    expect(replica.requests).toEqual([]);
    land();
    const [r0, r1] = [await replica.nth(0), await replica.nth(1)];
    expect(r0.signature).toEqual(r1.signature);
    expect(r0.path?.length).toBe(1);
    for (const from of ['a', 'b']) {
      client.onReply(reply(from, r0, 'x'));
      client.onReply(reply(from, r1, 'y'));
    }
    expect([decoder.decode(await first.promise), decoder.decode(await second.promise)]).toEqual(['x', 'y']);
  });

  it('does not count a late reply to a lane\'s previous request towards its next one', async () => {
    const { client, replica } = setup({ lanes: 1 });
    const first = client.invoke(op('1'), false, 10_000);
    const r1 = await replica.nth(0);
    answer(client, r1, 'one');
    expect(decoder.decode(await first)).toBe('one');

    const second = track(client.invoke(op('2'), false, 10_000));
    const r2 = await replica.nth(1);
    expect(r2.client).toBe(r1.client);
    client.onReply(reply('d', r1, 'two'));
    client.onReply(reply('b', r2, 'two'));
    await settle();
    expect(second.settled()).toBe(false);
    client.onReply(reply('c', r2, 'two'));
    expect(decoder.decode(await second.promise)).toBe('two');
  });
});

describe('pbft client: lanes', () => {
  it('gives concurrent calls distinct lanes with strictly increasing timestamps, also while the clock stands still', async () => {
    const { client, replica } = setup({ lanes: 3, now: () => 1_700_000_000_000 });
    const round = async (first: number): Promise<ClientRequest[]> => {
      const calls = [0, 1, 2].map((i) => client.invoke(op(`round ${first} call ${i}`), false, 10_000));
      const requests = await Promise.all([0, 1, 2].map((i) => replica.nth(first + i)));
      expect(client.inFlight).toBe(3);
      for (const r of requests) answer(client, r, 'ok');
      await Promise.all(calls);
      return requests;
    };
    const one = await round(0);
    expect(new Set(one.map((r) => r.client))).toEqual(new Set(['a/0', 'a/1', 'a/2']));
    // The wall clock in microseconds while it moves...
    for (const r of one) expect(r.timestamp).toBe(1_700_000_000_000_000);
    const two = await round(3);
    const three = await round(6);
    for (const lane of ['a/0', 'a/1', 'a/2']) {
      const stamps = [one, two, three].map((requests) => requests.find((r) => r.client === lane)?.timestamp);
      // ... and one more than the lane's last while it does not.
      expect(stamps, lane).toEqual([1_700_000_000_000_000, 1_700_000_000_000_001, 1_700_000_000_000_002]);
    }
  });

  it('keeps a lane\'s timestamps increasing when the clock goes back', async () => {
    let clock = 2_000_000;
    const { client, replica } = setup({ lanes: 1, now: () => clock });
    const stamps: number[] = [];
    for (let i = 0; i < 3; i++) {
      const call = client.invoke(op(`${i}`), false, 10_000);
      const request = await replica.nth(i);
      stamps.push(request.timestamp);
      answer(client, request, 'ok');
      await call;
      clock -= 1_000;
    }
    expect(stamps).toEqual([2_000_000_000, 2_000_000_001, 2_000_000_002]);
  });

  it('makes a call wait for a free lane, hands it the freed lane, and refuses calls beyond maxWaiting at once', async () => {
    const { client, replica, labels } = setup({ lanes: 2, maxWaiting: 1 });
    const p1 = client.invoke(op('1'), false, 10_000);
    const p2 = client.invoke(op('2'), false, 10_000);
    const [r1, r2] = [await replica.nth(0), await replica.nth(1)];
    expect(r1.client).not.toBe(r2.client);

    const p3 = track(client.invoke(op('3'), false, 10_000));
    await settle();
    expect(replica.distinct(), 'the third call waits: no lane is free').toHaveLength(2);

    const busy = await clientError(client.invoke(op('4'), false, 10_000));
    expect(busy.code).toBe('busy');
    expect(busy.message).toBe('2 PBFT requests in flight and 1 waiting; retry later');
    expect(labels()).toEqual(['dropped']);
    expect(replica.distinct()).toHaveLength(2);

    answer(client, r2, 'two');
    expect(decoder.decode(await p2)).toBe('two');
    const r3 = await replica.nth(2);
    expect(r3.client, 'the waiting call gets the lane just freed').toBe(r2.client);
    expect(r3.timestamp).toBeGreaterThan(r2.timestamp);
    expect(decoder.decode(r3.operation)).toBe('3');
    expect(p3.settled()).toBe(false);

    answer(client, r1, 'one');
    answer(client, r3, 'three');
    expect([decoder.decode(await p1), decoder.decode(await p3.promise)]).toEqual(['one', 'three']);
    expect(labels()).toEqual(['dropped', 'committed', 'committed', 'committed']);
    expect(client.inFlight).toBe(0);
  });

  it('refuses a lane count that is not a positive integer', () => {
    for (const lanes of [0, -1, 1.5, Number.NaN]) expect(() => setup({ lanes })).toThrow(/lanes must be a positive integer/);
  });
});

describe('pbft client: deadlines and retries', () => {
  it('times out without f + 1 matching replies, naming f + 1 and n, and frees the lane', async () => {
    const { client, replica, labels } = setup({ lanes: 1 });
    const err = await clientError(client.invoke(op('lost'), false, 40));
    expect(err.code).toBe('timeout');
    expect(err.message).toMatch(/^no 2 matching replies from the 4 replicas within 40 ms/);
    expect(labels()).toEqual(['timeout']);
    expect(client.inFlight).toBe(0);

    // The lane moves on to a newer timestamp, which replicas order after the timed-out one.
    const next = client.invoke(op('next'), false, 10_000);
    const [lost, again] = [await replica.nth(0), await replica.nth(1)];
    expect(again.client).toBe(lost.client);
    expect(again.timestamp).toBeGreaterThan(lost.timestamp);
    answer(client, again, 'ok');
    await next;
  });

  it('times out a call still waiting for a lane at its deadline, and forgets it', async () => {
    const { client, replica, labels } = setup({ lanes: 1, maxWaiting: 1 });
    const first = client.invoke(op('1'), false, 10_000);
    const r1 = await replica.nth(0);
    const err = await clientError(client.invoke(op('2'), false, 40));
    expect(err.code).toBe('timeout');
    expect(err.message).toBe('no free PBFT client lane within 40 ms (1 requests in flight)');
    answer(client, r1, 'one');
    await first;
    await settle();
    expect(replica.distinct(), 'the timed-out waiter never ran').toHaveLength(1);
    expect(client.inFlight).toBe(0);
    expect(labels()).toEqual(['timeout', 'committed']);
  });

  it('re-sends the same signed request every retryMs until it is answered', async () => {
    const { client, replica } = setup({ lanes: 1, retryMs: 5 });
    // The local replica holds it already: a retry's request() is a duplicate.
    replica.answer = (calls) => (calls === 0 ? { kind: 'accepted' } : { kind: 'dropped', reason: 'duplicate' });
    const call = client.invoke(op('retry me'), false, 10_000);
    const request = await replica.nth(0);
    await replica.watch.until(() => replica.relays.length >= 3, 'three relays of the request');
    for (const relayed of replica.relays) expect(relayed).toBe(request);
    answer(client, request, 'ok');
    await call;

    // Once answered it is no longer re-sent: while the next call is relayed twice, only it is.
    const relayedBefore = replica.relays.length;
    const next = client.invoke(op('next'), false, 10_000);
    const second = await replica.nth(1);
    await replica.watch.until(() => replica.relays.filter((r) => r === second).length >= 2, 'two relays of the second request');
    expect(replica.relays.slice(relayedBefore).every((r) => r === second)).toBe(true);
    answer(client, second, 'ok');
    await next;
  });

  it('re-sends to the peers also when the local replica already executed it (their replies may have been lost)', async () => {
    const { client, replica } = setup({ lanes: 1, retryMs: 5 });
    // The local replica executed it and re-sends its own cached reply; the peers' replies never arrived.
    replica.answer = (calls) => (calls === 0 ? { kind: 'accepted' } : { kind: 'replied' });
    const call = client.invoke(op('executed'), false, 10_000);
    const request = await replica.nth(0);
    client.onReply(reply('a', request, 'ok'));
    await replica.watch.until(() => replica.relays.length >= 1, 'a relay of the request to the peers', 3_000);
    expect(replica.relays[0]).toBe(request);
    client.onReply(reply('b', request, 'ok'));
    await call;
  });
});

describe('pbft client: refusals and stop', () => {
  it('refuses a request above maxRequestBytes before handing anything to the replica, naming the limit', async () => {
    const { client, replica, labels } = setup({ lanes: 2, maxRequestBytes: 200 });
    // requestBytes: 64 + the longest lane id ('a/2' bounds it) + the operation + a 64-byte signature
    // + the longest client-batch path two lanes need (one 32-byte entry: 9 + 37 bytes).
    const err = await clientError(client.invoke(new Uint8Array(24), false, 10_000));
    expect(err.code).toBe('too_large');
    expect(err.message).toBe('request of 201 bytes is above the 200-byte limit of a PBFT request in this federation');
    await settle();
    expect(replica.requests).toHaveLength(0);
    expect(labels()).toEqual(['dropped']);

    // One byte less is exactly at the limit: allowed.
    const call = client.invoke(new Uint8Array(23), false, 10_000);
    answer(client, await replica.nth(0), 'ok');
    await call;
  });

  it('stop() fails in-flight and waiting calls, and later ones, with stopped', async () => {
    const { client, replica, labels } = setup({ lanes: 1, maxWaiting: 1 });
    const inFlight = client.invoke(op('1'), false, 10_000);
    await replica.nth(0);
    const waiting = client.invoke(op('2'), false, 10_000);
    await settle();
    client.stop();
    const errors = await Promise.all([clientError(inFlight), clientError(waiting), clientError(client.invoke(op('3'), false, 10_000))]);
    expect(errors.map((e) => [e.code, e.message])).toEqual(Array(3).fill(['stopped', 'the PBFT client is stopping']));
    expect(labels()).toEqual(['stopped', 'stopped', 'stopped']);
    expect(replica.distinct(), 'nothing after stop reached the replica').toHaveLength(1);
  });
});
