/**
 * The direct codec of put, delete and cas (src/kv/write-command-wire.ts)
 * never disagrees with the schema path it shortcuts: for any command it
 * encodes the schema's bytes; for any bytes (valid, mutated, truncated, or a
 * hostile encoding) decodeKvCommand answers what the schema alone answers,
 * the same value (fields, their order, the value's type) or the same error.
 */
import { Buffer } from 'node:buffer';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import type { KvCommand } from '../../src/kv/command.ts';
import { KV_MAX_KEY_BYTES, KvCommandSchema, decodeKvCommand, encodeKvCommand, kvProto } from '../../src/kv/command.ts';
import { decodeWriteCommand, encodeWriteCommand } from '../../src/kv/write-command-wire.ts';
import { mutatedBytes } from '../support/wire-fuzz.ts';

const KvCommandType = kvProto.lookupType('dwcp.kv.v1.KvCommand');

/** What an answer is, comparable: the value with its fields in order and the value's type, or the error's class and message. */
function outcome(run: () => KvCommand): unknown {
  try {
    const cmd = run();
    const value = 'value' in cmd ? { type: cmd.value.constructor.name, bytes: Buffer.from(cmd.value).toString('hex') } : null;
    return { ok: Object.entries(cmd).map(([k, v]) => [k, v instanceof Uint8Array ? null : v]), value };
  } catch (err) {
    return { error: err instanceof Error ? `${err.constructor.name}: ${err.message}` : String(err) };
  }
}

const text = (max: number) => fc.string({ unit: 'grapheme', minLength: 0, maxLength: max });
const key = fc.oneof(text(40), fc.string({ unit: 'binary', maxLength: 20 }), fc.constant('k'.repeat(KV_MAX_KEY_BYTES)), fc.constant('k'.repeat(KV_MAX_KEY_BYTES + 1)), fc.constant('\u{1F600}'.repeat(256)), fc.constant('a\uD800b'));
const value = fc.oneof(fc.uint8Array({ maxLength: 300 }), fc.constant(new Uint8Array(0)));
const count = fc.oneof(fc.nat(), fc.constant(0), fc.constant(Number.MAX_SAFE_INTEGER), fc.constant(2 ** 53), fc.constant(1.5), fc.constant(-1), fc.integer({ min: 1, max: 2 ** 40 }));
const clientId = fc.oneof(text(20), fc.constant('€'.repeat(128)), fc.constant('x'.repeat(129)), fc.constant('\uDC00'));
const command: fc.Arbitrary<KvCommand> = fc.oneof(
  fc.record({ clientId, seq: count, op: fc.constant('put' as const), key, value }),
  fc.record({ clientId, seq: count, op: fc.constant('delete' as const), key }),
  fc.record({ clientId, seq: count, op: fc.constant('cas' as const), key, expectedRevision: count, value }),
  fc.record({ clientId, seq: count, op: fc.constant('get' as const), key }),
);

describe('write-command-wire', () => {
  it('encodes exactly the schema bytes, or leaves the command (and its error) to the schema', () => {
    fc.assert(
      fc.property(command, (cmd) => {
        const direct = encodeWriteCommand(cmd);
        const schema = (() => {
          try {
            return Buffer.from(KvCommandSchema.encode(cmd));
          } catch {
            return null;
          }
        })();
        if (direct !== null) expect(schema?.toString('hex')).toBe(direct.toString('hex'));
        // Whatever took the direct path, the public encoder agrees with the schema, errors included.
        const viaPublic = (() => {
          try {
            return Buffer.from(encodeKvCommand(cmd)).toString('hex');
          } catch (err) {
            return `error ${(err as Error).message}`;
          }
        })();
        const viaSchema = (() => {
          try {
            return Buffer.from(KvCommandSchema.encode(cmd)).toString('hex');
          } catch (err) {
            return `error ${(err as Error).message}`;
          }
        })();
        expect(viaPublic).toBe(viaSchema);
      }),
      { numRuns: 3000 },
    );
  });

  it('takes the direct path for the common put, delete and cas', () => {
    const value = Buffer.from('v'.repeat(256));
    for (const cmd of [
      { clientId: 'bench-1', seq: 1, op: 'put', key: 'key-00042', value },
      { clientId: 'c', seq: Number.MAX_SAFE_INTEGER, op: 'delete', key: 'ключ' },
      { clientId: 'c', seq: 300, op: 'cas', key: '\u{1F600}', expectedRevision: 0, value },
    ] as const) {
      const bytes = encodeWriteCommand(cmd);
      expect(bytes).not.toBeNull();
      expect(decodeWriteCommand(bytes!)).not.toBeNull();
      expect(outcome(() => decodeKvCommand(bytes!))).toEqual(outcome(() => KvCommandSchema.decode(bytes!)));
    }
  });

  it('decodes any bytes as the schema does: encodings, mutations, truncations, as Buffer and as Uint8Array', () => {
    const encoded = command.map((cmd) => {
      try {
        return Uint8Array.from(KvCommandSchema.encode(cmd));
      } catch {
        // Out of bounds: what a hostile peer could still send.
        try {
          return Uint8Array.from(KvCommandType.encode(KvCommandType.fromObject({ clientId: cmd.clientId, seq: Math.max(0, Math.floor(cmd.seq)) % 2 ** 53, [cmd.op]: { ...cmd, op: undefined } })).finish());
        } catch {
          return new Uint8Array(0);
        }
      }
    });
    const mutated = mutatedBytes(encoded);
    fc.assert(
      fc.property(fc.oneof(encoded, mutated, fc.uint8Array({ maxLength: 40 })), (bytes) => {
        for (const input of [bytes, Buffer.from(bytes)]) {
          expect(outcome(() => decodeKvCommand(input))).toEqual(outcome(() => KvCommandSchema.decode(input)));
        }
      }),
      { numRuns: 5000 },
    );
  });

  it('returns views of the input, not copies', () => {
    const bytes = encodeKvCommand({ clientId: 'c', seq: 1, op: 'put', key: 'k', value: Buffer.from('abc') });
    const cmd = decodeKvCommand(bytes);
    expect(cmd.op === 'put' && cmd.value.buffer === bytes.buffer).toBe(true);
  });
});
