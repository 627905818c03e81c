/**
 * The `state:` config section: defaults when absent, values taken from the
 * file, and bad values refused with the field named.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, resolveConfig } from '../../src/config/load.ts';
import { DEFAULT_STATE_SETTINGS } from '../../src/state/config.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-state-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const BASE = 'federation: fed\nnode: {name: a, region: eu, provider: onprem}\n';

async function load(yaml: string) {
  const path = join(dir, `c-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(path, yaml);
  return resolveConfig({ configPath: path, env: {} });
}

async function problems(yaml: string): Promise<string[]> {
  try {
    await load(yaml);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  throw new Error('the config was accepted');
}

describe('state config', () => {
  it('has every default when the section is absent', async () => {
    expect((await load(BASE)).state).toEqual(DEFAULT_STATE_SETTINGS);
    expect(DEFAULT_STATE_SETTINGS).toMatchObject({ heartbeatIntervalMs: 1000, phiThreshold: 8, antiEntropyIntervalMs: 2000, quorumTimeoutMs: 5000 });
  });

  it('takes the thresholds and bounds from the file', async () => {
    const state = (await load(`${BASE}state: {phiThreshold: 12, heartbeatIntervalMs: 250, maxInFlightBytes: 65536}\n`)).state;
    expect(state).toMatchObject({ phiThreshold: 12, heartbeatIntervalMs: 250, maxInFlightBytes: 65536, maxBatchEntries: 256 });
  });

  it('refuses bad values and unknown keys, naming them', async () => {
    expect(await problems(`${BASE}state: {phiThreshold: 0}\n`)).toEqual(['state.phiThreshold: 0 is too small: expected at least 0.5']);
    expect(await problems(`${BASE}state: {heartbeatMs: 5}\n`)).toEqual(['state.heartbeatMs: unknown key (not part of the schema)']);
    expect(await problems(`${BASE}state: {maxBatchBytes: 10}\n`)).toEqual(['state.maxBatchBytes: 10 is too small: expected at least 1024']);
  });
});
