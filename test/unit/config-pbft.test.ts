/**
 * The config's pbft section and the federation check behind it: a federation
 * with any untrusted member runs PBFT and must have n >= 3f + 1 members, and
 * the error says where (members, or pbft.f when set), how many it needs, how
 * many it has and how many to add; an all-trusted federation runs Raft only
 * and needs no such count; logWindow must be a multiple of
 * checkpointInterval; the section's defaults.
 */
import { generateKeyPair } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConfig } from '../../src/config/load.ts';
import type { DwcpConfig } from '../../src/config/schema.ts';
import { federationNeedsPbft } from '../../src/consensus/pbft/group.ts';
import { resolvePbftConfig } from '../../src/consensus/pbft/types.ts';
import { configError, configScratch, memberLine } from '../support/config-file.ts';

const scratch = configScratch();
afterAll(() => scratch.remove());

const peerIds: string[] = [];
beforeAll(async () => {
  for (let i = 0; i < 7; i++) peerIds.push(peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString());
});

/** A federation of this node (`dc1`, provider `nodeProvider`) and members m1… with the given providers. */
function federation(nodeProvider: string, memberProviders: readonly string[], extra = ''): string {
  const members = memberProviders.map((provider, i) => memberLine(`m${i + 1}`, peerIds[i] as string, provider)).join('');
  return `federation: acme\nnode: {name: dc1, region: fra1, provider: ${nodeProvider}}\n${extra}members:\n${members}`;
}

function resolve(text: string): DwcpConfig {
  return resolveConfig({ configPath: scratch.file(text), env: {} });
}

function problems(text: string): string[] {
  return configError(() => resolve(text)).problems;
}

describe('config: a federation with untrusted members needs n >= 3f + 1', () => {
  it('refuses 3 members with an untrusted one, on members: needs 4, has 3, add 1 more', () => {
    const [problem, ...rest] = problems(federation('onprem', ['onprem', 'aws']));
    expect(rest).toEqual([]);
    expect(problem).toMatch(/^members: 3 members are too few: /);
    expect(problem).toContain('untrusted members (m2)');
    expect(problem).toContain('needs at least 4 members to tolerate 1 Byzantine member (n >= 3f + 1)');
    expect(problem).toContain('this federation has 3 (this node and 2 members)');
    expect(problem).toContain('add 1 more');
  });

  it('counts this node when it is the untrusted one', () => {
    const [problem] = problems(federation('aws', ['onprem']));
    expect(problem).toMatch(/^members: /);
    expect(problem).toContain('untrusted members (dc1 (this node))');
    expect(problem).toContain('this federation has 2 (this node and 1 member)');
    expect(problem).toContain('add 2 more');
  });

  it('refuses pbft.f = 2 with 5 members, on pbft.f: needs 7, add 2 more', () => {
    const [problem, ...rest] = problems(federation('onprem', ['aws', 'onprem', 'onprem', 'onprem'], 'pbft: {f: 2}\n'));
    expect(rest).toEqual([]);
    expect(problem).toMatch(/^pbft\.f: 2 is too many Byzantine members to tolerate: /);
    expect(problem).toContain('or lower pbft.f');
    expect(problem).toContain('needs at least 7 members to tolerate 2 Byzantine members');
    expect(problem).toContain('this federation has 5 (this node and 4 members)');
    expect(problem).toContain('add 2 more');
  });

  it.each([
    ['4 members, f from the count (1)', 'onprem', ['aws', 'gcp', 'onprem'], '', undefined],
    ['7 members and pbft.f = 2', 'aws', ['aws', 'gcp', 'azure', 'oracle', 'onprem', 'private'], 'pbft: {f: 2}\n', 2],
  ])('accepts %s', (_what, nodeProvider, memberProviders, extra, f) => {
    const config = resolve(federation(nodeProvider, memberProviders, extra));
    expect(federationNeedsPbft(config)).toBe(true);
    expect(config.pbft.f).toBe(f);
  });

  it('accepts 2 members when all are trusted: the federation scope runs on Raft only', () => {
    const config = resolve(federation('onprem', ['private']));
    expect(config.members.map((m) => m.trust)).toEqual(['trusted']);
    expect(federationNeedsPbft(config)).toBe(false);
  });

  it('accepts explicit trust: untrusted-by-provider members marked trusted need no PBFT', () => {
    const text = `federation: acme\nnode: {name: dc1, region: fra1, provider: aws, trust: trusted}\nmembers:\n${memberLine('m1', peerIds[0] as string, 'gcp', ', trust: trusted')}`;
    expect(federationNeedsPbft(resolve(text))).toBe(false);
  });
});

describe('config: the pbft section', () => {
  it('refuses a logWindow that is not a multiple of checkpointInterval, naming pbft.logWindow', () => {
    expect(problems(federation('onprem', ['private'], 'pbft: {checkpointInterval: 64, logWindow: 100}\n'))).toEqual([
      'pbft.logWindow: 100 must be a multiple of pbft.checkpointInterval (64)',
    ]);
    expect(problems(federation('onprem', ['private'], 'pbft: {checkpointInterval: 48}\n'))).toEqual([
      'pbft.logWindow: 128 must be a multiple of pbft.checkpointInterval (48)',
    ]);
  });

  it('refuses an unknown pbft key', () => {
    expect(problems(federation('onprem', ['private'], 'pbft: {lanes: 4}\n'))).toEqual(['pbft.lanes: unknown key (not part of the schema)']);
  });

  it('has defaults that the PBFT core accepts', () => {
    const { pbft } = resolve(federation('onprem', ['aws', 'gcp', 'azure']));
    expect(pbft).toEqual({
      tickMs: 100,
      viewChangeTicks: 20,
      checkpointInterval: 64,
      logWindow: 128,
      maxBatchRequests: 64,
      clientLanes: 64,
      requestRetryMs: 1_000,
    });
    expect(() =>
      resolvePbftConfig({
        checkpointInterval: pbft.checkpointInterval,
        logWindow: pbft.logWindow,
        maxBatchRequests: pbft.maxBatchRequests,
        viewChangeTicks: pbft.viewChangeTicks,
      }),
    ).not.toThrow();
  });

  it('keeps the other defaults when some are set', () => {
    const { pbft } = resolve(federation('onprem', ['private'], 'pbft: {clientLanes: 8, f: 1}\n'));
    expect(pbft).toMatchObject({ clientLanes: 8, f: 1, tickMs: 100, logWindow: 128 });
  });
});

describe('config: a lone node', () => {
  it('starts untrusted with no members: nothing to order with anybody, so no PBFT', () => {
    const config = resolve('federation: acme\nnode: {name: solo, region: us-east-1, provider: aws}\n');
    expect(config.node.trust).toBe('untrusted');
    expect(federationNeedsPbft(config)).toBe(false);
  });
});
