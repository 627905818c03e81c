/**
 * KvStateMachine: register semantics and revisions, at-most-once writes
 * through client sessions, deterministic LRU session eviction, malformed
 * entries that change nothing, quotas, ranges, and snapshots that restore to
 * a machine indistinguishable from the original (byte-identical snapshots,
 * identical results afterwards), checked against a model by fast-check.
 */
import { Buffer } from 'node:buffer';
import zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { KvCommand, KvOp, KvResult } from '../../src/kv/command.ts';
import { KV_RANGE_MAX_BYTES, encodeKvCommand, kvEntryFootprint, kvProto } from '../../src/kv/command.ts';
import { KvSnapshotError, KV_SNAPSHOT_VERSION } from '../../src/kv/snapshot.ts';
import { KvStateMachine } from '../../src/kv/state-machine.ts';

const text = (value: Uint8Array | undefined): string | undefined => (value === undefined ? undefined : Buffer.from(value).toString());

/** Drives a machine with consecutive indices and one client per call site. */
class Driver {
  readonly machine: KvStateMachine;
  index: number;

  constructor(machine = new KvStateMachine()) {
    this.machine = machine;
    this.index = machine.appliedIndex;
  }

  run(clientId: string, seq: number, op: KvOp): KvResult {
    return this.raw(encodeKvCommand({ clientId, seq, ...op } as KvCommand));
  }

  raw(data: Uint8Array): KvResult {
    this.index += 1;
    return this.machine.apply(this.index, data);
  }
}

const put = (key: string, value: string): KvOp => ({ op: 'put', key, value: Buffer.from(value) });
const cas = (key: string, expectedRevision: number, value: string): KvOp => ({ op: 'cas', key, expectedRevision, value: Buffer.from(value) });
const del = (key: string): KvOp => ({ op: 'delete', key });

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

describe('KvStateMachine semantics', () => {
  it('puts, gets and overwrites, tracking revision and createRevision', () => {
    const d = new Driver();
    expect(d.run('c', 1, put('a', '1'))).toEqual({ ok: true, op: 'put', revision: 1, prev: null });
    expect(d.run('c', 2, put('a', '2'))).toEqual({ ok: true, op: 'put', revision: 2, prev: { revision: 1, createRevision: 1 } });
    const entry = d.machine.get('a');
    expect(entry).toMatchObject({ key: 'a', revision: 2, createRevision: 1 });
    expect(text(entry?.value)).toBe('2');
    expect(d.machine.get('missing')).toBeNull();
  });

  it('deletes, and deleting a missing key succeeds with deleted: false', () => {
    const d = new Driver();
    d.run('c', 1, put('a', '1'));
    expect(d.run('c', 2, del('a'))).toEqual({ ok: true, op: 'delete', revision: 2, deleted: true, prev: { revision: 1, createRevision: 1 } });
    expect(d.machine.get('a')).toBeNull();
    expect(d.run('c', 3, del('a'))).toEqual({ ok: true, op: 'delete', revision: 3, deleted: false, prev: null });
    // Recreated: a new life, a new createRevision.
    d.run('c', 4, put('a', 'again'));
    expect(d.machine.get('a')).toMatchObject({ revision: 4, createRevision: 4 });
    expect(d.machine.stats()).toEqual({ keys: 1, bytes: kvEntryFootprint(1, 5), sessions: 1, appliedIndex: 4 });
  });

  it('compares and swaps on the revision; revision 0 means "must not exist"', () => {
    const d = new Driver();
    expect(d.run('c', 1, cas('k', 0, 'first'))).toEqual({ ok: true, op: 'cas', revision: 1, prev: null });
    expect(d.run('c', 2, cas('k', 0, 'again'))).toEqual({ ok: false, reason: 'cas_mismatch', currentRevision: 1 });
    expect(d.run('c', 3, cas('k', 2, 'wrong'))).toEqual({ ok: false, reason: 'cas_mismatch', currentRevision: 1 });
    expect(d.run('c', 4, cas('k', 1, 'second'))).toEqual({ ok: true, op: 'cas', revision: 4, prev: { revision: 1, createRevision: 1 } });
    expect(text(d.machine.get('k')?.value)).toBe('second');
    expect(d.run('c', 5, cas('absent', 3, 'x'))).toEqual({ ok: false, reason: 'cas_mismatch', currentRevision: 0 });
  });

  it('accepts the leader no-op and ignores it', () => {
    const d = new Driver();
    d.run('c', 1, put('a', '1'));
    const before = d.machine.get('a');
    expect(d.raw(new Uint8Array())).toEqual({ ok: true, op: 'noop', revision: 2 });
    expect(d.machine.get('a')).toEqual(before);
    expect(d.machine.stats()).toMatchObject({ keys: 1, sessions: 1, appliedIndex: 2 });
  });

  it('serves reads in the log without touching sessions', () => {
    const d = new Driver();
    d.run('c', 1, put('a', '1'));
    const got = d.run('reader', 1, { op: 'get', key: 'a' });
    expect(got).toMatchObject({ ok: true, op: 'get', revision: 2, entry: { key: 'a', revision: 1 } });
    expect(d.run('reader', 1, { op: 'get', key: 'nope' })).toEqual({ ok: true, op: 'get', revision: 3, entry: null });
    expect(d.run('reader', 1, { op: 'range', prefix: '', limit: 10, after: '' })).toMatchObject({ op: 'range', revision: 4, more: false, entries: [{ key: 'a' }] });
    expect(d.machine.stats().sessions).toBe(1);
  });

  it('hands out copies: changing a returned value does not change the state', () => {
    const d = new Driver();
    d.run('c', 1, put('a', 'abc'));
    const entry = d.machine.get('a');
    entry?.value.fill(0);
    d.machine.range('', 10).entries[0]?.value.fill(0);
    expect(text(d.machine.get('a')?.value)).toBe('abc');
  });

  it('stores a copy of the value, not a view of the log entry', () => {
    const d = new Driver();
    const data = encodeKvCommand({ clientId: 'c', seq: 1, ...put('a', 'abc') } as KvCommand);
    d.raw(data);
    data.fill(0);
    expect(text(d.machine.get('a')?.value)).toBe('abc');
  });

  it('keeps every value intact across many overwrites and deletes (its slabs repack as holes grow)', () => {
    const d = new Driver();
    const expected = new Map<string, string>();
    let seq = 0;
    // ~4 MB of writes at random (a fixed LCG) over 2 000 keys: holes in every slab, several repacks.
    let rand = 1;
    for (let i = 0; i < 16_000; i++) {
      rand = (rand * 1103515245 + 12345) % 2 ** 31;
      const key = `k${rand % 2000}`;
      if (i % 7 === 3) {
        d.run('c', ++seq, del(key));
        expected.delete(key);
      } else {
        const value = `${i}:`.padEnd(100 + (i % 300), String.fromCharCode(97 + (i % 26)));
        d.run('c', ++seq, put(key, value));
        expected.set(key, value);
      }
    }
    d.run('c', ++seq, put('big', 'x'.repeat(10_000)));
    expected.set('big', 'x'.repeat(10_000));
    for (const [key, value] of expected) expect(text(d.machine.get(key)?.value)).toBe(value);
    expect(d.machine.stats().keys).toBe(expected.size);
    // A restored copy holds the same state.
    const restored = KvStateMachine.restore(d.machine.snapshot());
    for (const [key, value] of expected) expect(text(restored.get(key)?.value)).toBe(value);
  });

  it('overwrites an empty value that shared a slab with values since gone (it once threw: an entry every replica failed on)', () => {
    const d = new Driver();
    let seq = 0;
    d.run('c', ++seq, put('a', 'a'.repeat(4000)));
    d.run('c', ++seq, put('e', ''));
    // Sixteen more fill the first slab and start a second; deleting every value of the first lets it go.
    for (let f = 0; f < 17; f++) d.run('c', ++seq, put(`f${f}`, 'f'.repeat(4000)));
    d.run('c', ++seq, del('a'));
    for (let f = 0; f < 15; f++) d.run('c', ++seq, del(`f${f}`));
    expect(d.run('c', ++seq, put('e', 'x'))).toMatchObject({ ok: true, op: 'put' });
    expect(d.run('c', ++seq, del('e'))).toMatchObject({ ok: true, op: 'delete', deleted: true });
    expect(text(d.machine.get('f16')?.value)).toBe('f'.repeat(4000));
  });

  it('throws when the driver applies an index twice or out of order', () => {
    const d = new Driver();
    d.run('c', 1, put('a', '1'));
    expect(() => d.machine.apply(1, new Uint8Array())).toThrow(/index 1 is not after the applied index 1/);
    expect(() => d.machine.apply(0.5, new Uint8Array())).toThrow(RangeError);
    // Gaps are fine: config entries take indices too.
    expect(d.machine.apply(10, new Uint8Array())).toEqual({ ok: true, op: 'noop', revision: 10 });
  });
});

describe('KvStateMachine sessions', () => {
  it('applies a retried write once and answers it with the stored result', () => {
    const d = new Driver();
    const first = d.run('c', 1, put('a', 'mine'));
    d.run('other', 1, put('a', 'theirs'));
    expect(d.run('c', 1, put('a', 'mine'))).toEqual(first);
    expect(text(d.machine.get('a')?.value)).toBe('theirs');
  });

  it('remembers failures too: a retried cas gets its mismatch, even once it would succeed', () => {
    const d = new Driver();
    d.run('c', 1, put('k', 'v'));
    expect(d.run('c', 2, cas('k', 0, 'x'))).toEqual({ ok: false, reason: 'cas_mismatch', currentRevision: 1 });
    d.run('other', 1, del('k'));
    expect(d.run('c', 2, cas('k', 0, 'x'))).toEqual({ ok: false, reason: 'cas_mismatch', currentRevision: 1 });
    expect(d.machine.get('k')).toBeNull();
  });

  it('refuses a seq below the last applied one as stale, and accepts gaps', () => {
    const d = new Driver();
    d.run('c', 5, put('a', '5'));
    expect(d.run('c', 4, put('a', '4'))).toEqual({ ok: false, reason: 'stale_request', lastSeq: 5 });
    expect(text(d.machine.get('a')?.value)).toBe('5');
    expect(d.run('c', 9, put('a', '9'))).toMatchObject({ ok: true, revision: 3 });
  });

  it('evicts the least recently touched session when full', () => {
    const d = new Driver(new KvStateMachine({ maxSessions: 3 }));
    d.run('a', 1, put('x', 'a1'));
    d.run('b', 1, put('x', 'b1'));
    d.run('c', 1, put('x', 'c1'));
    d.run('a', 1, put('x', 'a1')); // a retry still touches a's session
    d.run('d', 1, put('x', 'd1')); // evicts b, the least recently touched
    expect(d.machine.stats().sessions).toBe(3);
    // a and c still deduplicate; b's session is gone, so its retry applies again.
    expect(d.run('a', 1, put('x', 'a1'))).toEqual({ ok: true, op: 'put', revision: 1, prev: null });
    expect(d.run('c', 1, put('x', 'c1'))).toMatchObject({ revision: 3 });
    expect(d.run('b', 1, put('x', 'b1'))).toMatchObject({ ok: true, revision: 8 });
  });

  it('evicts the same sessions on two machines, one of them restored from a snapshot midway', () => {
    const clients = Array.from({ length: 12 }, (_, i) => `client-${(i * 7) % 12}`);
    const a = new Driver(new KvStateMachine({ maxSessions: 4 }));
    let b = new Driver(new KvStateMachine({ maxSessions: 4 }));
    clients.forEach((client, i) => {
      const op = put(`k${i % 3}`, client);
      expect(b.run(client, 1, op)).toEqual(a.run(client, 1, op));
      if (i === 6) b = new Driver(KvStateMachine.restore(b.machine.snapshot()));
    });
    // Retries reveal which sessions survived: identical on both.
    for (const client of clients) expect(b.run(client, 1, put('probe', client))).toEqual(a.run(client, 1, put('probe', client)));
    expect(sameBytes(a.machine.snapshot(), b.machine.snapshot())).toBe(true);
  });
});

describe('KvStateMachine malformed entries', () => {
  const malformed: [string, Uint8Array][] = [
    ['random bytes', Uint8Array.from([0xde, 0xad, 0xbe, 0xef])],
    ['a command without an op', Uint8Array.from([0x0a, 0x01, 0x63, 0x10, 0x01])],
    ['an oversized key', (() => {
      const type = kvProto.lookupType('dwcp.kv.v1.KvCommand');
      return type.encode(type.fromObject({ clientId: 'c', seq: 9, put: { key: 'k'.repeat(5000), value: Buffer.from('v') } })).finish();
    })()],
  ];

  it.each(malformed)('answers %s with invalid_command and changes nothing but the applied index', (_name, data) => {
    const build = (entry3: Uint8Array): { result: KvResult; snapshot: Uint8Array } => {
      const d = new Driver();
      d.run('c', 1, put('a', '1'));
      d.run('c', 2, put('b', '2'));
      const result = d.raw(entry3);
      d.run('c', 3, put('a', '3'));
      return { result, snapshot: d.machine.snapshot() };
    };
    const bad = build(data);
    expect(bad.result).toMatchObject({ ok: false, reason: 'invalid_command' });
    expect(bad.result.ok === false && bad.result.reason === 'invalid_command' && bad.result.message).toMatch(/^dwcp\.kv\.v1\.KvCommand: /);
    expect(sameBytes(bad.snapshot, build(new Uint8Array()).snapshot)).toBe(true);
  });

  it('never throws on any bytes, valid commands mutated included', () => {
    const valid = encodeKvCommand({ clientId: 'c', seq: 3, ...cas('key', 0, 'value') } as KvCommand);
    const mutated = fc
      .tuple(fc.nat({ max: valid.byteLength - 1 }), fc.integer({ min: 0, max: 255 }), fc.nat({ max: valid.byteLength }))
      .map(([at, byte, cut]) => {
        const copy = Uint8Array.from(valid);
        copy[at] = byte;
        return copy.subarray(0, Math.max(cut, 1));
      });
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ minLength: 1, maxLength: 64 }), mutated), (data) => {
        const d = new Driver();
        const result = d.raw(data);
        if (!result.ok && result.reason === 'invalid_command') {
          expect(d.machine.stats()).toEqual({ keys: 0, bytes: 0, sessions: 0, appliedIndex: 1 });
        }
      }),
      { numRuns: 1000 },
    );
  });
});

describe('KvStateMachine quota', () => {
  it('refuses a write past maxStateBytes with quota_exceeded, remembered for retries; deletes and shrinking writes pass', () => {
    const limit = kvEntryFootprint(1, 10) + kvEntryFootprint(1, 5);
    const d = new Driver(new KvStateMachine({ maxStateBytes: limit }));
    d.run('c', 1, put('a', '0123456789'));
    d.run('c', 2, put('b', '01234'));
    const refused = d.run('c', 3, put('b', '012345'));
    expect(refused).toEqual({ ok: false, reason: 'quota_exceeded', stateBytes: limit, limitBytes: limit });
    expect(d.run('c', 3, put('b', '012345'))).toEqual(refused);
    expect(d.run('c', 4, cas('z', 0, ''))).toMatchObject({ reason: 'quota_exceeded' });
    expect(d.run('c', 5, put('a', '0'))).toMatchObject({ ok: true });
    expect(d.run('c', 6, put('b', '012345'))).toMatchObject({ ok: true });
    expect(d.run('c', 7, del('a'))).toMatchObject({ ok: true, deleted: true });
    expect(d.machine.stats().bytes).toBe(kvEntryFootprint(1, 6));
  });

  it('refuses limits outside their range, naming them', () => {
    expect(() => new KvStateMachine({ maxSessions: 0 })).toThrow(/maxSessions must be an integer from 1 to 100000, got 0/);
    expect(() => new KvStateMachine({ maxStateBytes: 2 ** 40 })).toThrow(/maxStateBytes must be an integer/);
  });
});

describe('KvStateMachine range', () => {
  function filled(keys: string[]): KvStateMachine {
    const d = new Driver();
    keys.forEach((key, i) => d.run('c', i + 1, put(key, key)));
    return d.machine;
  }

  it('lists a prefix in UTF-8 byte order, pages with limit and after', () => {
    const machine = filled(['vm/\u{10000}', 'vm/b', 'vm/\uffff', 'vm/a', 'vn/x', 'vm', 'v']);
    const page1 = machine.range('vm/', 2);
    expect(page1.entries.map((e) => e.key)).toEqual(['vm/a', 'vm/b']);
    expect(page1.more).toBe(true);
    const page2 = machine.range('vm/', 2, 'vm/b');
    expect(page2.entries.map((e) => e.key)).toEqual(['vm/\uffff', 'vm/\u{10000}']);
    expect(page2.more).toBe(false);
    expect(machine.range('', 100).entries.map((e) => e.key)).toEqual(['v', 'vm', 'vm/a', 'vm/b', 'vm/\uffff', 'vm/\u{10000}', 'vn/x']);
    expect(machine.range('vm/', 5, 'vm/\u{10000}').entries).toEqual([]);
    expect(machine.range('zzz', 5)).toEqual({ entries: [], more: false });
    expect(() => machine.range('', 0)).toThrow(/limit must be an integer from 1 to 10000, got 0/);
  });

  it('stops at the byte budget but always returns one entry', () => {
    const d = new Driver();
    // Footprint KV_RANGE_MAX_BYTES - 7: no room for even the small entry after it.
    const big = 'x'.repeat(KV_RANGE_MAX_BYTES - 40);
    d.run('c', 1, put('a', big));
    d.run('c', 2, put('b', 'small'));
    d.run('c', 3, put('c', big));
    const first = d.machine.range('', 10);
    expect(first.entries.map((e) => e.key)).toEqual(['a']);
    expect(first.more).toBe(true);
    const second = d.machine.range('', 10, 'a');
    expect(second.entries.map((e) => e.key)).toEqual(['b']);
    expect(second.more).toBe(true);
    expect(d.machine.range('', 10, 'b')).toMatchObject({ more: false, entries: [{ key: 'c' }] });
  });
});

describe('KvStateMachine snapshots', () => {
  function busy(): KvStateMachine {
    const d = new Driver(new KvStateMachine({ maxSessions: 3 }));
    d.run('a', 1, put('k/1', 'one'));
    d.run('b', 1, put('k/2', 'two'));
    d.run('c', 1, cas('k/1', 0, 'x')); // a remembered mismatch
    d.run('d', 1, del('k/2')); // evicts a
    d.run('b', 2, put('\u00e9', '\u00e9'));
    d.raw(new Uint8Array());
    return d.machine;
  }

  it('round-trips byte-identically, and the restored machine behaves the same', () => {
    const original = busy();
    const snapshot = original.snapshot();
    const restored = KvStateMachine.restore(snapshot);
    expect(sameBytes(restored.snapshot(), snapshot)).toBe(true);
    expect(restored.stats()).toEqual(original.stats());
    expect(restored.limits).toEqual({ maxSessions: 3, maxStateBytes: original.limits.maxStateBytes });
    const a = new Driver(original);
    const b = new Driver(restored);
    for (const [client, seq] of [['c', 1], ['a', 1], ['b', 1], ['e', 1], ['d', 1]] as const) {
      expect(b.run(client, seq, put('k/1', client))).toEqual(a.run(client, seq, put('k/1', client)));
    }
    expect(sameBytes(a.machine.snapshot(), b.machine.snapshot())).toBe(true);
  });

  it('streams the state as of the moment it was taken, in pieces of the asked size, to the same bytes, whatever is applied meanwhile', () => {
    const d = new Driver(new KvStateMachine());
    for (let i = 0; i < 300; i++) d.run(`c${i % 7}`, Math.floor(i / 7) + 1, put(`k/${String(i % 120).padStart(3, '0')}`, 'v'.repeat(i % 50)));
    const whole = Buffer.from(d.machine.snapshot());
    const source = d.machine.snapshotSource(100);
    expect(source.byteLength).toBe(whole.byteLength);
    // Overwrites, deletes and new keys after the source was taken do not reach it.
    for (let i = 0; i < 200; i++) d.run(`c${i % 7}`, 100 + i, i % 3 === 0 ? del(`k/${String(i % 120).padStart(3, '0')}`) : put(`k/${String(i).padStart(3, '0')}`, 'w'.repeat(i % 40)));
    const pieces = Array.from(source.chunks(), (piece) => Buffer.from(piece)); // each copied as it comes: the encoder reuses its buffer
    expect(pieces.length).toBeGreaterThan(10);
    // Every entry fits 100 bytes; only the sessions' tail (one piece of its own) may be larger.
    for (const piece of pieces.slice(0, -2)) expect(piece.byteLength).toBeLessThanOrEqual(100);
    expect(Buffer.concat(pieces).equals(whole)).toBe(true);
    expect(Buffer.from(d.machine.snapshot()).equals(whole)).toBe(false);
  });

  it('keeps a streamed snapshot at its moment through repacks, a key deleted and made again, and a second snapshot taken meanwhile', () => {
    const d = new Driver(new KvStateMachine());
    let seq = 0;
    for (let i = 0; i < 200; i++) d.run('w', ++seq, put(`k/${String(i).padStart(3, '0')}`, 'a'.repeat(200)));
    const whole = Buffer.from(d.machine.snapshot());
    const first = d.machine.snapshotSource(1000);
    const firstPieces = first.chunks()[Symbol.iterator]();
    const head = Buffer.from(firstPieces.next().value as Uint8Array);
    // Eight rounds of 200 overwrites at random keys (a fixed LCG: every slab keeps a few live values, so
    // the holes outweigh half the live ones and the slabs repack; keys rewritten in the order they were
    // written would free whole slabs instead), then some keys deleted and made again with other values,
    // some deleted for good, some new.
    let rand = 7;
    for (let round = 0; round < 8; round++) {
      for (let n = 0; n < 200; n++) {
        rand = (rand * 1103515245 + 12345) % 2 ** 31;
        const i = rand % 200;
        d.run('w', ++seq, put(`k/${String(i).padStart(3, '0')}`, String(round).repeat(1000 + i)));
      }
    }
    const middle = Buffer.from(d.machine.snapshot());
    const second = d.machine.snapshotSource(1000);
    for (let i = 0; i < 200; i += 3) d.run('w', ++seq, del(`k/${String(i).padStart(3, '0')}`));
    for (let i = 0; i < 200; i += 6) d.run('w', ++seq, put(`k/${String(i).padStart(3, '0')}`, 'z'));
    for (let i = 200; i < 260; i++) d.run('w', ++seq, put(`k/${String(i).padStart(3, '0')}`, 'n'));
    const rest: Buffer[] = [];
    for (let piece = firstPieces.next(); piece.done !== true; piece = firstPieces.next()) rest.push(Buffer.from(piece.value)); // copied as it comes
    expect(Buffer.concat([head, ...rest]).equals(whole)).toBe(true);
    expect(Buffer.concat(Array.from(second.chunks(), (p) => Buffer.from(p))).equals(middle)).toBe(true);
    // Read through, a source lets go of what it kept, and refuses to be read again.
    expect(() => [...first.chunks()]).toThrow(KvSnapshotError);
    // The running size matches a count from scratch: the restored machine's snapshot is the same bytes.
    const now = d.machine.snapshot();
    expect(sameBytes(KvStateMachine.restore(now).snapshot(), now)).toBe(true);
  });

  it('streams the values it was taken with also when slab repacks move them meanwhile', () => {
    const d = new Driver(new KvStateMachine());
    const key = (i: number) => `k/${String(i).padStart(4, '0')}`;
    for (let i = 0; i < 2000; i++) d.run('c', i + 1, put(key(i), `${i}`.padEnd(200, 'v')));
    const whole = Buffer.from(d.machine.snapshot());
    const source = d.machine.snapshotSource(1000);
    const pieces: Buffer[] = [];
    const chunks = source.chunks()[Symbol.iterator]();
    const first = chunks.next();
    if (!first.done) pieces.push(Buffer.from(first.value));
    // ~4 MB of overwrites at random (a fixed LCG): several repacks, each moving every live value to a fresh slab.
    let rand = 1;
    const written = new Map<string, string>();
    for (let i = 0; i < 20_000; i++) {
      rand = (rand * 1103515245 + 12345) % 2 ** 31;
      written.set(key(rand % 2000), `${i}`.padEnd(200, 'w'));
      d.run('c', 3000 + i, put(key(rand % 2000), `${i}`.padEnd(200, 'w')));
    }
    for (let next = chunks.next(); !next.done; next = chunks.next()) pieces.push(Buffer.from(next.value));
    expect(Buffer.concat(pieces).equals(whole)).toBe(true);
    for (const [k, v] of written) expect(text(d.machine.get(k)?.value)).toBe(v);
  });

  it('starts with the version byte and ends with a CRC-32 of the rest', () => {
    const snapshot = Buffer.from(busy().snapshot());
    expect(snapshot.subarray(0, 4).toString('ascii')).toBe('DWKV');
    expect(snapshot[4]).toBe(KV_SNAPSHOT_VERSION);
    expect(snapshot.readUInt32LE(snapshot.byteLength - 4)).toBe(zlib.crc32(snapshot.subarray(0, -4)));
  });

  function sealed(body: Uint8Array, version = KV_SNAPSHOT_VERSION): Uint8Array {
    const head = Buffer.concat([Buffer.from('DWKV'), Buffer.from([version]), body]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32LE(zlib.crc32(head));
    return Buffer.concat([head, crc]);
  }

  function body(wire: object): Uint8Array {
    const type = kvProto.lookupType('dwcp.kv.v1.KvSnapshot');
    return type.encode(type.fromObject(wire)).finish();
  }

  const limits = { maxSessions: 10, maxStateBytes: 1000 };
  const entry = (key: string, revision = 1) => ({ key, value: Buffer.from('v'), revision, createRevision: 1 });
  const session = (clientId: string, lastIndex: number) => ({ clientId, lastSeq: 1, lastIndex, result: { put: { revision: lastIndex } } });

  it.each([
    ['a flipped bit', () => {
      const s = Buffer.from(busy().snapshot());
      s[10] = (s[10] ?? 0) ^ 1;
      return s;
    }, /checksum is 0x[0-9a-f]+, the snapshot says 0x[0-9a-f]+ \(corrupted\)/],
    ['a truncation', () => busy().snapshot().subarray(0, 6), /is 6 bytes, shorter than the 9-byte envelope/],
    ['another format', () => Buffer.from('{"json": true}'), /does not start with "DWKV"/],
    ['a future version', () => sealed(body({ appliedIndex: 1, ...limits }), 2), /version is 2; this build reads version 1/],
    ['unsorted keys', () => sealed(body({ appliedIndex: 5, ...limits, entries: [entry('b'), entry('a')] })), /field entries\[1\]\.key is not after the previous key/],
    ['a revision from the future', () => sealed(body({ appliedIndex: 5, ...limits, entries: [entry('a', 6)] })), /field entries\[0\]\.revision is 6, after the applied index 5/],
    ['too many bytes', () => sealed(body({ appliedIndex: 5, ...limits, maxStateBytes: 40, entries: [entry('a'), entry('b')] })), /field entries take 68 bytes, above maxStateBytes 40/],
    ['sessions out of order', () => sealed(body({ appliedIndex: 5, ...limits, sessions: [session('x', 3), session('y', 2)] })), /field sessions\[1\]\.lastIndex is 2, not after the previous session's 3/],
    ['a repeated client', () => sealed(body({ appliedIndex: 5, ...limits, sessions: [session('x', 2), session('x', 3)] })), /field sessions\[1\]\.clientId repeats "x"/],
    ['a read kept in a session', () => sealed(body({ appliedIndex: 5, ...limits, sessions: [{ ...session('x', 2), result: { noop: { revision: 2 } } }] })), /field sessions\[0\]\.result is a noop outcome/],
    ['no limits', () => sealed(body({ appliedIndex: 5 })), /field maxSessions is 0, outside 1\.\.100000/],
  ] as [string, () => Uint8Array, RegExp][])('refuses to restore %s, saying why', (_name, make, message) => {
    expect(() => KvStateMachine.restore(make())).toThrow(KvSnapshotError);
    expect(() => KvStateMachine.restore(make())).toThrow(message);
  });

  it('restores a hand-built valid snapshot (the fixtures above differ from it in one field only)', () => {
    const machine = KvStateMachine.restore(sealed(body({ appliedIndex: 5, ...limits, entries: [entry('a'), entry('b')], sessions: [session('x', 2), session('y', 3)] })));
    expect(machine.stats()).toEqual({ keys: 2, bytes: 2 * kvEntryFootprint(1, 1), sessions: 2, appliedIndex: 5 });
  });
});

// A model of the semantics, without session eviction (the property below keeps fewer clients than sessions).
interface ModelState {
  values: Map<string, { value: string; revision: number; createRevision: number }>;
  sessions: Map<string, { seq: number; result: KvResult }>;
}

function modelApply(state: ModelState, index: number, cmd: KvCommand): KvResult {
  if (cmd.op === 'get' || cmd.op === 'range' || cmd.op === 'fleet') throw new Error('the model covers KV writes only (fleet commands have their own tests)');
  const session = state.sessions.get(cmd.clientId);
  if (session !== undefined && cmd.seq < session.seq) return { ok: false, reason: 'stale_request', lastSeq: session.seq };
  if (session !== undefined && cmd.seq === session.seq) return session.result;
  const prevStored = state.values.get(cmd.key);
  const prev = prevStored === undefined ? null : { revision: prevStored.revision, createRevision: prevStored.createRevision };
  let result: KvResult;
  if (cmd.op === 'delete') {
    state.values.delete(cmd.key);
    result = { ok: true, op: 'delete', revision: index, deleted: prev !== null, prev };
  } else if (cmd.op === 'cas' && (prev?.revision ?? 0) !== cmd.expectedRevision) {
    result = { ok: false, reason: 'cas_mismatch', currentRevision: prev?.revision ?? 0 };
  } else {
    state.values.set(cmd.key, { value: Buffer.from(cmd.value).toString(), revision: index, createRevision: prev?.createRevision ?? index });
    result = { ok: true, op: cmd.op, revision: index, prev };
  }
  state.sessions.set(cmd.clientId, { seq: cmd.seq, result });
  return result;
}

const keyArb = fc.constantFrom('a', 'ab', 'b', '\u00e9', '\u{1F600}', 'a/\uffff');
const valueArb = fc.string({ maxLength: 4 }).map((s) => Buffer.from(s));
const writeArb: fc.Arbitrary<KvCommand> = fc
  .tuple(
    fc.constantFrom('c1', 'c2', 'c3', 'c4', 'c5'),
    fc.integer({ min: 1, max: 6 }),
    fc.oneof(
      fc.record({ op: fc.constant('put' as const), key: keyArb, value: valueArb }),
      fc.record({ op: fc.constant('delete' as const), key: keyArb }),
      fc.record({ op: fc.constant('cas' as const), key: keyArb, expectedRevision: fc.integer({ min: 0, max: 12 }), value: valueArb }),
    ),
  )
  .map(([clientId, seq, op]) => ({ clientId, seq, ...op }) as KvCommand);
/** An entry as the log holds it: a command, the leader's no-op, or garbage; with a gap before its index. */
const entryArb = fc.record({
  gap: fc.integer({ min: 1, max: 3 }),
  data: fc.oneof(
    { weight: 8, arbitrary: writeArb.map(encodeKvCommand) },
    { weight: 1, arbitrary: fc.constant(new Uint8Array()) },
    { weight: 1, arbitrary: fc.uint8Array({ minLength: 1, maxLength: 8 }) },
  ),
});

describe('KvStateMachine determinism (property)', () => {
  it('two machines, one restored from a snapshot midway, return the same results and end with identical snapshots', () => {
    fc.assert(
      fc.property(fc.array(entryArb, { maxLength: 80 }), fc.nat(), fc.integer({ min: 1, max: 6 }), (entries, cutAt, maxSessions) => {
        const cut = entries.length === 0 ? 0 : cutAt % entries.length;
        const a = new KvStateMachine({ maxSessions });
        let b = new KvStateMachine({ maxSessions });
        let index = 0;
        entries.forEach(({ gap, data }, i) => {
          if (i === cut) b = KvStateMachine.restore(b.snapshot());
          index += gap;
          expect(b.apply(index, data)).toEqual(a.apply(index, data));
        });
        expect(sameBytes(b.snapshot(), a.snapshot())).toBe(true);
        expect(b.stats()).toEqual(a.stats());
      }),
      { numRuns: 300 },
    );
  });

  it('agrees with a model of the semantics', () => {
    fc.assert(
      fc.property(fc.array(writeArb, { maxLength: 80 }), (commands) => {
        const machine = new KvStateMachine();
        const model: ModelState = { values: new Map(), sessions: new Map() };
        commands.forEach((cmd, i) => {
          expect(machine.apply(i + 1, encodeKvCommand(cmd))).toEqual(modelApply(model, i + 1, cmd));
        });
        const expected = [...model.values.entries()]
          .sort(([x], [y]) => Buffer.compare(Buffer.from(x), Buffer.from(y)))
          .map(([key, v]) => ({ key, value: v.value, revision: v.revision, createRevision: v.createRevision }));
        const actual = machine.range('', 100).entries.map((e) => ({ key: e.key, value: Buffer.from(e.value).toString(), revision: e.revision, createRevision: e.createRevision }));
        expect(actual).toEqual(expected);
      }),
      { numRuns: 300 },
    );
  });
});

describe('KvSnapshot encoding', () => {
  const type = kvProto.lookupType('dwcp.kv.v1.KvSnapshot');
  const keyArb = fc.string({ minLength: 1, maxLength: 40, unit: 'binary' }).filter((k) => k.isWellFormed() && Buffer.byteLength(k, 'utf8') <= 1024);
  const stateArb = fc
    .record({
      appliedIndex: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      keys: fc.uniqueArray(keyArb, { maxLength: 30, selector: (k) => k }),
      values: fc.array(fc.uint8Array({ maxLength: 300 }), { minLength: 30, maxLength: 30 }),
      revisions: fc.array(fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true })), { minLength: 30, maxLength: 30 }),
      maxSessions: fc.integer({ min: 1, max: 100_000 }),
    })
    .map(({ appliedIndex, keys, values, revisions, maxSessions }) => {
      const sorted = [...keys].sort((a, b) => (Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'))));
      const entries = sorted.map((key, i) => {
        const [r, c] = revisions[i] ?? [0, 0];
        const revision = 1 + Math.floor(r * (appliedIndex - 1));
        return { key, value: values[i] ?? new Uint8Array(), revision, createRevision: 1 + Math.floor(c * (revision - 1)) };
      });
      return { appliedIndex, limits: { maxSessions, maxStateBytes: 512 * 1024 * 1024 }, entries, sessions: [], fleet: new Uint8Array() };
    });

  it('writes the entries to exactly the bytes protobufjs writes for the whole message', async () => {
    const { encodeKvSnapshot } = await import('../../src/kv/snapshot.ts');
    fc.assert(
      fc.property(stateArb, (state) => {
        const ours = Buffer.from(encodeKvSnapshot(state));
        const reference = type.encode(type.fromObject({ appliedIndex: state.appliedIndex, ...state.limits, entries: state.entries, sessions: [], fleet: state.fleet })).finish();
        expect(ours.subarray(5, -4).equals(Buffer.from(reference))).toBe(true);
        expect(KvStateMachine.restore(ours).snapshot()).toEqual(ours);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses to write entries out of order or with revisions past the applied index, naming the entry', async () => {
    const { encodeKvSnapshot } = await import('../../src/kv/snapshot.ts');
    const base = { appliedIndex: 10, limits: { maxSessions: 10, maxStateBytes: 1 << 20 }, sessions: [], fleet: new Uint8Array() };
    const entry = (key: string, revision = 5) => ({ key, value: new Uint8Array([1]), revision, createRevision: 1 });
    expect(() => encodeKvSnapshot({ ...base, entries: [entry('b'), entry('a')] })).toThrow(/entries\[1\]\.key is not after the previous key/);
    expect(() => encodeKvSnapshot({ ...base, entries: [entry('a', 11)] })).toThrow(/entries\[0\] has revisions 1\.\.11 outside 1\.\.10/);
    expect(() => encodeKvSnapshot({ ...base, limits: { ...base.limits, maxStateBytes: 10 }, entries: [entry('a')] })).toThrow(/above maxStateBytes 10/);
  });
});
