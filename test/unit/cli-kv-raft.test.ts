/**
 * dwcpctl's `kv`, `raft`, `crdt` and `state` commands in process, against a
 * real admin gRPC server on a temp socket whose Kv, Raft and State services
 * are scripted fakes: what each command puts on the wire (flags, client id
 * and sequence, consistency levels, timeouts, uint64 fields), how it prints
 * each answer, and its exit codes. The same commands against real daemons
 * are in test/integration/kv-raft.test.ts and state-geo.test.ts.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminClientError, connectAdmin } from '../../src/admin/client.ts';
import { KV_SERVICE, RAFT_SERVICE, loadAdminPackage } from '../../src/admin/schema.ts';
import { STATE_SERVICE } from '../../src/admin/schema.ts';
import { startAdminServer, type AdminServer } from '../../src/admin/server.ts';
import { main } from '../../src/cli/main.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics } from '../../src/metrics/metrics.ts';
import { NODE_STATUS } from '../support/status-fixture.ts';
import { toStatus } from '../../src/admin/status.ts';
import { DwcpError } from '../../src/errors.ts';
import { RaftClientError } from '../../src/consensus/raft/node.ts';
import { GeoStateError } from '../../src/state/geo-state.ts';

type Wire = Record<string, unknown>;
type Answer = Wire | grpc.ServiceError;

/** Every request the fake services saw, by method, and the next answer each should give. */
const seen: { method: string; request: Wire }[] = [];
const answers = new Map<string, Answer>();

function failure(code: grpc.status, details: string): grpc.ServiceError {
  return Object.assign(new Error(details), { code, details, metadata: new grpc.Metadata() });
}

/** A daemon's DwcpError as the admin services send it: status, details and the code/retryable trailers. */
function refusal(err: DwcpError): grpc.ServiceError {
  return Object.assign(new Error(err.message), toStatus(err));
}

/** `prefix` tells apart methods of one name in two services (State.Get, Kv's Get). */
function scripted(methods: string[], prefix = ''): grpc.UntypedServiceImplementation {
  return Object.fromEntries(
    methods.map((name) => [
      name,
      (call: grpc.ServerUnaryCall<Wire, Wire>, callback: grpc.sendUnaryData<Wire>) => {
        const method = `${prefix}${name}`;
        seen.push({ method, request: call.request });
        const answer = answers.get(method);
        if (answer === undefined) callback(failure(grpc.status.INTERNAL, `no scripted answer for ${method}`));
        else if (answer instanceof Error) callback(answer);
        else callback(null, answer);
      },
    ]),
  );
}

let dir: string;
let socket: string;
let server: AdminServer;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-cli-kv-'));
  socket = join(dir, 'admin.sock');
  const packageDefinition = loadAdminPackage();
  server = await startAdminServer({
    socketPath: socket,
    status: () => NODE_STATUS,
    logger: createLogger('silent'),
    metrics: createMetrics({ defaultMetrics: false }),
    services: [
      { name: KV_SERVICE, packageDefinition, implementation: scripted(['Put', 'Delete', 'Cas', 'Get']) },
      { name: RAFT_SERVICE, packageDefinition, implementation: scripted(['Status', 'Members', 'AddMember', 'RemoveMember', 'TransferLeader']) },
      { name: STATE_SERVICE, packageDefinition, implementation: scripted(['Update', 'Get', 'Digest', 'SetTestPartition'], 'State.') },
    ],
  });
});

afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  seen.length = 0;
  answers.clear();
});

async function ctl(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(['--socket', socket, ...argv], {}, { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t) });
  return { code, stdout, stderr };
}

const bytes = (s: string) => Buffer.from(s, 'utf8');
const written = (over: Wire = {}): Wire => ({ ok: true, revision: 7, reason: '', current_revision: 0, leader: 'a', ...over });

describe('dwcpctl kv', () => {
  it('puts with a fresh client id per invocation, sequence 1, the --timeout as the request timeout', async () => {
    answers.set('Put', written());
    const first = await ctl('--timeout', '1234', 'kv', 'put', 'k', 'v a l');
    const second = await ctl('kv', 'put', 'k', 'v2', '--scope', 'federation');
    expect([first, second]).toEqual([0, 0].map((code) => ({ code, stdout: 'OK put k revision 7\n', stderr: '' })));
    const [a, b] = seen.map((s) => s.request);
    expect(a).toMatchObject({ key: 'k', value: bytes('v a l'), options: { scope: 'datacenter', seq: '1', timeout_ms: 1234 } });
    expect(b).toMatchObject({ key: 'k', value: bytes('v2'), options: { scope: 'federation', seq: '1', timeout_ms: 5000 } });
    const ids = [a, b].map((r) => (r?.options as Wire).client_id);
    expect(ids[0]).toMatch(/^dwcpctl-.+-[0-9a-f]{12}$/);
    expect(ids[0]).not.toBe(ids[1]);
  });

  it('prints a write as JSON with snake_case fields, the previous item decoded', async () => {
    answers.set('Put', written({ prev: { key: 'k', value: bytes('old'), revision: 3, create_revision: 2 } }));
    const res = await ctl('kv', 'put', 'k', 'new', '--json');
    expect(res.code).toBe(0);
    expect(JSON.parse(res.stdout)).toEqual({
      ok: true,
      revision: 7,
      reason: '',
      current_revision: 0,
      prev: { key: 'k', value: 'old', revision: 3, create_revision: 2 },
      leader: 'a',
    });
  });

  it('sends the expected revision of a cas as uint64, and fails a mismatch naming the current revision', async () => {
    answers.set('Cas', written({ ok: false, revision: 0, reason: 'cas_mismatch', current_revision: 9 }));
    const mismatch = await ctl('kv', 'cas', 'k', 'v', '--revision', '8');
    expect(seen[0]?.request).toMatchObject({ key: 'k', expected_revision: '8', value: bytes('v') });
    expect(mismatch).toEqual({
      code: 1,
      stdout: 'cas k: not applied (cas_mismatch; current revision 9)\n',
      stderr: 'dwcpctl: cas k: cas_mismatch (current revision 9)\n',
    });
    answers.set('Cas', written({ ok: false, revision: 0, reason: 'cas_mismatch', current_revision: 0 }));
    expect((await ctl('kv', 'cas', 'k', 'v', '--revision', '8')).stderr).toBe('dwcpctl: cas k: cas_mismatch (current revision none: key absent)\n');
    answers.set('Cas', written({ revision: 10 }));
    expect(await ctl('kv', 'cas', 'k', 'v', '--revision', '0')).toEqual({ code: 0, stdout: 'OK cas k revision 10\n', stderr: '' });
    expect(seen[2]?.request.expected_revision).toBe('0');
  });

  it('says when a delete found nothing', async () => {
    answers.set('Delete', written({ revision: 0 }));
    expect(await ctl('kv', 'delete', 'gone')).toEqual({ code: 0, stdout: 'delete gone: key did not exist\n', stderr: '' });
    answers.set('Delete', written({ revision: 12, prev: { key: 'here', value: bytes(''), revision: 4, create_revision: 4 } }));
    expect((await ctl('kv', 'delete', 'here')).stdout).toBe('OK delete here revision 12\n');
  });

  it('gets one key, a prefix as a table, or JSON, passing consistency, scope, prefix and limit through', async () => {
    const item = (key: string, value: string, revision: number) => ({ key, value: bytes(value), revision, create_revision: revision });
    answers.set('Get', { items: [item('k', 'hello', 5)], applied_index: 6 });
    expect(await ctl('kv', 'get', 'k')).toEqual({ code: 0, stdout: 'hello\n', stderr: '' });
    expect(seen[0]?.request).toEqual({ key: 'k', consistency: 'strong', scope: 'datacenter', prefix: false, limit: 0, timeout_ms: 5000 });
    // --timeout takes a duration as etcdctl's --command-timeout does.
    expect(await ctl('--timeout', '2s', 'kv', 'get', 'k')).toEqual({ code: 0, stdout: 'hello\n', stderr: '' });
    expect(seen.splice(1, 1)[0]?.request).toMatchObject({ key: 'k', timeout_ms: 2000 });

    answers.set('Get', { items: [item('p/a', '1', 5), item('p/bb', 'two', 12)], applied_index: 12 });
    const table = await ctl('kv', 'get', 'p/', '--prefix', '--limit', '2', '--consistency', 'serializable', '--scope', 'federation');
    expect(table.stdout).toBe('KEY   REVISION  VALUE\np/a   5         1\np/bb  12        two\n');
    expect(seen[1]?.request).toEqual({ key: 'p/', consistency: 'serializable', scope: 'federation', prefix: true, limit: 2, timeout_ms: 5000 });
    const asJson = await ctl('kv', 'get', 'p/', '--prefix', '--json');
    expect(JSON.parse(asJson.stdout)).toEqual({
      items: [
        { key: 'p/a', value: '1', revision: 5, create_revision: 5 },
        { key: 'p/bb', value: 'two', revision: 12, create_revision: 12 },
      ],
      applied_index: 12,
    });

    answers.set('Get', { items: [], applied_index: 12 });
    expect(await ctl('kv', 'get', 'nope')).toEqual({ code: 1, stdout: '', stderr: 'dwcpctl: key "nope" not found\n' });
    // An empty prefix listing is an answer, not an error.
    expect(await ctl('kv', 'get', 'nope/', '--prefix')).toEqual({ code: 0, stdout: 'KEY  REVISION  VALUE\n', stderr: '' });
  });

  it('passes the daemon\'s reason through: retryable unavailability, and other refusals with their code', async () => {
    answers.set('Put', refusal(new DwcpError('unavailable', 'write not committed within 1500 ms: no leader is known; retry')));
    expect(await ctl('kv', 'put', 'k', 'v')).toEqual({
      code: 1,
      stdout: '',
      stderr: 'dwcpctl: Put: write not committed within 1500 ms: no leader is known; retry (retryable)\n',
    });
    answers.set('Get', failure(grpc.status.FAILED_PRECONDITION, 'this node is untrusted'));
    expect((await ctl('kv', 'get', 'k')).stderr).toBe('dwcpctl: Get failed with FAILED_PRECONDITION: this node is untrusted\n');
  });

  it('recognises a retryable failure from the status trailers, whatever the message says', async () => {
    // A message that never mentions retrying: the verdict travels beside it.
    answers.set('Put', refusal(new DwcpError('no_quorum', 'the moon is in the wrong phase')));
    expect(await ctl('kv', 'put', 'k', 'v')).toEqual({ code: 1, stdout: '', stderr: 'dwcpctl: Put: the moon is in the wrong phase (retryable)\n' });
    const client = connectAdmin(socket, { timeoutMs: 2000 });
    try {
      const err: unknown = await client.kv.put('k', new Uint8Array(0), { scope: '', client_id: '', seq: 0, timeout_ms: 0 }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(AdminClientError);
      expect(err).toMatchObject({ code: 'no_quorum', retryable: true, grpcCode: grpc.status.UNAVAILABLE, message: 'Put: the moon is in the wrong phase' });
      // The same text with "(retryable)" in it but no trailer (a foreign server) is not read as retryable.
      answers.set('Put', failure(grpc.status.UNAVAILABLE, 'no leader (retryable)'));
      const textOnly: unknown = await client.kv.put('k', new Uint8Array(0), { scope: '', client_id: '', seq: 0, timeout_ms: 0 }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(textOnly).toMatchObject({ code: 'unavailable', retryable: false });
    } finally {
      client.close();
    }
    // And a non-retryable code stays so, whatever its text.
    answers.set('Put', refusal(new DwcpError('invalid', 'please retry later')));
    expect((await ctl('kv', 'put', 'k', 'v')).stderr).toBe('dwcpctl: Put failed with INVALID_ARGUMENT: please retry later\n');
  });

  it('refuses bad usage with exit 2 before calling the daemon', async () => {
    const cases: [string[], string][] = [
      [['kv'], 'kv needs a subcommand: put, get, delete or cas'],
      [['kv', 'list'], 'kv needs a subcommand: put, get, delete or cas (got "list")'],
      [['kv', 'put', 'k'], 'kv put takes KEY VALUE (got 1 argument)'],
      [['kv', 'get', 'a', 'b'], 'kv get takes KEY (got 2 arguments)'],
      [['kv', 'cas', 'k', 'v'], 'kv cas needs --revision N (the revision the key must have; 0: must not exist)'],
      [['kv', 'cas', 'k', 'v', '--revision=-1'], '--revision: "-1" is not a whole number >= 0'],
      [['kv', 'cas', 'k', 'v', '--revision', '1e3'], '--revision: "1e3" is not a whole number >= 0'],
      [['kv', 'get', 'k', '--limit', '0'], '--limit: "0" is not a whole number >= 1'],
      [['kv', 'put', 'k', 'v', '--scope', 'galaxy'], '--scope: "galaxy" is not one of datacenter|federation'],
      [['kv', 'delete', 'k', '--scope', 'galaxy'], '--scope: "galaxy" is not one of datacenter|federation'],
      [['kv', 'get', 'k', '--consistency', 'linearizable'], '--consistency: "linearizable" is not one of strong|serializable|quorum|local|eventual'],
      [['kv', 'put', 'k', 'v', '--consistency', 'serializable'], '--consistency: "serializable" is not one of strong|quorum|local|eventual'],
      [['kv', 'put', 'k', 'v', '--consistency', 'local', '--scope', 'federation'], '--scope applies to --consistency strong or serializable only, not local'],
      [['kv', 'put', 'k', 'v', '--ttl', '100'], '--ttl applies to --consistency quorum, local or eventual, not strong'],
      [['kv', 'put', 'k', 'v', '--consistency', 'eventual', '--ttl', '0'], '--ttl: "0" is not a whole number >= 1'],
      [['kv', 'cas', 'k', 'v', '--revision', '1', '--consistency', 'quorum'], 'kv cas needs --consistency strong (geo keys have no revisions), not quorum'],
      [['kv', 'get', 'k', '--consistency', 'quorum', '--ttl', '5'], '--ttl applies to writes (put), not to get'],
      [['kv', 'get', 'k', '--bogus'], 'unknown flag --bogus'],
      [['raft'], 'raft needs a subcommand: status, members, add-member, remove-member or transfer-leader'],
      [['raft', 'status', 'x'], 'raft status takes no arguments (got 1 argument)'],
      [['raft', 'add-member'], 'raft add-member takes ID (got 0 arguments)'],
      [['raft', 'transfer-leader', 'a', 'b'], 'raft transfer-leader takes at most one argument, the new leader'],
      [['raft', 'status', '--prefix'], 'unknown flag --prefix'],
    ];
    for (const [argv, reason] of cases) {
      const res = await ctl(...argv);
      expect([res.code, res.stdout, res.stderr.split('\n')[0]], argv.join(' ')).toEqual([2, '', `dwcpctl: ${reason}`]);
    }
    expect(seen).toEqual([]);
  });
});

describe('dwcpctl kv at geo levels', () => {
  it('writes to the geo keyspace with the level and TTL, no scope, and says how many regions hold it', async () => {
    answers.set('Put', written({ revision: 0, consistency: 'quorum', regions_acked: 3, regions_total: 5, leader: 'me' }));
    const quorum = await ctl('kv', 'put', 'k', 'v', '--consistency', 'quorum', '--ttl', '60000');
    expect(quorum).toEqual({ code: 0, stdout: 'OK put k (quorum: 3 of 5 regions hold it)\n', stderr: '' });
    expect(seen[0]?.request).toMatchObject({ key: 'k', options: { consistency: 'quorum', ttl_ms: '60000', scope: '' } });
    answers.set('Delete', written({ revision: 0, consistency: 'eventual', regions_acked: 0, regions_total: 5 }));
    expect((await ctl('kv', 'delete', 'k', '--consistency', 'eventual')).stdout).toBe('OK delete k (eventual: applied here)\n');
    answers.set('Put', written({ revision: 0, consistency: 'local', regions_acked: 1, regions_total: 5, leader: 'me' }));
    const asJson = await ctl('kv', 'put', 'k', 'v', '--consistency', 'local', '--json');
    expect(JSON.parse(asJson.stdout)).toEqual({ ok: true, consistency: 'local', regions_acked: 1, regions_total: 5, leader: 'me' });
  });

  it('reads the geo keyspace: the value, a prefix with the writing region, or JSON with the regions that answered', async () => {
    const item = (key: string, value: string, region: string) => ({ key, value: bytes(value), revision: 0, create_revision: 0, region, hlc: '1700000000000.0' });
    answers.set('Get', { items: [item('k', 'hello', 'eu')], applied_index: 0, regions_answered: 3, regions_total: 5 });
    expect(await ctl('kv', 'get', 'k', '--consistency', 'quorum')).toEqual({ code: 0, stdout: 'hello\n', stderr: '' });
    expect(seen[0]?.request).toEqual({ key: 'k', consistency: 'quorum', scope: '', prefix: false, limit: 0, timeout_ms: 5000 });
    expect(JSON.parse((await ctl('kv', 'get', 'k', '--consistency', 'quorum', '--json')).stdout)).toEqual({
      items: [{ key: 'k', value: 'hello', region: 'eu', hlc: '1700000000000.0' }],
      regions_answered: 3,
      regions_total: 5,
    });
    answers.set('Get', { items: [item('p/a', '1', 'eu'), item('p/b', '2', 'us')], applied_index: 0, regions_answered: 1, regions_total: 5 });
    expect((await ctl('kv', 'get', 'p/', '--prefix', '--consistency', 'local')).stdout).toBe('KEY  REGION  VALUE\np/a  eu      1\np/b  us      2\n');
  });

  it('passes a quorum failure through with the count of regions', async () => {
    answers.set('Put', refusal(new GeoStateError('no_quorum', 'quorum write of lww-register:k not confirmed: 2 of 5 regions hold it durably, a majority is 3')));
    expect(await ctl('kv', 'put', 'k', 'v', '--consistency', 'quorum')).toEqual({
      code: 1,
      stdout: '',
      stderr: 'dwcpctl: Put: quorum write of lww-register:k not confirmed: 2 of 5 regions hold it durably, a majority is 3 (retryable)\n',
    });
  });
});

describe('dwcpctl crdt and state', () => {
  const entry = (over: Wire = {}): Wire => ({ key: 'hits', type: 'pn-counter', value_json: '5', clock: [{ region: 'eu', count: 4 }], ...over });

  it('sends each operation with its arguments, local by default, and prints the new value', async () => {
    answers.set('State.Update', { entry: entry(), consistency: 'local', regions_acked: 1, regions_total: 3 });
    expect(await ctl('crdt', 'incr', 'hits')).toEqual({ code: 0, stdout: 'OK incr hits = 5 (pn-counter; local: durable here)\n', stderr: '' });
    await ctl('crdt', 'decr', 'hits', '3', '--consistency', 'quorum', '--timeout', '900');
    await ctl('crdt', 'add', 'vms', 'vm-1', '--type', 'g-set', '--ttl', '5000');
    await ctl('crdt', 'set', 'vm-1', 'cpu', '8');
    await ctl('crdt', 'unset', 'vm-1', 'cpu', '--consistency', 'eventual');
    expect(seen.map((x) => x.request)).toEqual([
      expect.objectContaining({ key: 'hits', op: 'incr', type: '', amount: '1', consistency: 'local', timeout_ms: 5000, ttl_ms: '0' }),
      expect.objectContaining({ key: 'hits', op: 'decr', amount: '3', consistency: 'quorum', timeout_ms: 900 }),
      expect.objectContaining({ key: 'vms', op: 'add', type: 'g-set', element: 'vm-1', ttl_ms: '5000' }),
      expect.objectContaining({ key: 'vm-1', op: 'set', field: 'cpu', value_json: '8' }),
      expect.objectContaining({ key: 'vm-1', op: 'unset', field: 'cpu', consistency: 'eventual' }),
    ]);
  });

  it('prints one entry as its value, several as a table, and fails when there is none', async () => {
    answers.set('State.Get', { entries: [entry()], regions_answered: 1, regions_total: 3 });
    expect(await ctl('crdt', 'get', 'hits')).toEqual({ code: 0, stdout: '5\n', stderr: '' });
    answers.set('State.Get', {
      entries: [entry(), entry({ type: 'or-set', value_json: '["a","b"]', clock: [{ region: 'eu', count: 2 }, { region: 'us', count: 7 }], expires_at: '2030-01-01T00:00:00.000Z' })],
      regions_answered: 2,
      regions_total: 3,
    });
    expect((await ctl('crdt', 'get', 'hits', '--consistency', 'quorum')).stdout).toBe(
      ['TYPE        VALUE      CLOCK      EXPIRES', 'pn-counter  5          eu:4       -', 'or-set      ["a","b"]  eu:2 us:7  2030-01-01T00:00:00.000Z', ''].join('\n'),
    );
    answers.set('State.Get', { entries: [], regions_answered: 3, regions_total: 3 });
    expect(await ctl('crdt', 'get', 'nope', '--type', 'or-set')).toEqual({ code: 1, stdout: '', stderr: 'dwcpctl: key "nope" not found as a or-set\n' });
  });

  it('shows every region\'s digest and clock, and says whether they agree', async () => {
    const region = (name: string, digest: string, answered = true) => ({ name, region: `r-${name}`, answered, digest, entries: answered ? 12 : 0, clock: answered ? [{ region: 'a', count: 9 }] : [] });
    answers.set('State.Digest', { regions: [region('a', 'ab'.repeat(32)), region('b', 'ab'.repeat(32))], converged: true });
    expect((await ctl('state', 'digest')).stdout).toBe(
      ['NAME  REGION  ENTRIES  DIGEST            CLOCK', 'a     r-a     12       abababababababab  a:9', 'b     r-b     12       abababababababab  a:9', 'converged: all 2 regions hold the same entries', ''].join('\n'),
    );
    answers.set('State.Digest', { regions: [region('a', 'ab'.repeat(32)), region('b', 'cd'.repeat(32)), region('c', '', false)], converged: false });
    const split = await ctl('state', 'digest');
    expect(split.code).toBe(0);
    expect(split.stdout).toContain('c     r-c     -        (no answer)       -\n');
    expect(split.stdout).toContain('not converged: 2 distinct digests among the 2 of 3 regions that answered\n');
    expect(seen.at(-1)?.request).toEqual({ timeout_ms: 5000 });
  });

  it('refuses bad usage with exit 2 before calling the daemon', async () => {
    const cases: [string[], string][] = [
      [['crdt'], 'crdt needs a subcommand: incr, decr, add, remove, set, unset or get'],
      [['crdt', 'incr'], 'crdt incr takes KEY [N] (got 0 arguments)'],
      [['crdt', 'incr', 'k', '0'], '--amount: "0" is not a whole number >= 1'],
      [['crdt', 'add', 'k'], 'crdt add takes KEY ELEMENT (got 1 argument)'],
      [['crdt', 'set', 'k', 'f', 'not json'], 'crdt set: "not json" is not JSON (quote strings: \'"text"\')'],
      [['crdt', 'get', 'k', '--consistency', 'strong'], '--consistency: "strong" is not one of quorum|local|eventual'],
      [['crdt', 'get', 'k', '--type', 'counter'], '--type: "counter" is not one of lww-register|g-counter|pn-counter|g-set|or-set|yjs-record'],
      [['state'], 'state needs a subcommand: digest'],
      [['state', 'digest', 'x'], 'state digest takes no arguments (got 1 argument)'],
    ];
    for (const [argv, reason] of cases) {
      const res = await ctl(...argv);
      expect([res.code, res.stdout, res.stderr.split('\n')[0]], argv.join(' ')).toEqual([2, '', `dwcpctl: ${reason}`]);
    }
    expect(seen).toEqual([]);
  });
});

describe('dwcpctl raft', () => {
  const status = {
    id: 'a',
    role: 'leader',
    term: 4,
    leader: 'a',
    commit_index: 120,
    applied_index: 119,
    last_index: 121,
    last_term: 4,
    snapshot_index: 100,
    voters: ['a', 'b', 'c'],
    learners: ['d'],
    progress: [
      { id: 'b', match: 121, next: 122, state: 'replicate', learner: false, recent_active: true },
      { id: 'd', match: 0, next: 101, state: 'snapshot', learner: true, recent_active: false },
    ],
    pending_proposals: 2,
  };

  it('prints status as fields and a follower progress table, or as JSON', async () => {
    answers.set('Status', status);
    expect((await ctl('raft', 'status')).stdout).toBe(
      [
        'Node:      a',
        'Role:      leader',
        'Term:      4',
        'Leader:    a',
        'Commit:    120',
        'Applied:   119',
        'Last:      121 (term 4)',
        'Snapshot:  100',
        'Voters:    a, b, c',
        'Learners:  d',
        '',
        'FOLLOWER  ROLE     MATCH  NEXT  STATE      ACTIVE',
        'b         voter    121    122   replicate  yes',
        'd         learner  0      101   snapshot   no',
        '',
      ].join('\n'),
    );
    expect(JSON.parse((await ctl('raft', 'status', '--json')).stdout)).toEqual(status);
  });

  it('says when a follower knows no leader, and shows no progress table', async () => {
    answers.set('Status', { ...status, role: 'candidate', leader: '', learners: [], progress: [] });
    const out = (await ctl('raft', 'status')).stdout;
    expect(out).toContain('Leader:    - (none known)\n');
    expect(out).toContain('Learners:  -\n');
    expect(out).not.toContain('FOLLOWER');
  });

  it('lists members, changes membership and transfers leadership with the --timeout passed on', async () => {
    const members = { members: [{ id: 'a', role: 'voter', leader: true }, { id: 'd', role: 'learner', leader: false }] };
    for (const m of ['Members', 'AddMember', 'RemoveMember']) answers.set(m, members);
    answers.set('TransferLeader', { leader: 'b' });
    const table = 'ID  ROLE     LEADER\na   voter    yes\nd   learner\n';
    expect((await ctl('raft', 'members')).stdout).toBe(table);
    expect((await ctl('--timeout', '9000', 'raft', 'add-member', 'd')).stdout).toBe(table);
    expect((await ctl('raft', 'remove-member', 'd', '--json')).stdout).toBe(`${JSON.stringify(members, null, 2)}\n`);
    expect((await ctl('raft', 'transfer-leader')).stdout).toBe('leader is now b\n');
    expect((await ctl('raft', 'transfer-leader', 'c', '--timeout', '700')).stdout).toBe('leader is now b\n');
    expect(seen.map((s) => [s.method, s.request])).toEqual([
      ['Members', {}],
      ['AddMember', { id: 'd', timeout_ms: 9000 }],
      ['RemoveMember', { id: 'd', timeout_ms: 5000 }],
      ['TransferLeader', { to: '', timeout_ms: 5000 }],
      ['TransferLeader', { to: 'c', timeout_ms: 700 }],
    ]);
  });

  it('passes "not the leader" through with the leader it names', async () => {
    answers.set('AddMember', refusal(new RaftClientError('not_leader', 'b is not the leader; the leader is a', 'a')));
    expect(await ctl('raft', 'add-member', 'd')).toEqual({
      code: 1,
      stdout: '',
      stderr: 'dwcpctl: AddMember failed with FAILED_PRECONDITION: b is not the leader; the leader is a (retryable)\n',
    });
  });
});
