/**
 * The admin socket's Kv service (kv.proto) over KvService: checks each
 * request at the edge (key, scope, consistency, client id and sequence,
 * timeout; errors name the field), turns KvResult into the wire response,
 * and maps failures to gRPC codes (see call.ts): UNAVAILABLE when a retry may
 * succeed (no leader, no quorum, deadline), FAILED_PRECONDITION when this
 * node cannot serve the scope, INVALID_ARGUMENT for a bad request.
 *
 * Consistency strong (and serializable, for reads) is the consensus log's
 * keyspace; quorum, local and eventual go to the geo-distributed store
 * (kv-geo.ts).
 */
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.ts';
import type { KvCommand, KvEntry, KvEntryMeta, KvOp } from '../kv/command.ts';
import { KV_MAX_CLIENT_ID } from '../kv/command.ts';
import { FrameError } from '../net/framing.ts';
import type { KvService, KvScope, KvWriteOutcome } from '../kv/service.ts';
import { KV_SCOPES, KvServiceError } from '../kv/service.ts';
import { KV_SERVICE, loadAdminPackage, type KvWriteOptions } from './client.ts';
import { AdminCallError, asyncUnary, requireTimeout } from './call.ts';
import type { GeoState } from '../state/geo-state.ts';
import { KV_READ_LEVELS, KV_WRITE_LEVELS, KvGeo, isGeoLevel } from './kv-geo.ts';
import type { AdminServiceRegistration } from './server.ts';

interface WireItem {
  key: string;
  value: Uint8Array;
  revision: number;
  create_revision: number;
}

interface WireWriteResponse {
  ok: boolean;
  revision: number;
  reason: string;
  current_revision: number;
  prev?: WireItem;
  leader: string;
}

/** uint64 arrives as a decimal string (longs: String). */
type WireOptions = Omit<KvWriteOptions, 'seq' | 'ttl_ms'> & { seq: string; ttl_ms?: string };

function invalid(message: string): AdminCallError {
  return new AdminCallError(grpc.status.INVALID_ARGUMENT, message);
}

function oneOf<const V extends readonly string[]>(field: string, raw: string, values: V, fallback: V[number]): V[number] {
  if (raw === '') return fallback;
  const match = values.find((v) => v === raw);
  if (match === undefined) throw invalid(`${field}: ${JSON.stringify(raw)} is not one of ${values.join('|')}`);
  return match;
}

function uint(field: string, raw: string | number): number {
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw invalid(`${field}: ${String(raw)} is not a whole number below 2^53`);
  return n;
}

function item(key: string, meta: KvEntryMeta, value: Uint8Array = new Uint8Array(0)): WireItem {
  return { key, value, revision: meta.revision, create_revision: meta.createRevision };
}

function entryItem(e: KvEntry): WireItem {
  return item(e.key, e, e.value);
}

export function writeResponse(key: string, outcome: KvWriteOutcome): WireWriteResponse {
  const { result, leader } = outcome;
  const base = { ok: false, revision: 0, reason: '', current_revision: 0, leader };
  if (!result.ok) {
    switch (result.reason) {
      case 'cas_mismatch':
        return { ...base, reason: result.reason, current_revision: result.currentRevision };
      case 'quota_exceeded':
        throw new AdminCallError(grpc.status.RESOURCE_EXHAUSTED, `the store holds ${result.stateBytes} bytes; the write would pass its ${result.limitBytes}-byte limit`);
      case 'stale_request':
        throw invalid(`options.seq: this client id already applied seq ${result.lastSeq}; use a higher seq`);
      case 'invalid_command':
        throw invalid(result.message);
    }
  }
  switch (result.op) {
    case 'put':
    case 'cas':
      return { ...base, ok: true, revision: result.revision, ...(result.prev ? { prev: item(key, result.prev) } : {}) };
    case 'delete':
      return { ...base, ok: true, revision: result.deleted ? result.revision : 0, ...(result.prev ? { prev: item(key, result.prev) } : {}) };
    default:
      throw new AdminCallError(grpc.status.INTERNAL, `a write returned a ${result.op} result`);
  }
}

function failure(err: unknown): unknown {
  if (err instanceof KvServiceError) {
    const code = err.code === 'unavailable' ? grpc.status.UNAVAILABLE : err.code === 'unsupported' ? grpc.status.FAILED_PRECONDITION : grpc.status.INVALID_ARGUMENT;
    return new AdminCallError(code, err.retryable ? `${err.message} (retryable)` : err.message);
  }
  // The command schema names the bad field (key too long, empty, not UTF-8...).
  if (err instanceof FrameError) return invalid(err.detail);
  return err;
}

export interface KvAdminOptions {
  service: KvService;
  nodeName: string;
  defaultTimeoutMs: number;
  log: Logger;
  /** The geo-distributed store behind the quorum, local and eventual levels; absent: those levels are refused. */
  geo?: GeoState | null;
}

export function kvServiceRegistration(opts: KvAdminOptions): AdminServiceRegistration {
  const { service, log } = opts;
  let anonymous = 0;
  const anonymousClient = `${opts.nodeName}-admin-${randomBytes(4).toString('hex')}`;
  const geo = new KvGeo({ geo: opts.geo ?? null, nodeName: opts.nodeName, defaultTimeoutMs: opts.defaultTimeoutMs });

  async function write(key: string, op: KvOp, options: WireOptions | undefined): Promise<WireWriteResponse | Record<string, unknown>> {
    const o = options ?? { scope: '', client_id: '', seq: '0', timeout_ms: 0 };
    const level = oneOf('options.consistency', o.consistency ?? '', KV_WRITE_LEVELS, 'strong');
    if (isGeoLevel(level)) {
      if (op.op === 'cas') throw invalid(`options.consistency: compare-and-swap needs strong (geo keys have no revisions), not ${level}`);
      return geo.write(key, op.op === 'put' ? op.value : null, level, o);
    }
    if (uint('options.ttl_ms', o.ttl_ms ?? 0) > 0) throw invalid('options.ttl_ms: only geo levels (quorum, local, eventual) expire values');
    const scope: KvScope = oneOf('options.scope', o.scope, KV_SCOPES, 'datacenter');
    if (o.client_id.length > KV_MAX_CLIENT_ID) throw invalid(`options.client_id: ${o.client_id.length} characters, above the ${KV_MAX_CLIENT_ID}-character limit`);
    let identity: { clientId: string; seq: number };
    if (o.client_id === '') {
      // No retry safety across calls was asked for: a daemon-wide client with its own sequence.
      identity = { clientId: anonymousClient, seq: ++anonymous };
    } else {
      const seq = uint('options.seq', o.seq);
      if (seq < 1) throw invalid('options.seq: must be 1 or more with a client_id');
      identity = { clientId: o.client_id, seq };
    }
    const command = { ...identity, ...op } as KvCommand;
    const timeoutMs = requireTimeout(o.timeout_ms, opts.defaultTimeoutMs);
    try {
      return writeResponse(key, await service.write(command, scope, timeoutMs));
    } catch (err) {
      throw failure(err);
    }
  }

  type Put = { key: string; value: Uint8Array; options?: WireOptions };
  type Del = { key: string; options?: WireOptions };
  type Cas = { key: string; expected_revision: string; value: Uint8Array; options?: WireOptions };
  type Get = { key: string; consistency: string; scope: string; prefix: boolean; limit: number; timeout_ms: number };

  return {
    name: KV_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Put: asyncUnary<Put, WireWriteResponse | Record<string, unknown>>(log, 'Put', (r) => write(r.key, { op: 'put', key: r.key, value: r.value }, r.options)),
      Delete: asyncUnary<Del, WireWriteResponse | Record<string, unknown>>(log, 'Delete', (r) => write(r.key, { op: 'delete', key: r.key }, r.options)),
      Cas: asyncUnary<Cas, WireWriteResponse | Record<string, unknown>>(log, 'Cas', (r) =>
        write(r.key, { op: 'cas', key: r.key, value: r.value, expectedRevision: uint('expected_revision', r.expected_revision) }, r.options),
      ),
      Get: asyncUnary<Get, { items: WireItem[]; applied_index: number } | Record<string, unknown>>(log, 'Get', async (r) => {
        if (r.key === '' && !r.prefix) throw invalid('key: required (or set prefix to list keys)');
        const level = oneOf('consistency', r.consistency, KV_READ_LEVELS, 'strong');
        if (isGeoLevel(level)) return geo.read(r, level);
        try {
          const out = await service.read({
            key: r.key,
            prefix: r.prefix,
            limit: r.limit,
            // serializable: this replica's applied state, without the leader's barrier.
            consistency: level === 'serializable' ? 'local' : 'strong',
            scope: oneOf('scope', r.scope, KV_SCOPES, 'datacenter'),
            timeoutMs: requireTimeout(r.timeout_ms, opts.defaultTimeoutMs),
          });
          return { items: out.entries.map(entryItem), applied_index: out.appliedIndex };
        } catch (err) {
          throw failure(err);
        }
      }),
    },
  };
}

