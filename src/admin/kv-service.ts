/**
 * The admin socket's Kv service (kv.proto) over the KV router: parses each
 * request at the edge (key, scope, consistency, numbers, timeout; errors name
 * the field) and turns the router's answers into wire responses. Failures
 * are DwcpErrors (the router's, the logs', the geo store's, a command's
 * decode error) and travel as they are: call.ts sends each as its status,
 * with its retryability.
 *
 * Which keyspace and log a request goes to (scope × consistency), and what
 * each can serve, is the router's (src/kv/router.ts): this adapter only
 * parses the wire into a router request and renders the typed answer back,
 * so the rules do not depend on how a request arrived.
 */
import type { Logger } from '../log.ts';
import type { KvEntry, KvEntryMeta } from '../kv/command.ts';
import { KV_READ_LEVELS, KV_SCOPES, KV_WRITE_LEVELS, type KvScope } from '../kv/consistency.ts';
import type { KvGeoItem } from '../kv/geo-keyspace.ts';
import type { KvRouter, KvWriteAnswer, KvWriteOp } from '../kv/router.ts';
import type { KvWriteOutcome } from '../kv/service.ts';
import { DwcpError } from '../errors.ts';
import type { MethodDefinition, PackageDefinition } from '@grpc/proto-loader';
import { KV_SERVICE, loadAdminPackage, serviceDefinition, type KvGetResponse, type KvItem, type KvWriteOptions, type KvWriteResponse } from './schema.ts';
import { decodePutRequest, encodeWriteResponse } from './kv-write-wire.ts';
import { asyncUnary, requireTimeout } from './call.ts';
import type { AdminServiceRegistration } from './server.ts';

/** uint64 arrives as a decimal string (longs: String). */
type WireOptions = Omit<KvWriteOptions, 'seq' | 'ttl_ms'> & { seq: string; ttl_ms?: string };

function invalid(message: string): DwcpError {
  return new DwcpError('invalid', message);
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

function item(key: string, meta: KvEntryMeta, value: Uint8Array = new Uint8Array(0)): KvItem {
  return { key, value, revision: meta.revision, create_revision: meta.createRevision, region: '', hlc: '' };
}

function entryItem(e: KvEntry): KvItem {
  return item(e.key, e, e.value);
}

/** A geo item: no revisions (0), but the writing region and its HLC stamp as "wallMs.logical". */
function geoItem(i: KvGeoItem): KvItem {
  const { written } = i;
  return { key: i.key, value: i.value, revision: 0, create_revision: 0, region: written?.region ?? '', hlc: written === null ? '' : `${written.wallMs}.${written.logical}` };
}

/** '' (not set on the wire) is no scope named. */
function scopeOf(field: string, raw: string): KvScope | null {
  return raw === '' ? null : oneOf(field, raw, KV_SCOPES, 'datacenter');
}

function answerOf(key: string, answer: KvWriteAnswer, nodeName: string): KvWriteResponse {
  if (answer.keyspace === 'log') return writeResponse(key, answer);
  const { level, acked, total } = answer;
  return { ok: true, revision: 0, reason: '', current_revision: 0, prev: null, leader: nodeName, consistency: level, regions_acked: acked, regions_total: total };
}

export function writeResponse(key: string, outcome: KvWriteOutcome): KvWriteResponse {
  const { result, leader } = outcome;
  const base: KvWriteResponse = { ok: false, revision: 0, reason: '', current_revision: 0, prev: null, leader, consistency: 'strong', regions_acked: 0, regions_total: 0 };
  if (!result.ok) {
    switch (result.reason) {
      case 'cas_mismatch':
        return { ...base, reason: result.reason, current_revision: result.currentRevision };
      case 'quota_exceeded':
        throw new DwcpError('exhausted', `the store holds ${result.stateBytes} bytes; the write would pass its ${result.limitBytes}-byte limit`);
      case 'stale_request':
        throw invalid(`options.seq: this client id already applied seq ${result.lastSeq}; use a higher seq`);
      case 'invalid_command':
        throw invalid(result.message);
    }
  }
  switch (result.op) {
    case 'put':
    case 'cas':
      return { ...base, ok: true, revision: result.revision, prev: result.prev ? item(key, result.prev) : null };
    case 'delete':
      return { ...base, ok: true, revision: result.deleted ? result.revision : 0, prev: result.prev ? item(key, result.prev) : null };
    default:
      throw new DwcpError('internal', `a write returned a ${result.op} result`);
  }
}

type Method = MethodDefinition<object, object>;

/**
 * The admin package with the Kv service's hot codecs (kv-write-wire.ts:
 * Put's request, the write methods' response) in front of proto-loader's,
 * which stay the fallback and the definition. Every client put is one call.
 */
function kvPackage(): PackageDefinition {
  const pkg = loadAdminPackage();
  const service = serviceDefinition(pkg, KV_SERVICE) as Record<string, Method>;
  const write = (m: Method): Method => ({ ...m, responseSerialize: (r: object) => encodeWriteResponse(r as KvWriteResponse) ?? m.responseSerialize(r) });
  const put = write(service['Put'] as Method);
  return {
    ...pkg,
    [KV_SERVICE]: {
      ...service,
      Put: { ...put, requestDeserialize: (b: Buffer) => decodePutRequest(b) ?? put.requestDeserialize(b) },
      Delete: write(service['Delete'] as Method),
      Cas: write(service['Cas'] as Method),
    },
  };
}

export interface KvAdminOptions {
  router: KvRouter;
  nodeName: string;
  defaultTimeoutMs: number;
  log: Logger;
}

export function kvServiceRegistration(opts: KvAdminOptions): AdminServiceRegistration {
  const { router, log } = opts;

  async function write(key: string, op: KvWriteOp, options: WireOptions | undefined): Promise<KvWriteResponse> {
    const o = options ?? { scope: '', client_id: '', seq: '0', timeout_ms: 0 };
    const request = {
      op,
      level: oneOf('options.consistency', o.consistency ?? '', KV_WRITE_LEVELS, 'strong'),
      scope: scopeOf('options.scope', o.scope),
      clientId: o.client_id,
      seq: uint('options.seq', o.seq),
      ttlMs: uint('options.ttl_ms', o.ttl_ms ?? 0),
      timeoutMs: requireTimeout(o.timeout_ms, opts.defaultTimeoutMs),
    };
    return answerOf(key, await router.write(request), opts.nodeName);
  }

  type Put = { key: string; value: Uint8Array; options?: WireOptions };
  type Del = { key: string; options?: WireOptions };
  type Cas = { key: string; expected_revision: string; value: Uint8Array; options?: WireOptions };
  type Get = { key: string; consistency: string; scope: string; prefix: boolean; limit: number; timeout_ms: number };

  return {
    name: KV_SERVICE,
    packageDefinition: kvPackage(),
    implementation: {
      Put: asyncUnary<Put, KvWriteResponse>(log, 'Put', (r) => write(r.key, { op: 'put', key: r.key, value: r.value }, r.options)),
      Delete: asyncUnary<Del, KvWriteResponse>(log, 'Delete', (r) => write(r.key, { op: 'delete', key: r.key }, r.options)),
      Cas: asyncUnary<Cas, KvWriteResponse>(log, 'Cas', (r) =>
        write(r.key, { op: 'cas', key: r.key, value: r.value, expectedRevision: uint('expected_revision', r.expected_revision) }, r.options),
      ),
      Get: asyncUnary<Get, KvGetResponse>(log, 'Get', async (r) => {
        if (r.key === '' && !r.prefix) throw invalid('key: required (or set prefix to list keys)');
        const request = {
          key: r.key,
          prefix: r.prefix,
          limit: r.limit,
          level: oneOf('consistency', r.consistency, KV_READ_LEVELS, 'strong'),
          scope: scopeOf('scope', r.scope),
          timeoutMs: requireTimeout(r.timeout_ms, opts.defaultTimeoutMs),
        };
        const answer = await router.read(request);
        if (answer.keyspace === 'log') return { items: answer.entries.map(entryItem), applied_index: answer.appliedIndex, regions_answered: 0, regions_total: 0 };
        return { items: answer.items.map(geoItem), applied_index: 0, regions_answered: answer.answered, regions_total: answer.total };
      }),
    },
  };
}
