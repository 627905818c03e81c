/**
 * Configuration resolution: the shipped examples load, trust defaults from the
 * provider, embedded defaults apply without a file, flags beat environment
 * beat file beat defaults, and every kind of bad input yields one exact
 * message line naming the field (and the flag or variable that set it).
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  ConfigError,
  DEFAULT_LISTEN,
  DEFAULT_METRICS_LISTEN,
  OVERRIDE_SOURCES,
  resolveConfig,
  type ConfigOverrides,
} from '../../src/config/load.ts';
import { PROVIDERS, type DwcpConfig } from '../../src/config/schema.ts';

const EXAMPLES = new URL('../../config/examples/', import.meta.url).pathname;
const PEER_A = '12D3KooWFkrCMFg9Uw7CJsV6RV7VMFZPKDANzhrYW2Pwe3k23VCj';
const PEER_B = '12D3KooWQfocgcAZPDj6P525WjJTGeP9SFLw2HJy3HZb85CC39wp';
const PEER_C = '12D3KooWBp6cjg1PwA6hoCUQ5LbghaQBTToKXb7preKQaHFcaT5Z';
const PEER_D = '12D3KooWF4Lft3CUseRwKWW46cnsQpANBpDjfNf39gsBAEWeUE3c';
const NODE = 'federation: acme\nnode: {name: dc1, region: fra1, provider: onprem}\n';

const scratch = mkdtempSync(join(tmpdir(), 'dwcp-config-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

let files = 0;
/** Writes a config file into the scratch directory and returns its path. */
function configFile(text: string): string {
  const path = join(scratch, `config-${++files}.yaml`);
  writeFileSync(path, text);
  return path;
}

function member(name: string, peerId: string, provider: string, extra = ''): string {
  return `  - {name: ${name}, peerId: ${peerId}, region: r-${name}, provider: ${provider}${extra}}\n`;
}

/** The ConfigError resolveConfig throws, or a failure if it does not throw one. */
function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError, but the configuration resolved');
}

describe('config/examples', () => {
  const examples = readdirSync(EXAMPLES).filter((f) => f.endsWith('.yaml')).sort();
  const load = (name: string): DwcpConfig => resolveConfig({ configPath: join(EXAMPLES, name), env: {} });

  it('holds the four documented layouts', () => {
    expect(examples).toEqual(['clouds-4.yaml', 'datacenters-3.yaml', 'hybrid.yaml', 'single.yaml']);
  });

  it.each(examples)('%s resolves', (name) => {
    expect(load(name).configPath).toBe(join(EXAMPLES, name));
  });

  it.each([
    ['single.yaml', 'trusted', []],
    ['datacenters-3.yaml', 'trusted', ['trusted', 'trusted']],
    ['clouds-4.yaml', 'untrusted', ['untrusted', 'untrusted', 'untrusted']],
    ['hybrid.yaml', 'trusted', ['trusted', 'untrusted', 'untrusted']],
  ])('%s: node %s, members %j', (name, nodeTrust, memberTrust) => {
    const config = load(name);
    expect(config.node.trust).toBe(nodeTrust);
    expect(config.members.map((m) => m.trust)).toEqual(memberTrust);
  });

  it('use distinct peer IDs and only documentation-range addresses', () => {
    const members = examples.flatMap((name) => load(name).members);
    const ids = members.map((m) => m.peerId);
    expect(new Set(ids).size).toBe(ids.length);
    const documentation = /^(192\.0\.2|198\.51\.100|203\.0\.113)\.\d+$|^2001:db8:/;
    const ips = examples.flatMap((name) => {
      const c = load(name);
      const hosts = [...c.members.flatMap((m) => m.addrs), ...c.listen].map((a) => a.split('/')[2]!);
      return [...hosts, c.metricsListen.slice(0, c.metricsListen.lastIndexOf(':')).replace(/^\[|\]$/g, '')];
    });
    const routable = ips.filter((ip) => isIP(ip) !== 0 && !documentation.test(ip) && !/^(0\.0\.0\.0|::|127\.0\.0\.1|::1)$/.test(ip));
    expect(routable).toEqual([]);
  });

  it('contain no private key material', () => {
    for (const name of examples) expect(readFileSync(join(EXAMPLES, name), 'utf8')).not.toMatch(/privateKey|BEGIN .*PRIVATE|CAESQ/);
  });
});

describe('trust', () => {
  // Any untrusted member makes the federation scope run PBFT, which needs n >= 4: two trusted members fill the count.
  const filler = member('dc-a', PEER_C, 'onprem') + member('dc-b', PEER_D, 'onprem');
  it.each(PROVIDERS.map((p) => [p, p === 'onprem' || p === 'private' ? 'trusted' : 'untrusted']))(
    'defaults from provider %s to %s, for the node and members',
    (provider, trust) => {
      const config = resolveConfig({
        configPath: configFile(`federation: f\nnode: {name: n, region: r, provider: ${provider}}\nmembers:\n${member('m', PEER_A, provider)}${filler}`),
        env: {},
      });
      expect([config.node.trust, config.members[0]?.trust]).toEqual([trust, trust]);
    },
  );

  it('is taken as written when explicit', () => {
    const config = resolveConfig({
      configPath: configFile(
        `federation: f\nnode: {name: n, region: r, provider: aws, trust: trusted}\nmembers:\n` +
          member('dc', PEER_A, 'onprem', ', trust: untrusted') +
          member('cloud', PEER_B, 'gcp', ', trust: trusted') +
          filler,
      ),
      env: {},
    });
    expect([config.node.trust, ...config.members.map((m) => m.trust)]).toEqual(['trusted', 'untrusted', 'trusted', 'trusted', 'trusted']);
  });
});

describe('defaults', () => {
  it('without a file: federation "local", this host as the one node, no members', () => {
    const config = resolveConfig({ env: {} });
    expect(config).toMatchObject({
      federation: 'local',
      node: { region: 'local', provider: 'onprem', trust: 'trusted' },
      members: [],
      listen: [DEFAULT_LISTEN],
      metricsListen: DEFAULT_METRICS_LISTEN,
      logLevel: 'info',
      configPath: undefined,
    });
    expect(config.node.name).toMatch(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/);
    expect(config.network.pingIntervalMs).toBe(5_000);
    expect(config.network.deadAfterMs).toBe(30_000);
  });

  it('takes the file from DWCP_CONFIG, unless one is given explicitly', () => {
    const fromEnv = configFile(NODE);
    const explicit = configFile(NODE.replace('acme', 'other'));
    expect(resolveConfig({ env: { DWCP_CONFIG: fromEnv } }).federation).toBe('acme');
    expect(resolveConfig({ configPath: explicit, env: { DWCP_CONFIG: fromEnv } }).federation).toBe('other');
  });

  it('puts the data directory in systemd\'s STATE_DIRECTORY when set', () => {
    expect(resolveConfig({ env: { STATE_DIRECTORY: '/var/lib/dwcp-test' } }).dataDir).toBe('/var/lib/dwcp-test');
  });
});

describe('precedence: flags > environment > file > defaults', () => {
  /** Per overridable setting: its value at each layer, as the file, the environment and flags spell it. */
  const layers: { key: keyof ConfigOverrides; yaml: string; file: unknown; env: string; flag: ConfigOverrides[keyof ConfigOverrides]; envValue: unknown; default: unknown }[] = [
    { key: 'logLevel', yaml: 'logLevel: warn', file: 'warn', env: 'error', envValue: 'error', flag: 'debug', default: 'info' },
    { key: 'metricsListen', yaml: 'metricsListen: 127.0.0.1:1001', file: '127.0.0.1:1001', env: '[::1]:1002', envValue: '[::1]:1002', flag: '0.0.0.0:1003', default: DEFAULT_METRICS_LISTEN },
    { key: 'dataDir', yaml: 'dataDir: /srv/file', file: '/srv/file', env: '/srv/env', envValue: '/srv/env', flag: '/srv/flag', default: '/srv/state' },
    { key: 'adminSocket', yaml: 'adminSocket: /run/file.sock', file: '/run/file.sock', env: '/run/env.sock', envValue: '/run/env.sock', flag: '/run/flag.sock', default: '/run/dwcp-default/admin.sock' },
    {
      key: 'listen',
      yaml: 'listen: [/ip4/192.0.2.1/tcp/1]',
      file: ['/ip4/192.0.2.1/tcp/1'],
      // DWCP_LISTEN is a comma-separated list; blanks around entries are ignored.
      env: '/ip4/192.0.2.2/tcp/2, /ip6/::1/tcp/3 ,',
      envValue: ['/ip4/192.0.2.2/tcp/2', '/ip6/::1/tcp/3'],
      flag: ['/ip4/192.0.2.4/tcp/4'],
      default: [DEFAULT_LISTEN],
    },
  ];
  // Defaults that depend on the environment come from these variables, so the test does not depend on the host.
  const baseEnv = { STATE_DIRECTORY: '/srv/state', DWCP_SOCKET: '/run/dwcp-default/admin.sock' };

  it.each(layers)('$key', (l) => {
    const withFile = configFile(`${NODE}${l.yaml}\n`);
    const env = { ...baseEnv, [OVERRIDE_SOURCES[l.key].env]: l.env };
    const flags: ConfigOverrides = { [l.key]: l.flag };
    const pick = (input: Parameters<typeof resolveConfig>[0]) => resolveConfig(input)[l.key];
    expect(pick({ configPath: configFile(NODE), env: baseEnv })).toEqual(l.default);
    expect(pick({ configPath: withFile, env: baseEnv })).toEqual(l.file);
    expect(pick({ configPath: withFile, env })).toEqual(l.envValue);
    expect(pick({ configPath: withFile, env, flags })).toEqual(l.flag);
  });

  it('an empty environment variable is ignored', () => {
    expect(resolveConfig({ configPath: configFile(`${NODE}logLevel: warn\n`), env: { DWCP_LOG_LEVEL: '' } }).logLevel).toBe('warn');
  });
});

describe('bad configuration', () => {
  const base = `${NODE}members:\n${member('dc2', PEER_A, 'onprem')}${member('dc3', PEER_B, 'private')}`;

  it.each([
    ['a trust outside the enum', `${base}${member('aws1', PEER_C, 'aws', ', trust: maybe')}`, 'members[2].trust: "maybe" is not one of trusted|untrusted'],
    ['an unknown top-level key', `${base}colour: red\n`, 'colour: unknown key (not part of the schema)'],
    ['an unknown nested key', base.replace('provider: onprem}', 'provider: onprem, colour: red}'), 'node.colour: unknown key (not part of the schema)'],
    ['an unknown network key', `${base}network: {pingMs: 5}\n`, 'network.pingMs: unknown key (not part of the schema)'],
    ['a malformed peer ID', `${base}${member('aws1', 'QmNotAPeerId', 'aws')}`, 'members[2].peerId: "QmNotAPeerId" is not an Ed25519 libp2p peer ID (12D3KooW…)'],
    [
      'an RSA peer ID',
      `${base}${member('aws1', 'QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N', 'aws')}`,
      'members[2].peerId: "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N" is not an Ed25519 libp2p peer ID (12D3KooW…)',
    ],
    ['a bad multiaddr', `${base}${member('aws1', PEER_C, 'aws', ', addrs: [/ip4/300.0.0.1/tcp/4777]')}`, 'members[2].addrs[0]: "/ip4/300.0.0.1/tcp/4777" is not a multiaddr such as /ip4/10.0.0.2/tcp/4777'],
    ['a relative multiaddr', `${base}listen: [ip4/0.0.0.0/tcp/4777]\n`, 'listen[0]: "ip4/0.0.0.0/tcp/4777" is not a multiaddr such as /ip4/10.0.0.2/tcp/4777'],
    ['a duplicate member name', `${base}${member('dc2', PEER_C, 'aws')}`, 'members[2].name: "dc2" is already the name of another member or of this node'],
    ['a member named like this node', `${base}${member('dc1', PEER_C, 'aws')}`, 'members[2].name: "dc1" is already the name of another member or of this node'],
    ['a duplicate peer ID', `${base}${member('aws1', PEER_B, 'aws')}`, `members[2].peerId: "${PEER_B}" is already the peer ID of another member`],
    ['metricsListen without a port', `${base}metricsListen: localhost\n`, 'metricsListen: "localhost" is not host:port, e.g. 127.0.0.1:9477'],
    ['metricsListen with a port out of range', `${base}metricsListen: "127.0.0.1:65536"\n`, 'metricsListen: "127.0.0.1:65536" is not host:port with a port from 0 to 65535'],
    ['a missing node.region', 'federation: acme\nnode: {name: dc1, provider: onprem}\n', 'node.region: missing, expected a string'],
    ['a node that is not a mapping', 'federation: acme\nnode: dc1\n', 'node: "dc1" is not a mapping'],
    ['a federation id that is not a DNS label', NODE.replace('acme', 'Acme_1'), 'federation: "Acme_1" is not a lowercase DNS label (a-z, 0-9, "-", at most 63 characters)'],
    ['an unknown provider', NODE.replace('onprem', 'ibm'), 'node.provider: "ibm" is not one of onprem|private|aws|gcp|azure|oracle'],
    ['an empty listen list', `${base}listen: []\n`, 'listen: [] is too short: expected at least 1 item'],
    ['a zero interval', `${base}network: {pingIntervalMs: 0}\n`, 'network.pingIntervalMs: 0 is too small: expected at least 1'],
    ['a fractional interval', `${base}network: {pingIntervalMs: 1.5}\n`, 'network.pingIntervalMs: 1.5 is not an integer'],
    [
      'inverted back-off bounds',
      `${base}network: {reconnectInitialMs: 60000, reconnectMaxMs: 1000}\n`,
      'network.reconnectInitialMs: 60000 must not exceed network.reconnectMaxMs (1000)',
    ],
    ['a top level that is a list', '- federation: acme\n', '(top level): expected a mapping of settings'],
    ['a top level that is a scalar', 'acme\n', '(top level): expected a mapping of settings'],
    ['a YAML syntax error', 'federation: acme\nnode: [dc1\n', 'not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ] at line 3, column 1'],
    ['a key given twice', `${NODE}federation: other\n`, 'not valid YAML: Map keys must be unique at line 3, column 1'],
  ])('%s', (_what, text, problem) => {
    const path = configFile(text);
    const err = configError(() => resolveConfig({ configPath: path, env: {} }));
    expect(err.problems).toEqual([problem]);
    expect(err.message).toBe(`invalid configuration (${path}):\n  ${problem}`);
  });

  it('lists every problem of an empty file', () => {
    const err = configError(() => resolveConfig({ configPath: configFile(''), env: {} }));
    expect(err.problems).toEqual(['federation: missing, expected a string', 'node: missing, expected a mapping']);
  });

  it.each([
    ['missing', join(scratch, 'absent.yaml'), 'cannot read: no such file or directory (ENOENT)'],
    ['a directory', scratch, 'cannot read: illegal operation on a directory (EISDIR)'],
  ])('names an unreadable file (%s)', (_what, path, problem) => {
    const err = configError(() => resolveConfig({ configPath: path, env: {} }));
    expect(err.message).toBe(`invalid configuration (${path}):\n  ${problem}`);
  });

  it.each([
    [{ logLevel: 'loud' }, '--log-level (logLevel): "loud" is not one of trace|debug|info|warn|error|fatal|silent'],
    [{ metricsListen: '9477' }, '--metrics-listen (metricsListen): "9477" is not host:port, e.g. 127.0.0.1:9477'],
    [{ listen: ['/ip4/0.0.0.0/tcp/4777', 'tcp:4777'] }, '--listen (listen[1]): "tcp:4777" is not a multiaddr such as /ip4/10.0.0.2/tcp/4777'],
  ] satisfies [ConfigOverrides, string][])('names the flag that set a bad value: %j', (flags, problem) => {
    const err = configError(() => resolveConfig({ configPath: configFile(NODE), env: {}, flags }));
    expect(err.problems).toEqual([problem]);
  });

  it('names the environment variables that set bad values', () => {
    const err = configError(() => resolveConfig({ configPath: configFile(NODE), env: { DWCP_LOG_LEVEL: 'loud', DWCP_LISTEN: '/ip4/0.0.0.0/tcp/1,bad' } }));
    expect(err.problems).toEqual([
      'DWCP_LISTEN (listen[1]): "bad" is not a multiaddr such as /ip4/10.0.0.2/tcp/4777',
      'DWCP_LOG_LEVEL (logLevel): "loud" is not one of trace|debug|info|warn|error|fatal|silent',
    ]);
  });

  it('blames the file, not a flag, for a value the flag did not touch', () => {
    const err = configError(() => resolveConfig({ configPath: configFile(`${NODE}logLevel: loud\n`), env: {}, flags: { dataDir: '/tmp/x' } }));
    expect(err.problems).toEqual(['logLevel: "loud" is not one of trace|debug|info|warn|error|fatal|silent']);
  });
});
