/**
 * Policy files into the fleet: the config's `policies:` are read and
 * compiled at load (a bad file is a ConfigError naming the file, the policy,
 * the rule and the position), and a node's seat proposes them as version 1
 * only while the log holds no policy version; once it holds one, the log
 * wins and differing files are said to be ignored.
 */
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { Counter, Histogram, Registry } from 'prom-client';
import { ConfigError, resolveConfig } from '../../src/config/load.ts';
import { checkPolicyDocuments, readPolicyFiles, type PolicyFileSet } from '../../src/policy/files.ts';
import { PolicyDocumentError } from '../../src/policy/document.ts';
import { policyBootstrap } from '../../src/fleet/policy-bootstrap.ts';
import { FleetSeat } from '../../src/fleet/seat.ts';
import { FleetSettingsSchema } from '../../src/fleet/config.ts';
import type { FleetLogPort } from '../../src/fleet/log.ts';
import type { ReconcilerInventory } from '../../src/fleet/region-reconciler.ts';
import { createLogger } from '../../src/log.ts';
import { createMigrationMetrics } from '../../src/migration/metrics.ts';
import { localProvider, machineWith, registerRegion } from './fleet-fixtures.ts';
import type { FleetStateMachine } from '../../src/fleet/state-machine.ts';

const EXAMPLES = new URL('../../config/policies/', import.meta.url).pathname;
const scratch = mkdtempSync(join(tmpdir(), 'dwcp-policy-files-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(scratch, name);
  writeFileSync(path, text);
  return path;
}

const NODE = 'federation: acme\nnode: {name: dc1, region: fra1, provider: onprem}\n';
const BAD_CONDITION = `policies:
  - name: eu-residency
    rules:
      - name: personal-data-in-eu
        condition: "vm.vcpus > 0 &&\\n regoin.jurisdiction == 'eu'"
        effect: deny
        message: personal data stays in the EU
`;

function problemsOf(run: () => unknown): readonly string[] {
  try {
    run();
  } catch (err) {
    if (err instanceof ConfigError || err instanceof PolicyDocumentError) return err.problems;
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('config policies:', () => {
  it('reads and compiles the files, relative to the config file, in order', () => {
    const eu = readFileSync(join(EXAMPLES, 'eu-residency.yaml'), 'utf8');
    file('eu.yaml', eu);
    const config = resolveConfig({ configPath: file('with-policies.yaml', `${NODE}policies: [eu.yaml, ${join(EXAMPLES, 'hipaa.yaml')}]\n`), env: {} });
    expect(config.policies?.files).toEqual([join(scratch, 'eu.yaml'), join(EXAMPLES, 'hipaa.yaml')]);
    expect(config.policies?.policies.map((p) => p.name)).toEqual(['eu-residency', 'hipaa']);
  });

  it('is empty when absent', () => {
    expect(resolveConfig({ configPath: file('none.yaml', NODE), env: {} }).policies).toEqual({ files: [], policies: [] });
  });

  it('refuses a condition that does not compile, naming the file, policy, rule and line:column', () => {
    const bad = file('bad.yaml', BAD_CONDITION);
    const problems = problemsOf(() => resolveConfig({ configPath: file('bad-config.yaml', `${NODE}policies: [bad.yaml]\n`), env: {} }));
    expect(problems).toEqual([`policies: ${bad}: policy eu-residency rule personal-data-in-eu: condition 2:2: Unknown variable: regoin`]);
  });

  it('refuses a schema error, a missing file and a policy defined twice, every one named', () => {
    const schema = file('schema.yaml', BAD_CONDITION.replace('effect: deny', 'effect: block'));
    const missing = join(scratch, 'missing.yaml');
    expect(problemsOf(() => readPolicyFiles([schema, missing], scratch))).toEqual([`${missing}: cannot read (ENOENT)`]);
    expect(problemsOf(() => readPolicyFiles([schema], scratch))).toEqual([`${schema}: policies[0].rules[0].effect: "block" is not one of deny|audit|warn`]);
    const eu = join(EXAMPLES, 'eu-residency.yaml');
    const twice = file('twice.yaml', readFileSync(eu, 'utf8'));
    expect(problemsOf(() => readPolicyFiles([eu, twice], scratch))).toEqual([`${twice}: policy eu-residency is also defined in ${eu}`]);
  });

  it('checks documents given as text (policy apply) the same way', () => {
    expect(problemsOf(() => checkPolicyDocuments([{ source: 'apply.yaml', text: BAD_CONDITION }]))).toEqual(['apply.yaml: policy eu-residency rule personal-data-in-eu: condition 2:2: Unknown variable: regoin']);
  });
});

const EU = readPolicyFiles([join(EXAMPLES, 'eu-residency.yaml')], scratch);
const HIPAA = readPolicyFiles([join(EXAMPLES, 'hipaa.yaml')], scratch);

describe('policyBootstrap', () => {
  it('proposes version 1 while the log has none, then matches or ignores', () => {
    expect(policyBootstrap({ files: [], policies: [] }, { version: 0, policies: [] })).toEqual({ kind: 'none' });
    expect(policyBootstrap(EU, { version: 0, policies: [] })).toMatchObject({ kind: 'propose', command: { kind: 'set-policy', version: 1 } });
    expect(policyBootstrap(EU, { version: 3, policies: EU.policies })).toEqual({ kind: 'same', version: 3 });
    expect(policyBootstrap(EU, { version: 3, policies: HIPAA.policies })).toEqual({ kind: 'ignored', version: 3 });
  });
});

describe('FleetSeat policy bootstrap', () => {
  const lines: { msg: string; version?: number }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line) as { msg: string });
      done();
    },
  });
  const registers = [new Registry()];
  const metrics = {
    placements: new Counter({ name: 'p_total', help: 'test', labelNames: ['result'], registers }),
    placementDuration: new Histogram({ name: 'd_seconds', help: 'test', registers }),
    reconcileActions: new Counter({ name: 'a_total', help: 'test', labelNames: ['action', 'result'], registers }),
  };
  const migrationMetrics = createMigrationMetrics(registers);

  /**
   * A seat over `machine` as a log of one; the first `failures` commits throw
   * (no leader yet), and the first `stale` reads of the state show no policy
   * (a replica that trails the log).
   */
  function seat(machine: FleetStateMachine, files: PolicyFileSet, failures = 0, stale = 0): FleetSeat {
    let failed = 0;
    let reads = 0;
    const port: FleetLogPort = {
      state: () => (reads++ < stale ? (Object.create(machine, { policy: { value: { version: 0, policies: [] } } }) as FleetStateMachine) : machine),
      commit: async (command) => {
        if (failed++ < failures) throw new Error('no leader');
        return machine.applyEntry(command);
      },
    };
    return new FleetSeat({
      region: 'a',
      settings: FleetSettingsSchema.parse({}),
      port,
      clientId: `seat-${Math.random()}`,
      inventory: {} as ReconcilerInventory,
      observed: () => ({}),
      declaration: () => ({ kind: 'register-region', region: 'a', compliance: [], labels: {}, providers: [localProvider(4, 8)] }),
      policyFiles: () => files,
      metrics,
      migrationMetrics,
      // The seat is not started: neither the migrator nor the reconciler runs.
      view: () => {
        throw new Error('not used by the policy bootstrap');
      },
      log: createLogger('info', sink),
      commitTimeoutMs: 1000,
    });
  }

  it('the first node proposes its files (after the log could not commit once), the next finds them, a node with other files is told they were ignored', async () => {
    const machine = machineWith(registerRegion('a', [localProvider(4, 8)]));
    await seat(machine, EU, 1).bootstrapPolicy();
    expect(machine.policy.version).toBe(1);
    expect(machine.policy.policies.map((p) => p.name)).toEqual(['eu-residency']);
    await seat(machine, EU).bootstrapPolicy();
    await seat(machine, HIPAA).bootstrapPolicy();
    expect(machine.policy.version).toBe(1);
    expect(lines.map((l) => l.msg)).toEqual([
      'fleet policy files not proposed yet (the federation log did not commit); retrying',
      "fleet policy set from the config's policy files",
      "fleet policy files match the federation log's policy version",
      "fleet policy files ignored: the federation log already holds a policy version, which wins over the config's files (dwcpctl policy apply puts a new one)",
    ]);
  });

  it('a proposal made on a replica that trailed the log is refused stale, then finds the log\'s version', async () => {
    const machine = machineWith(registerRegion('a', [localProvider(4, 8)]));
    machine.apply({ kind: 'set-policy', version: 1, policies: [...EU.policies] });
    lines.length = 0;
    await seat(machine, HIPAA, 0, 1).bootstrapPolicy();
    expect(machine.policy.policies.map((p) => p.name)).toEqual(['eu-residency']);
    expect(lines.at(-1)?.msg).toMatch(/ignored/);
  });
});
