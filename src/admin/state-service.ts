/**
 * The admin socket's State service (state.proto) over GeoState: CRDT updates
 * and reads at quorum, local or eventual consistency, every region's digest,
 * and the test-only partition hook. Requests are checked at the edge (op,
 * type, consistency, amounts, JSON values, timeouts; errors name the field)
 * and failures map to gRPC codes as call.ts describes: UNAVAILABLE when a
 * retry may succeed (no majority reachable, the daemon stopping),
 * INVALID_ARGUMENT for a bad request, FAILED_PRECONDITION for the test hook
 * on a daemon started without it.
 *
 * The geo-level part of the Kv service (kv-service.ts) shares the level
 * parsing and entry rendering defined here.
 */
import type { Logger } from '../log.ts';
import type { MemberDirectory } from '../federation/members.ts';
import { clockCounters } from '../state/clock/vector-clock.ts';
import { readJson } from '../state/crdt/decode.ts';
import { canonicalJson, type JsonValue } from '../state/crdt/types.ts';
import { CRDT_TYPES, entryKey, isCrdtType, splitKey, type CrdtType, type Entry } from '../state/entry.ts';
import type { GeoState } from '../state/geo-state.ts';
import { DwcpError } from '../errors.ts';
import type { CrdtOp } from '../state/ops.ts';
import { GEO_LEVELS, type GeoLevel } from '../kv/consistency.ts';
import type { TestFaults } from '../net/test-faults.ts';
import { loadAdminPackage } from './schema.ts';
import { asyncUnary, requireTimeout } from './call.ts';
import type { AdminServiceRegistration } from './server.ts';
import { STATE_SERVICE, type CrdtGetRequest, type CrdtUpdateRequest, type StateDigestResponse } from './schema.ts';

export function invalidArgument(message: string): DwcpError {
  return new DwcpError('invalid', message);
}

/** `raw` as a geo consistency level ('' = `fallback`), or INVALID_ARGUMENT naming `field`. */
export function geoLevel(field: string, raw: string, fallback: GeoLevel): GeoLevel {
  if (raw === '') return fallback;
  const level = GEO_LEVELS.find((l) => l === raw);
  if (level === undefined) throw invalidArgument(`${field}: ${JSON.stringify(raw)} is not one of ${GEO_LEVELS.join('|')}`);
  return level;
}

/** A uint64 field (a decimal string on the wire) as a safe integer. */
export function wholeNumber(field: string, raw: string | number): number {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw invalidArgument(`${field}: ${String(raw)} is not a whole number below 2^53`);
  return n;
}

/** An entry as CrdtEntry (uint64 counts as numbers; the proto loader encodes them). */
export function entryToWire(key: string, entry: Entry, value: JsonValue | undefined): Record<string, unknown> {
  return {
    key: splitKey(key).name,
    type: entry.type,
    value_json: value === undefined ? 'null' : canonicalJson(value),
    clock: clockCounters(entry.clock),
    ...(entry.expiresAt === null ? {} : { expires_at: new Date(entry.expiresAt.wallMs).toISOString() }),
  };
}

function parseJson(field: string, text: string): JsonValue {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`${field}: not JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  // A StateDecodeError is a DwcpError 'invalid' naming the field: it travels as it is.
  return readJson(raw, field);
}

function required(field: string, value: string): string {
  if (value === '') throw invalidArgument(`${field}: required`);
  return value;
}

const OPS = ['incr', 'decr', 'add', 'remove', 'set', 'unset'] as const;

function opOf(r: WireUpdate): CrdtOp {
  switch (r.op) {
    case 'incr':
    case 'decr': {
      const by = wholeNumber('amount', r.amount);
      return { op: r.op, by: by === 0 ? 1 : by };
    }
    case 'add':
    case 'remove':
      return { op: r.op, element: required('element', r.element) };
    case 'set':
      return { op: 'set-field', field: required('field', r.field), value: parseJson('value_json', required('value_json', r.value_json)) };
    case 'unset':
      return { op: 'delete-field', field: required('field', r.field) };
    default:
      throw invalidArgument(`op: ${JSON.stringify(r.op)} is not one of ${OPS.join('|')}`);
  }
}

function typeOf(raw: string): CrdtType | null {
  if (raw === '') return null;
  if (!isCrdtType(raw)) throw invalidArgument(`type: ${JSON.stringify(raw)} is not one of ${CRDT_TYPES.join('|')}`);
  return raw;
}

type WireUpdate = Omit<CrdtUpdateRequest, 'amount' | 'ttl_ms'> & { amount: string; ttl_ms: string };

export interface StateAdminOptions {
  geo: GeoState;
  members: MemberDirectory;
  faults: TestFaults;
  /** Deadline of a quorum call that names none (state.quorumTimeoutMs). */
  defaultTimeoutMs: number;
  log: Logger;
}

export function stateServiceRegistration(opts: StateAdminOptions): AdminServiceRegistration {
  const { geo, log } = opts;
  const timeout = (raw: number) => requireTimeout(raw, opts.defaultTimeoutMs);

  async function update(r: WireUpdate): Promise<Record<string, unknown>> {
    const name = required('key', r.key);
    const op = opOf(r);
    const level = geoLevel('consistency', r.consistency, 'local');
    const ttlMs = wholeNumber('ttl_ms', r.ttl_ms);
    const out = await geo.update(name, typeOf(r.type), op, level, { ttlMs: ttlMs === 0 ? null : ttlMs, timeoutMs: timeout(r.timeout_ms) });
    return { entry: entryToWire(out.key, out.entry, geo.valueOf(out.entry)), consistency: level, regions_acked: out.acked, regions_total: out.total };
  }

  async function get(r: CrdtGetRequest): Promise<Record<string, unknown>> {
    const name = required('key', r.key);
    const type = typeOf(r.type);
    const level = geoLevel('consistency', r.consistency, 'local');
    // At quorum every type is asked for: another region may hold a type this one has never seen.
    const keys = type !== null ? [entryKey(type, name)] : level === 'quorum' ? CRDT_TYPES.map((t) => entryKey(t, name)) : geo.keysNamed(name);
    const read = await geo.read(keys, level, timeout(r.timeout_ms));
    const entries: Record<string, unknown>[] = [];
    for (const [key, entry] of read.entries) {
      const value = geo.valueOf(entry);
      if (value !== undefined) entries.push(entryToWire(key, entry, value));
    }
    return { entries, regions_answered: read.answered, regions_total: read.total };
  }

  async function digest(r: { timeout_ms: number }): Promise<StateDigestResponse> {
    const rows = await geo.digests(timeout(r.timeout_ms));
    const regions = rows.map((row) =>
      row.status === null
        ? { name: row.name, region: row.region, answered: false, digest: '', entries: 0, clock: [] }
        : { name: row.name, region: row.region, answered: true, digest: Buffer.from(row.status.digest).toString('hex'), entries: row.status.entries, clock: clockCounters(row.status.clock) },
    );
    const digests = new Set(regions.map((x) => x.digest));
    return { regions, converged: regions.every((x) => x.answered) && digests.size === 1 };
  }

  async function setTestPartition(r: { members: string[] }): Promise<{ blocked: string[] }> {
    const all = opts.members.list();
    const peerIds = r.members.map((name, i) => {
      const member = all.find((m) => m.name === name);
      if (member === undefined) throw invalidArgument(`members[${i}]: ${JSON.stringify(name)} is not a configured member`);
      return member.peerId;
    });
    try {
      opts.faults.partition(peerIds);
    } catch (err) {
      throw new DwcpError('rejected', err instanceof Error ? err.message : String(err));
    }
    log.warn({ blocked: r.members }, 'test partition set');
    return { blocked: r.members };
  }

  return {
    name: STATE_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Update: asyncUnary(log, 'Update', update),
      Get: asyncUnary(log, 'Get', get),
      Digest: asyncUnary(log, 'Digest', digest),
      SetTestPartition: asyncUnary(log, 'SetTestPartition', setTestPartition),
    },
  };
}
