/**
 * The pure pieces of the member mesh: link-mode classification, reconnect
 * back-off, the RTT estimator, member-list diffs and hello judgement.
 */
import { describe, expect, it } from 'vitest';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import type { MemberConfig } from '../../src/config/schema.ts';
import { linkMode } from '../../src/federation/link-mode.ts';
import { MemberDirectory } from '../../src/federation/members.ts';
import { backoffDelay } from '../../src/net/backoff.ts';
import { judgeHello, localHello, type HelloContext } from '../../src/net/hello.ts';
import { RTT_WINDOW, RttEstimator } from '../../src/net/rtt.ts';

const thresholds = { datacenterMaxRttMs: 10, internetMinRttMs: 100 };

describe('linkMode', () => {
  it('is internet whenever an end is untrusted, whatever the RTT', () => {
    expect(linkMode('untrusted', 'trusted', 0.1, thresholds)).toBe('internet');
    expect(linkMode('trusted', 'untrusted', null, thresholds)).toBe('internet');
  });
  it('classifies trusted pairs by RTT, inclusive at both thresholds', () => {
    expect(linkMode('trusted', 'trusted', null, thresholds)).toBe('datacenter');
    expect(linkMode('trusted', 'trusted', 10, thresholds)).toBe('datacenter');
    expect(linkMode('trusted', 'trusted', 10.5, thresholds)).toBe('hybrid');
    expect(linkMode('trusted', 'trusted', 99.9, thresholds)).toBe('hybrid');
    expect(linkMode('trusted', 'trusted', 100, thresholds)).toBe('internet');
  });
});

describe('backoffDelay', () => {
  const policy = { initialMs: 500, maxMs: 30_000 };
  it('doubles per attempt with equal jitter and caps at maxMs', () => {
    expect([0, 1, 2, 3].map((n) => backoffDelay(n, policy, () => 0))).toEqual([250, 500, 1000, 2000]);
    expect([0, 1, 2, 3].map((n) => backoffDelay(n, policy, () => 1))).toEqual([500, 1000, 2000, 4000]);
    expect(backoffDelay(20, policy, () => 1)).toBe(30_000);
    expect(backoffDelay(1_000_000, policy, () => 0.5)).toBe(22_500);
  });
});

describe('RttEstimator', () => {
  it('smooths with gain 1/8 and keeps the floor of the last window', () => {
    const rtt = new RttEstimator();
    expect([rtt.smoothed, rtt.floor]).toEqual([null, null]);
    rtt.observe(8);
    rtt.observe(16);
    expect(rtt.smoothed).toBe(9);
    expect(rtt.floor).toBe(8);
  });
  it('lets one slow sample move the smoothed value but not the floor; the floor follows a lasting change', () => {
    const rtt = new RttEstimator();
    for (let i = 0; i < RTT_WINDOW; i++) rtt.observe(1);
    rtt.observe(50);
    expect(rtt.floor).toBe(1);
    for (let i = 0; i < RTT_WINDOW; i++) rtt.observe(40);
    expect(rtt.floor).toBe(40);
  });
});

async function member(name: string, extra: Partial<MemberConfig> = {}): Promise<MemberConfig> {
  const peerId = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString();
  return { name, peerId, region: `r-${name}`, provider: 'onprem', trust: 'trusted', addrs: [], ...extra };
}

describe('MemberDirectory.replace', () => {
  it('reports added, removed and changed members by peer ID', async () => {
    const [a, b, c] = await Promise.all([member('a'), member('b'), member('c')]);
    const dir = new MemberDirectory([a!, b!]);
    const changes = dir.replace([{ ...b!, addrs: ['/ip4/127.0.0.1/tcp/1'] }, c!]);
    expect(changes.added.map((m) => m.name)).toEqual(['c']);
    expect(changes.removed.map((m) => m.name)).toEqual(['a']);
    expect(changes.changed.map((m) => m.name)).toEqual(['b']);
    expect(dir.has(a!.peerId)).toBe(false);
    expect(dir.get(c!.peerId)?.name).toBe('c');
  });
});

describe('judgeHello', () => {
  async function context() {
    const self = await member('self');
    const peer = await member('peer', { provider: 'aws', trust: 'untrusted', region: 'us-east-1' });
    const ctx: HelloContext = {
      config: { federation: 'fed', node: { name: 'self', region: 'r-self', provider: 'onprem', trust: 'trusted' } },
      peerId: self.peerId,
      listenAddrs: () => [],
      members: new MemberDirectory([peer]),
    };
    const theirs = { ...localHello(ctx), name: 'peer', region: 'us-east-1', provider: 'aws' as const, trust: 'untrusted' as const, peerId: peer.peerId };
    return { ctx, peer, theirs };
  }

  it('accepts a hello that matches the member list', async () => {
    const { ctx, peer, theirs } = await context();
    expect(judgeHello(theirs, peer.peerId, ctx)).toBeNull();
  });

  it('names what does not match', async () => {
    const { ctx, peer, theirs } = await context();
    expect(judgeHello({ ...theirs, federation: 'other' }, peer.peerId, ctx)?.reason).toBe('federation_mismatch');
    const trust = judgeHello({ ...theirs, trust: 'trusted' }, peer.peerId, ctx);
    expect(trust).toMatchObject({ reason: 'identity_mismatch' });
    expect(trust?.message).toContain('trust is "trusted" but the member list has "untrusted"');
    expect(judgeHello({ ...theirs, peerId: ctx.peerId }, peer.peerId, ctx)?.reason).toBe('identity_mismatch');
    expect(judgeHello({ ...theirs, version: 2 }, peer.peerId, ctx)?.reason).toBe('hello_failed');
    const stranger = await member('stranger');
    expect(judgeHello({ ...theirs, peerId: stranger.peerId }, stranger.peerId, ctx)?.reason).toBe('not_member');
  });
});
