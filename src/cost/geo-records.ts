/**
 * The cost records every region publishes in the geo store (its month
 * ledgers, its recommendations), read back on any node: one LWW register per
 * key, JSON text, validated against its schema. A record that is not JSON or
 * does not match is skipped (logged at debug: another version's writer), never
 * thrown, so one bad region does not hide the others.
 */
import type { z } from 'zod';
import type { Logger } from '../log.ts';
import { entryKey } from '../state/entry.ts';
import type { GeoState } from '../state/geo-state.ts';

export const COST_STORE_TYPE = 'lww-register';

export function readGeoRecords<T>(geo: Pick<GeoState, 'list' | 'valueOf'>, prefix: string, schema: z.ZodType<T>, max: number, log: Logger): T[] {
  const out: T[] = [];
  for (const [storeKey, entry] of geo.list(entryKey(COST_STORE_TYPE, prefix), max)) {
    const value = geo.valueOf(entry);
    if (typeof value !== 'string') continue;
    try {
      const parsed = schema.safeParse(JSON.parse(value));
      if (parsed.success) out.push(parsed.data);
      else log.debug({ key: storeKey }, 'cost record does not match its schema; skipped');
    } catch {
      log.debug({ key: storeKey }, 'cost record is not JSON; skipped');
    }
  }
  return out;
}
