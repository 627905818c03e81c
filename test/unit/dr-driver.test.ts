/**
 * The DR driver's proof of log freshness between checks: with checks a
 * minute apart, barriers every dr.proveIntervalMs still move logSeenAt (what
 * self-fencing counts from) in a region holding a protected VM, a failing
 * barrier leaves it where it was, logSeenAt never moves back, and a region
 * holding none proves nothing between checks. And the setting's default and
 * bounds.
 */
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { DrSettingsSchema } from '../../src/dr/config.ts';
import { DrDriver } from '../../src/dr/driver.ts';
import { createDrMetrics } from '../../src/dr/metrics.ts';
import { createLogger } from '../../src/log.ts';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import { assign, create, localProvider, machineWith, registerRegion, spec } from './fleet-fixtures.ts';

/** dc1's driver; with `protectedHere`, dc1 runs web1, protected into dc2. */
function driver(barrier: (timeoutMs: number) => Promise<void>, now: () => number, protectedHere = true): DrDriver {
  const m = machineWith(registerRegion('dc1', [localProvider(8, 16)]), registerRegion('dc2', [localProvider(8, 16)]));
  if (protectedHere) for (const c of [create(spec('web1')), assign('web1', 'dc1', 1), parseFleetCommand({ kind: 'protect', vm: 'web1', drRegion: 'dc2' })]) expect(m.apply(c)).toMatchObject({ ok: true });
  return new DrDriver({
    region: 'dc1',
    settings: DrSettingsSchema.parse({ checkIntervalMs: 60_000, proveIntervalMs: 100, fenceAfterMs: 100_000, fenceHoldMs: 200_000 }),
    state: () => m,
    commit: () => Promise.reject(new Error('no commits in this test')),
    barrier,
    health: () => ({ ok: true }),
    runningSince: () => null,
    metrics: createDrMetrics([new Registry()]),
    log: createLogger('silent'),
    now,
  });
}

describe('DR driver: proving the log current between checks', () => {
  it('moves logSeenAt on every answered barrier, long before the first check', async () => {
    let clock = 1_000;
    const asked: number[] = [];
    let answered!: () => void;
    const third = new Promise<void>((resolve) => (answered = resolve));
    const d = driver(async () => {
      asked.push(clock);
      clock += 100;
      if (asked.length === 3) answered();
    }, () => clock);
    const start = d.logSeenAt();
    expect(d.logConfirmed()).toBe(false);
    d.start();
    try {
      await third;
      await new Promise((resolve) => setImmediate(resolve));
      expect(d.logConfirmed()).toBe(true);
      // logSeenAt is when the barrier was asked, not when it answered.
      expect(d.logSeenAt()).toBeGreaterThanOrEqual(asked[1]!);
      expect(d.logSeenAt()).toBeGreaterThan(start);
      expect(asked.includes(d.logSeenAt())).toBe(true);
    } finally {
      d.stop();
    }
  });

  it('leaves logSeenAt where it was when barriers fail', async () => {
    let clock = 5_000;
    let calls = 0;
    let failedTwice!: () => void;
    const done = new Promise<void>((resolve) => (failedTwice = resolve));
    const d = driver(async () => {
      clock += 500;
      if (++calls === 2) failedTwice();
      throw new Error('no quorum');
    }, () => clock);
    const start = d.logSeenAt();
    d.start();
    try {
      await done;
      await new Promise((resolve) => setImmediate(resolve));
      expect(d.logSeenAt()).toBe(start);
      expect(d.logConfirmed()).toBe(false);
    } finally {
      d.stop();
    }
  });

  it('proves nothing between checks in a region that holds no protected VM (on PBFT every proof is an ordered request)', async () => {
    let calls = 0;
    const d = driver(async () => {
      calls++;
    }, Date.now, false);
    d.start();
    try {
      // Ten proof intervals pass; the first check is a minute away.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(calls).toBe(0);
    } finally {
      d.stop();
    }
  });

  it('defaults to a tenth of fenceAfterMs (at least 250 ms, at most a check) and refuses more than a check', () => {
    expect(DrSettingsSchema.parse({}).proveIntervalMs).toBe(1_000);
    expect(DrSettingsSchema.parse({ checkIntervalMs: 500, fenceAfterMs: 1_500, fenceHoldMs: 3_500 }).proveIntervalMs).toBe(250);
    expect(DrSettingsSchema.parse({ checkIntervalMs: 200, fenceAfterMs: 1_500, fenceHoldMs: 3_500 }).proveIntervalMs).toBe(200);
    const long = DrSettingsSchema.safeParse({ checkIntervalMs: 5_000, proveIntervalMs: 6_000 });
    expect(long.success).toBe(false);
    expect(JSON.stringify(long.error?.issues)).toContain('must not exceed dr.checkIntervalMs (5000)');
  });
});
