/**
 * The `clouds:` config section through the real resolver: the default (one
 * local provider), a full AWS + GCP + local configuration with its defaults
 * filled in, and errors that name the field for bad kinds, keys, credential
 * sources, endpoint overrides, zones, tags and duplicate names.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveConfig } from '../../src/config/load.ts';
import { gcpEndpointUrl, type GcpCloudConfig } from '../../src/cloud/config.ts';

const dir = mkdtempSync(join(tmpdir(), 'dwcp-cloud-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const BASE = 'federation: f\nnode: {name: n1, region: r1, provider: onprem}\n';
let files = 0;

function resolve(clouds: string) {
  const path = join(dir, `c${files++}.yaml`);
  writeFileSync(path, BASE + clouds);
  return resolveConfig({ configPath: path, env: {} });
}

function problems(clouds: string): string[] {
  try {
    resolve(clouds);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('the config was accepted');
}

describe('clouds config', () => {
  it('defaults to one local provider, tagged managed-by: dwcp; an empty list turns clouds off', () => {
    expect(resolve('').clouds).toEqual({
      pricingDir: undefined,
      spotRefreshMs: 3_600_000,
      providers: [
        { kind: 'local', name: 'local', region: 'local', zones: [], tags: { 'managed-by': 'dwcp' }, inventoryIntervalMs: 60_000, transitionDelayMs: 500, pricePerVcpuHour: 0.02, pricePerGiBHour: 0.003 },
      ],
    });
    expect(resolve('clouds: {providers: []}\n').clouds.providers).toEqual([]);
  });

  it('fills defaults of AWS and GCP entries and merges the configured tags over managed-by', () => {
    const { providers } = resolve(`clouds:
  pricingDir: /etc/dwcp/pricing
  providers:
    - kind: aws
      name: aws-east
      region: us-east-1
      zones: [us-east-1a, us-east-1b]
      credentials: {source: profile, profile: prod}
      endpoint: http://127.0.0.1:4566
      tags: {team: infra}
    - kind: gcp
      project: my-project
      region: us-central1
      credentials: {source: keyFile, path: /etc/dwcp/gcp.json}
      apiEndpoint: 127.0.0.1
      port: 8085
      protocol: http
      tags: {managed-by: dwcp-test}
      inventoryIntervalMs: 500
`).clouds;
    expect(providers[0]).toEqual({
      kind: 'aws',
      name: 'aws-east',
      region: 'us-east-1',
      zones: ['us-east-1a', 'us-east-1b'],
      credentials: { source: 'profile', profile: 'prod' },
      endpoint: 'http://127.0.0.1:4566',
      tags: { 'managed-by': 'dwcp', team: 'infra' },
      inventoryIntervalMs: 60_000,
      maxAttempts: 5,
    });
    expect(providers[1]).toMatchObject({ kind: 'gcp', name: 'gcp', credentials: { source: 'keyFile', path: '/etc/dwcp/gcp.json' }, tags: { 'managed-by': 'dwcp-test' }, inventoryIntervalMs: 500, waitTimeoutMs: 600_000 });
    expect(gcpEndpointUrl(providers[1] as GcpCloudConfig)).toBe('http://127.0.0.1:8085');
  });

  it('names the field of every mistake', () => {
    const cases: [string, string][] = [
      ['    - {kind: azure}\n', 'clouds.providers[0].kind: "azure" is not one of aws|gcp|local'],
      ['    - {kind: aws}\n', 'clouds.providers[0].region: missing, expected a string'],
      ['    - {kind: aws, region: us-east-1, retries: 3}\n', 'clouds.providers[0].retries: unknown key (not part of the schema)'],
      ['    - {kind: aws, region: us-east-1, credentials: {source: vault}}\n', 'clouds.providers[0].credentials.source: "vault" is not one of default|profile|env'],
      ['    - {kind: aws, region: us-east-1, credentials: {source: profile}}\n', 'clouds.providers[0].credentials.profile: missing, expected a string'],
      ['    - {kind: aws, region: us-east-1, endpoint: "ftp://x"}\n', 'clouds.providers[0].endpoint: "ftp://x" is not an http(s) URL such as https://ec2.us-east-1.amazonaws.com'],
      ['    - {kind: aws, region: us-east-1, zones: [eu-west-1a]}\n', 'clouds.providers[0].zones[0]: "eu-west-1a" is not a zone of region us-east-1'],
      ['    - {kind: aws, region: us-east-1, tags: {"aws:owner": me}}\n', 'clouds.providers[0].tags: {"aws:owner":"me"} is refused: tags.aws:owner: keys starting with "aws:" are reserved by AWS'],
      ['    - {kind: aws, region: us-east-1, tags: {dwcp-create-token: x}}\n', 'clouds.providers[0].tags.dwcp-create-token: "x" is reserved for the create token dwcp sets itself'],
      ['    - {kind: gcp, project: my-project, region: us-central1, tags: {Team: x}}\n', 'clouds.providers[0].tags: {"Team":"x"} is refused: tags.Team: GCE label keys start with a lowercase letter'],
      [
        '    - {kind: gcp, project: my-project, region: us-central1, apiEndpoint: 127.0.0.1, protocol: http}\n',
        'clouds.providers[0].port: missing (apiEndpoint and protocol given: apiEndpoint, port and protocol go together',
      ],
      ['    - {kind: gcp, project: P, region: us-central1}\n', 'clouds.providers[0].project: "P" is not a GCP project id'],
      ['    - {kind: local, inventoryIntervalMs: 10}\n', 'clouds.providers[0].inventoryIntervalMs: 10 is too small: expected at least 100'],
      ['    - {kind: local}\n    - {kind: local, region: lab}\n', 'clouds.providers[1].name: "local" is already the name of providers[0]; give each provider of the same kind a name'],
    ];
    for (const [entries, expected] of cases) {
      const found = problems(`clouds:\n  providers:\n${entries}`);
      expect(found.find((p) => p.startsWith(expected)), `${entries} -> ${JSON.stringify(found)}`).toBeDefined();
    }
  });
});
