/**
 * The garbage budget (src/daemon/heap-budget.ts): the pure decision, and the
 * driver in a real node process with and without --expose-gc, churning
 * ArrayBuffers the way a member's request path does.
 */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { HeapBudget } from '../../src/daemon/heap-budget.ts';

const MODULE = fileURLToPath(new URL('../../src/daemon/heap-budget.ts', import.meta.url));
const MIB = 1024 * 1024;

describe('HeapBudget', () => {
  it('is due only past the last collection\'s load plus the budget', () => {
    const b = new HeapBudget(10 * MIB, 100 * MIB);
    expect(b.due(110 * MIB)).toBe(false);
    expect(b.due(110 * MIB + 1)).toBe(true);
    // V8's own collection may leave more than ours did: the floor follows it up too.
    b.collected(200 * MIB);
    expect(b.due(205 * MIB)).toBe(false);
    expect(b.due(210 * MIB + 1)).toBe(true);
  });

  it('takes the lowest load seen since the collection as its floor (freed buffers are counted late)', () => {
    const b = new HeapBudget(10 * MIB, 0);
    b.collected(100 * MIB); // read before the freed buffers were counted gone
    expect(b.due(60 * MIB)).toBe(false); // ... which they now are
    expect(b.due(70 * MIB + 1)).toBe(true);
    expect(b.due(65 * MIB)).toBe(false);
  });

  it('refuses a budget that is not a positive whole number of bytes', () => {
    for (const bad of [0, -1, 1.5, Number.NaN]) expect(() => new HeapBudget(bad, 0)).toThrow(RangeError);
  });
});

/**
 * A child process that allocates `mib` MiB of 4 KiB buffers, each held while
 * the next 4 MiB are allocated (so, like a request's buffers, it outlives the
 * young generation and dies in the old one), then reports the collections the driver started and the highest
 * external memory seen while it ran. The budget is checked every 5 ms, and
 * the churn yields every 256 KiB so the check gets to run.
 */
async function churn(flags: string[], budgetMib: number, mib: number): Promise<{ driver: boolean; collections: number; peakExternalMib: number; log: string }> {
  const script = `
    import v8 from 'node:v8';
    import { startHeapBudget } from ${JSON.stringify(MODULE)};
    const lines = [];
    const log = { warn: (o, m) => lines.push(m) };
    const driver = startHeapBudget(log, ${budgetMib * MIB}, 5);
    let peak = 0;
    let sink = 0;
    const held = new Array(1024);
    for (let i = 0; i < ${mib * 256}; i++) {
      const b = new ArrayBuffer(4096);
      sink += new Uint8Array(b)[0];
      held[i % held.length] = b;
      sink += Array.from({ length: 64 }, (_, k) => k).length; // a request's short-lived objects
      if (i % 64 === 63) {
        peak = Math.max(peak, v8.getHeapStatistics().external_memory);
        await new Promise((r) => setTimeout(r, 1));
      }
    }
    driver?.stop();
    console.log(JSON.stringify({ driver: driver !== null, collections: driver?.collections ?? 0, peakExternalMib: peak / ${MIB}, log: lines.join(';'), sink }));
  `;
  // Small semi-spaces, as in the daemon (its young generation fills every ~0.1 s under load): a minor collection is when freed buffers are counted gone.
  const child = spawn(process.execPath, ['--max-semi-space-size=1', ...flags, '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  const [code] = (await once(child, 'close')) as [number | null];
  expect(code).toBe(0);
  return JSON.parse(out) as { driver: boolean; collections: number; peakExternalMib: number; log: string };
}

describe('startHeapBudget', () => {
  it('keeps dead buffers near the budget where gc() is exposed; without --expose-gc it does nothing, says so, and the same churn holds more', async () => {
    // 256 MiB of churn with 4 MiB held at any time; the same churn in two processes, one with the driver, one without.
    const [driven, alone] = await Promise.all([churn(['--expose-gc'], 4, 256), churn([], 4, 256)]);
    expect(driven.driver).toBe(true);
    expect(driven.collections).toBeGreaterThan(5);
    expect(alone.driver).toBe(false);
    expect(alone.collections).toBe(0);
    expect(alone.log).toMatch(/without --expose-gc/);
    // Held 4 + budget 4 + what the churn adds between two checks, with room for a loaded machine (measured at load ~11: ~18 against ~38).
    expect(driven.peakExternalMib).toBeLessThan(24);
    expect(driven.peakExternalMib).toBeLessThan(alone.peakExternalMib - 8);
  }, 60_000);
});
