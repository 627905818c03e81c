/**
 * The State admin service (state.proto) as the admin client exposes it:
 * request and response types in the .proto's snake_case, and the `.state`
 * sub-client built on the client's call function.
 *
 * Invariant (as for the rest of the admin client): every response has every
 * field, proto3 `optional` fields absent on the wire become null, uint64
 * counts arrive as decimal strings and are returned as numbers (they stay far
 * below 2^53), and each message is rebuilt field by field in .proto order.
 */
import type { CrdtEntry, CrdtGetRequest, CrdtGetResponse, CrdtUpdateRequest, CrdtUpdateResponse, RegionCount, RegionDigest, ServiceCall, StateDigestResponse } from './schema.ts';

export interface StateClient {
  update(request: CrdtUpdateRequest): Promise<CrdtUpdateResponse>;
  get(request: CrdtGetRequest): Promise<CrdtGetResponse>;
  digest(timeoutMs: number): Promise<StateDigestResponse>;
  setTestPartition(members: string[]): Promise<{ blocked: string[] }>;
}

type WireCount = { region: string; count: string | number };
type WireEntry = Omit<CrdtEntry, 'clock' | 'expires_at'> & { clock: WireCount[]; expires_at?: string };

function countsFromWire(clock: WireCount[]): RegionCount[] {
  return clock.map((c) => ({ region: c.region, count: Number(c.count) }));
}

function entryFromWire(e: WireEntry): CrdtEntry {
  return { key: e.key, type: e.type, value_json: e.value_json, clock: countsFromWire(e.clock), expires_at: e.expires_at ?? null };
}

export function stateClient(call: ServiceCall): StateClient {
  return {
    update: async (request) => {
      const r = await call<CrdtUpdateRequest, Omit<CrdtUpdateResponse, 'entry'> & { entry: WireEntry }>('Update', request, request.timeout_ms || undefined);
      return { entry: entryFromWire(r.entry), consistency: r.consistency, regions_acked: r.regions_acked, regions_total: r.regions_total };
    },
    get: async (request) => {
      const r = await call<CrdtGetRequest, Omit<CrdtGetResponse, 'entries'> & { entries: WireEntry[] }>('Get', request, request.timeout_ms || undefined);
      return { entries: r.entries.map(entryFromWire), regions_answered: r.regions_answered, regions_total: r.regions_total };
    },
    digest: async (timeoutMs) => {
      const r = await call<{ timeout_ms: number }, { regions: (Omit<RegionDigest, 'clock' | 'entries'> & { clock: WireCount[]; entries: string | number })[]; converged: boolean }>(
        'Digest',
        { timeout_ms: timeoutMs },
        timeoutMs,
      );
      return {
        regions: r.regions.map((d) => ({ name: d.name, region: d.region, answered: d.answered, digest: d.digest, entries: Number(d.entries), clock: countsFromWire(d.clock) })),
        converged: r.converged,
      };
    },
    setTestPartition: async (members) => {
      const r = await call<{ members: string[] }, { blocked: string[] }>('SetTestPartition', { members });
      return { blocked: r.blocked };
    },
  };
}
