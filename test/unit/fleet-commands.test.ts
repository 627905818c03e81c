/** Fleet commands: canonical encoding, round trips, and refusal of malformed bytes. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  FLEET_ENTRY_MAGIC,
  FLEET_MAX_COMMAND_BYTES,
  FleetCommandError,
  canonicalJson,
  decodeFleetCommand,
  encodeFleetCommand,
  isFleetEntry,
  parseFleetCommand,
  type FleetCommandInput,
} from '../../src/fleet/commands.ts';
import { encodeKvCommand } from '../../src/kv/command.ts';
import { GIB, localProvider } from './fleet-fixtures.ts';

const commands: FleetCommandInput[] = [
  {
    kind: 'register-region',
    region: 'eu-west',
    jurisdiction: 'eu',
    compliance: ['soc2', 'gdpr'],
    labels: { tier: 'gold', zone: 'a' },
    providers: [localProvider(16, 64), { name: 'aws', kind: 'aws', spot: true, quota: { vcpus: 64, instances: 10 }, prices: { vcpuHourUsd: 0.01, memoryGiBHourUsd: 0.001 } }],
  },
  {
    kind: 'create',
    spec: {
      name: 'web1',
      vcpus: 2,
      memoryBytes: 4 * GIB,
      image: 'base',
      labels: { app: 'web' },
      spot: true,
      priority: 10,
      constraints: { regions: ['us-east', 'eu-west'], maxHourlyUsd: 0.5, maxRtt: { region: 'eu-west', ms: 50 }, antiAffinityGroup: 'web', spreadGroup: 'web' },
    },
  },
  { kind: 'create', spec: { name: 'db1', vcpus: 1, memoryBytes: GIB, image: 'base' }, power: 'stopped' },
  { kind: 'assign', vm: 'web1', region: 'eu-west', provider: 'local', generation: 3 },
  { kind: 'set-power', vm: 'web1', power: 'stopped' },
  { kind: 'delete', vm: 'web1' },
  { kind: 'purge', vm: 'web1' },
  { kind: 'assign', vm: 'web1', region: 'eu-west', provider: 'local', generation: 4, operation: 'migrate' },
  { kind: 'register-region', region: 'own', trust: 'trusted', providers: [localProvider(4, 8)] },
  {
    kind: 'set-policy',
    version: 2,
    policies: [
      {
        name: 'eu-residency',
        description: 'Personal data stays in the EU.',
        rules: [
          {
            name: 'personal-data-in-eu',
            selector: { labels: { 'data-class': 'personal' }, operations: ['place', 'create'], memory: { min: '1GiB' } },
            condition: "region.jurisdiction == 'eu'",
            effect: 'deny',
            message: 'personal data stays in EU regions',
          },
        ],
      },
    ],
  },
  { kind: 'set-policy', version: 3, policies: [] },
];

const text = new TextDecoder();
const bytesOf = (s: string): Uint8Array => new Uint8Array([...FLEET_ENTRY_MAGIC, ...new TextEncoder().encode(s)]);

describe('fleet command encoding', () => {
  it.each(commands.map((c) => [c.kind, c] as const))('%s round-trips to the normalised command', (_kind, cmd) => {
    const bytes = encodeFleetCommand(cmd);
    expect(isFleetEntry(bytes)).toBe(true);
    const decoded = decodeFleetCommand(bytes);
    expect(decoded).toEqual(parseFleetCommand(cmd));
    expect(encodeFleetCommand(decoded)).toEqual(bytes);
  });

  it('encodes one command one way whatever the order of keys and lists', () => {
    const a = encodeFleetCommand({ kind: 'assign', vm: 'a', region: 'r', provider: 'local', generation: 1 });
    const b = encodeFleetCommand({ generation: 1, provider: 'local', region: 'r', vm: 'a', kind: 'assign' });
    expect(a).toEqual(b);
    const first = commands[0] as Extract<FleetCommandInput, { kind: 'register-region' }>;
    const reordered = { ...first, providers: [...first.providers].reverse(), compliance: ['gdpr', 'soc2'], labels: { zone: 'a', tier: 'gold' } };
    expect(encodeFleetCommand(reordered)).toEqual(encodeFleetCommand(first));
  });

  it('decodes commands logged before policies: an assign without operation, a register-region without trust', () => {
    const assign = bytesOf('{"generation":1,"kind":"assign","provider":"local","region":"r","vm":"a"}');
    expect(decodeFleetCommand(assign)).toEqual({ kind: 'assign', vm: 'a', region: 'r', provider: 'local', generation: 1 });
    const region = bytesOf('{"compliance":[],"kind":"register-region","labels":{},"providers":[{"capacity":{"diskBytes":0,"memoryBytes":1073741824,"vcpus":1},"kind":"local","name":"local","prices":{"memoryGiBHourUsd":0,"vcpuHourUsd":0},"spot":false}],"region":"r"}');
    expect(decodeFleetCommand(region)).not.toHaveProperty('trust');
  });

  it('a set-policy carries its policies in one normal form: sizes in bytes, selector lists sorted', () => {
    const bytes = encodeFleetCommand({
      kind: 'set-policy',
      version: 1,
      policies: [{ name: 'p', rules: [{ name: 'r', selector: { operations: ['place', 'create'], memory: { min: '1GiB' } }, condition: 'true', effect: 'warn', message: 'm' }] }],
    });
    expect(text.decode(bytes.subarray(5))).toBe(
      '{"kind":"set-policy","policies":[{"name":"p","rules":[{"condition":"true","effect":"warn","message":"m","name":"r","selector":{"memory":{"min":1073741824},"operations":["create","place"]}}]}],"version":1}',
    );
  });

  it('refuses a malformed policy set, naming the field', () => {
    const policy = (rules: unknown[]): FleetCommandInput => ({ kind: 'set-policy', version: 1, policies: [{ name: 'p', rules }] } as FleetCommandInput);
    expect(() => encodeFleetCommand(policy([{ name: 'r', condition: 'true', effect: 'block', message: 'm' }]))).toThrow('command.policies[0].rules[0].effect: "block" is not one of deny|audit|warn');
    expect(() => encodeFleetCommand(policy([{ name: 'r', condition: 'true', effect: 'deny', message: 'm' }, { name: 'r', condition: 'true', effect: 'deny', message: 'm' }]))).toThrow(
      'command.policies[0].rules[1].name: "r" names another rule of this policy too',
    );
    expect(() => encodeFleetCommand(policy([{ name: 'r', selector: { memory: { min: '4 parsecs' } }, condition: 'true', effect: 'deny', message: 'm' }]))).toThrow('command.policies[0].rules[0].selector.memory');
    expect(() => encodeFleetCommand({ kind: 'set-policy', version: 0, policies: [] })).toThrow('command.version: 0 is too small');
    const huge = Array.from({ length: 40 }, (_, i) => ({ name: `r${i}`, condition: `vm.name != '${'x'.repeat(1900)}'`, effect: 'deny', message: 'm' }));
    expect(() => encodeFleetCommand(policy(huge))).toThrow(`above the ${FLEET_MAX_COMMAND_BYTES}-byte limit`);
  });

  it('stores the command as canonical JSON after the magic', () => {
    const bytes = encodeFleetCommand({ kind: 'delete', vm: 'web1' });
    expect([...bytes.subarray(0, 5)]).toEqual([0x00, 0x66, 0x6c, 0x74, 0x01]);
    expect(text.decode(bytes.subarray(5))).toBe('{"kind":"delete","vm":"web1"}');
  });

  it('is told apart from a KV command by its first byte', () => {
    const kv = encodeKvCommand({ clientId: 'c', seq: 1, op: 'put', key: 'k', value: new Uint8Array([1]) });
    expect(isFleetEntry(kv)).toBe(false);
    expect(() => decodeFleetCommand(kv)).toThrow('does not start with the fleet magic');
  });

  it.each([
    ['no magic', new TextEncoder().encode('{"kind":"delete","vm":"a"}'), 'fleet magic'],
    ['wrong version', new Uint8Array([0, 0x66, 0x6c, 0x74, 0x02, 0x7b, 0x7d]), 'fleet magic'],
    ['truncated', bytesOf('{"kind":"delete","vm":"a"'), 'not UTF-8 JSON'],
    ['invalid UTF-8', new Uint8Array([...FLEET_ENTRY_MAGIC, 0xff, 0xfe]), 'not UTF-8 JSON'],
    ['unknown kind', bytesOf('{"kind":"explode","vm":"a"}'), 'command.kind'],
    ['unknown field', bytesOf('{"kind":"delete","vm":"a","why":"x"}'), 'command.why: unknown key'],
    ['bad name', bytesOf('{"kind":"delete","vm":"A"}'), 'command.vm'],
    ['generation 0', bytesOf('{"generation":0,"kind":"assign","provider":"local","region":"r","vm":"a"}'), 'command.generation: 0 is too small'],
    ['not canonical: whitespace', bytesOf('{"kind": "delete","vm":"a"}'), 'not in canonical form'],
    ['not canonical: key order', bytesOf('{"vm":"a","kind":"delete"}'), 'not in canonical form'],
    ['not canonical: default left out', bytesOf('{"kind":"set-power","vm":"a"}'), 'command.power'],
    ['bad spec field', bytesOf('{"kind":"create","power":"running","spec":{"image":"b","memoryBytes":1073741824,"name":"a","vcpus":0}}'), 'command.spec.vcpus: 0 is too small'],
    ['on-prem without capacity', bytesOf('{"compliance":[],"kind":"register-region","labels":{},"providers":[{"kind":"local","name":"local","prices":{"memoryGiBHourUsd":0,"vcpuHourUsd":0},"spot":false}],"region":"r"}'), 'command.providers[0].capacity: missing is required for an on-premises provider'],
    ['too large', new Uint8Array(FLEET_MAX_COMMAND_BYTES + 1).fill(0x20).map((v, i) => (i < 5 ? (FLEET_ENTRY_MAGIC[i] as number) : v)), 'above the'],
  ])('refuses %s', (_what, bytes, message) => {
    expect(() => decodeFleetCommand(bytes)).toThrow(FleetCommandError);
    expect(() => decodeFleetCommand(bytes)).toThrow(message);
  });

  it('refuses to encode an invalid command, naming the field', () => {
    expect(() => encodeFleetCommand({ kind: 'assign', vm: 'a', region: 'r', provider: 'local', generation: -1 })).toThrow('command.generation: -1 is too small');
    expect(() =>
      encodeFleetCommand({ kind: 'register-region', region: 'r', providers: [localProvider(1, 1), localProvider(2, 2)] }),
    ).toThrow('command.providers[1].name: "local" names another provider of this region too');
  });

  it('never throws anything but FleetCommandError on arbitrary bytes after the magic', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), (tail) => {
        try {
          decodeFleetCommand(new Uint8Array([...FLEET_ENTRY_MAGIC, ...tail]));
        } catch (err) {
          expect(err).toBeInstanceOf(FleetCommandError);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('canonical JSON sorts keys, drops undefined and refuses non-finite numbers', () => {
    expect(canonicalJson({ b: 1, a: [true, null, 'x'], c: undefined })).toBe('{"a":[true,null,"x"],"b":1}');
    expect(() => canonicalJson({ a: Infinity })).toThrow('not a finite number');
  });
});

describe('canonical JSON and integer-like label keys', () => {
  it('still gives one encoding that decodes', () => {
    const cmd = { kind: 'create', spec: { name: 'a', vcpus: 1, memoryBytes: 1024 ** 3, image: 'b', labels: { b: '1', '10': 'x', '9': 'y' } } } as const;
    const bytes = encodeFleetCommand(cmd);
    expect(decodeFleetCommand(bytes).kind).toBe('create');
    expect(encodeFleetCommand(decodeFleetCommand(bytes))).toEqual(bytes);
  });
});
