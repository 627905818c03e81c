/**
 * Policies with real processes: three dwcpd daemons (Raft carries the
 * federation log), each a region with a local provider:
 *
 *   n1: eu, 2 vCPU at $0.05/vCPU-h     n2: us, 8 vCPU at $0.01     n3: us, 8 vCPU at $0.02
 *
 * n1 and n2 name config/policies/eu-residency.yaml in `policies:`, n3 names
 * none: the files bootstrap the log's first policy version and every node
 * takes that one.
 *
 * What it proves, through dwcpctl, the metrics and the daemons' logs:
 * - a `data-class=personal` VM goes to the EU region although it is the
 *   dearest; once that region is full, the next one is refused with the
 *   rule's message and is placed nowhere else; the scheduling node logs a
 *   decision line per denied candidate;
 * - with the rule in audit mode (`policy apply`), the VM is placed outside
 *   the EU and every node lists the violation (`policy violations`), the
 *   gauge counts it, and the region's daemon logs it once;
 * - `policy test` of a stricter set lists what it would flag and changes
 *   nothing; `policy apply` of it flags the running VMs it now forbids,
 *   which keep running where they are;
 * - a malformed document is refused naming the file, policy, rule and
 *   position: by `policy apply`, and by dwcpd at config load (exit 78).
 *
 * No sleeps as synchronisation: log lines are awaited, other nodes' views
 * polled with a deadline.
 */
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FleetDesiredVm, PolicyListResponse, PolicyTestResponse, PolicyViolationsResponse } from '../../src/admin/schema.ts';
import { RaftCluster } from './raft-cluster.ts';
import { localFleetRegion, regionsDeclared } from './fleet-region.ts';
import { baseConfig, eventually, metricValue, prepareNode, runDwcpd, writeConfig, ROOT, type CtlResult, type LogLine } from './harness.ts';

/** From a committed create until its region reports it running, on a loaded 2-core machine. */
const RUNNING_MS = 30_000;
/** Another node's replica applying what one node committed. */
const CONVERGE_MS = 20_000;
const POLICIES = join(ROOT, 'config/policies');
const RULE_MESSAGE = 'VMs labelled data-class=personal run only in regions of jurisdiction eu';

let cluster: RaftCluster;
let scratch: string;

const ctl = (i: number, ...args: string[]): Promise<CtlResult> => cluster.ctl(i, '--timeout', '20s', ...args);
const json = <T>(i: number, ...args: string[]): Promise<T> => cluster.ctlJson<T>(i, '--timeout', '20s', ...args);

async function create(i: number, name: string, cpu: number, ...extra: string[]): Promise<CtlResult> {
  return ctl(i, 'vm', 'create', name, '--cpu', String(cpu), '--memory', '1GiB', '--image', 'base', ...extra, '--json');
}

async function placedOn(i: number, name: string, cpu: number, ...extra: string[]): Promise<string> {
  const res = await create(i, name, cpu, ...extra);
  expect(res.stderr, `vm create ${name}`).toBe('');
  return (JSON.parse(res.stdout) as { region: string }).region;
}

async function desired(i: number): Promise<FleetDesiredVm[]> {
  return (await json<{ vms: FleetDesiredVm[] }>(i, 'vm', 'list', '--desired')).vms;
}

const brief = (r: PolicyViolationsResponse | PolicyTestResponse) => r.violations.map((v) => `${v.vm}@${v.region} ${v.effect} ${v.policy}/${v.rule}`);

/** Waits until every node lists exactly `expected` against policy version `version` (replicas apply at their own pace). */
async function violationsEverywhere(version: number, expected: readonly string[]): Promise<void> {
  await Promise.all(
    [0, 1, 2].map(async (i) => {
      let last: PolicyViolationsResponse | undefined;
      try {
        await eventually(`n${i + 1} lists ${JSON.stringify(expected)} against policy version ${version}`, CONVERGE_MS, async () => {
          last = await json<PolicyViolationsResponse>(i, 'policy', 'violations');
          return last.version === version && JSON.stringify(brief(last)) === JSON.stringify(expected) ? last : undefined;
        });
      } catch (err) {
        throw new Error(`${(err as Error).message}; last answer: ${JSON.stringify(last)}`);
      }
    }),
  );
}
const decisions = (i: number, match: Partial<Record<string, unknown>>): LogLine[] =>
  cluster.daemon(i).lines.filter((l) => l.msg === 'policy decision' && Object.entries(match).every(([k, v]) => l[k] === v));

async function document(name: string, text: string): Promise<string> {
  const path = join(scratch, name);
  await writeFile(path, text);
  return path;
}

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'dwcp-policy-docs-'));
  const vcpus = [2, 8, 8];
  const price = [0.05, 0.01, 0.02];
  cluster = await RaftCluster.start('policyd', 3, {
    extra: (i) => ({
      ...localFleetRegion(i, { vcpus: vcpus[i]!, pricePerVcpuHour: price[i]!, jurisdiction: i === 0 ? 'eu' : 'us' }),
      ...(i < 2 ? { policies: [join(POLICIES, 'eu-residency.yaml')] } : {}),
    }),
  });
  await regionsDeclared(cluster);
}, 90_000);

afterAll(async () => {
  await cluster?.destroy();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

describe('policies, 3 regions (one in the EU)', () => {
  it("bootstraps the log's first policy version from the config's files; every node takes it", async () => {
    // Of n1 and n2, one proposes; the other finds the same set in the log.
    const outcomes = await Promise.all(
      [0, 1].map((i) =>
        cluster.daemon(i).waitForLog((l) => l.msg === "fleet policy set from the config's policy files" || l.msg === "fleet policy files match the federation log's policy version", `n${i + 1} settles its policy files`),
      ),
    );
    expect(outcomes.map((l) => l.msg).sort()).toEqual(["fleet policy files match the federation log's policy version", "fleet policy set from the config's policy files"]);
    for (const i of [0, 1, 2]) {
      const list = await eventually(`n${i + 1} holds policy version 1`, CONVERGE_MS, async () => {
        const r = await json<PolicyListResponse>(i, 'policy', 'list');
        return r.version === 1 ? r : undefined;
      });
      expect(list.policies).toEqual([{ name: 'eu-residency', description: 'VMs holding personal data run only in EU regions (GDPR data residency).', rules: 1, deny: 1, audit: 0, warn: 0 }]);
    }
    const shown = await ctl(2, 'policy', 'show', 'eu-residency');
    expect(shown.stdout).toContain("personal-data-in-eu (deny): region.jurisdiction == 'eu'");
  }, 60_000);

  it('sends a personal-data VM to the EU region, refuses the next with the rule once it is full, and places it nowhere else', async () => {
    expect(await placedOn(2, 'pii1', 2, '--label', 'data-class=personal')).toBe('n1');
    // Without the label, the cheapest region wins.
    expect(await placedOn(2, 'web1', 1)).toBe('n2');

    const refused = await create(2, 'pii2', 1, '--label', 'data-class=personal');
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/pii2 not placed \(no_fit\)/);
    expect(refused.stderr).toContain(`denied by policy eu-residency rule personal-data-in-eu: ${RULE_MESSAGE}`);
    expect(refused.stderr).toMatch(/n1.*capacity/);
    for (const i of [0, 1, 2]) {
      const names = await eventually(`n${i + 1} sees pii1 and web1`, CONVERGE_MS, async () => {
        const vms = await desired(i);
        return vms.length >= 2 ? vms : undefined;
      });
      expect(names.map((v) => `${v.name}@${v.region}`).sort()).toEqual(['pii1@n1', 'web1@n2']);
    }
    // n3 scheduled both: it logged each candidate the rule excluded, once per request.
    const denied = decisions(2, { source: 'placement', vm: 'pii2' });
    expect(denied.map((l) => `${l.region} ${l.policy}/${l.rule} ${l.decision}`).sort()).toEqual(['n2 eu-residency/personal-data-in-eu deny', 'n3 eu-residency/personal-data-in-eu deny']);
    expect(denied[0]).toMatchObject({ operation: 'place', effect: 'deny', message: RULE_MESSAGE, policyVersion: 1, component: 'policy' });
    await violationsEverywhere(1, []);
  }, 90_000);

  it('in audit mode places the VM outside the EU, and every node lists the violation', async () => {
    const eu = await readFile(join(POLICIES, 'eu-residency.yaml'), 'utf8');
    const audit = await document('eu-audit.yaml', eu.replace('effect: deny', 'effect: audit'));
    const applied = await json<{ version: number; unchanged: boolean }>(1, 'policy', 'apply', audit);
    expect(applied).toMatchObject({ version: 2, unchanged: false });
    // The same set again commits nothing.
    expect(await json<{ version: number; unchanged: boolean }>(0, 'policy', 'apply', audit)).toMatchObject({ version: 2, unchanged: true });

    expect(await placedOn(2, 'pii2', 1, '--label', 'data-class=personal')).toBe('n2');
    await violationsEverywhere(2, ['pii2@n2 audit eu-residency/personal-data-in-eu']);
    const table = await ctl(0, 'policy', 'violations');
    expect(table.stdout).toMatch(/^1 violation among 3 placed VMs \(policy version 2\)/);
    expect(table.stdout).toMatch(/pii2\s+n2\s+local\s+audit\s+eu-residency\s+personal-data-in-eu/);
    // The gauge, on a node that neither scheduled nor hosts the VM.
    expect(metricValue(await cluster.daemon(0).scrape(), 'dwcp_policy_violations', { policy: 'eu-residency', effect: 'audit' })).toBe(1);
    // The region's daemon logs the hit once (and no other node does).
    await cluster.daemon(1).waitForLog((l) => l.msg === 'policy decision' && l.source === 'audit' && l.vm === 'pii2', 'n2 logs the audit hit');
    expect(decisions(1, { source: 'audit', vm: 'pii2' })).toHaveLength(1);
    expect(decisions(1, { source: 'audit', vm: 'pii2' })[0]).toMatchObject({ decision: 'audit', region: 'n2', provider: 'local', operation: 'place', rule: 'personal-data-in-eu', policyVersion: 2 });
    expect([...decisions(0, { source: 'audit' }), ...decisions(2, { source: 'audit' })]).toEqual([]);
  }, 90_000);

  it('policy test lists what a stricter set would flag and changes nothing; policy apply of it flags the running VMs it now forbids', async () => {
    await eventually('pii2 running', RUNNING_MS, async () => (await desired(1)).find((v) => v.name === 'pii2' && v.status === 'running'));
    const files = [join(POLICIES, 'eu-residency.yaml'), join(POLICIES, 'required-tags.yaml')];
    const expected = [
      'pii1@n1 deny required-tags/owner-and-cost-center',
      'pii2@n2 deny eu-residency/personal-data-in-eu',
      'pii2@n2 deny required-tags/owner-and-cost-center',
      'web1@n2 deny required-tags/owner-and-cost-center',
    ];
    const dry = await json<PolicyTestResponse>(2, 'policy', 'test', ...files);
    expect(dry).toMatchObject({ current_version: 2, proposed_version: 3, vms: 3, already: 0 });
    expect(brief(dry)).toEqual(expected);
    expect((await json<PolicyListResponse>(2, 'policy', 'list')).version).toBe(2);

    expect(await json<{ version: number }>(0, 'policy', 'apply', ...files)).toMatchObject({ version: 3 });
    await violationsEverywhere(3, expected);
    const scraped = await cluster.daemon(2).scrape();
    expect(metricValue(scraped, 'dwcp_policy_violations', { policy: 'required-tags', effect: 'deny' })).toBe(3);
    expect(metricValue(scraped, 'dwcp_policy_violations', { policy: 'eu-residency', effect: 'audit' })).toBe(0);
    // Flagged, not moved: the VMs stay where they run.
    const vms = await desired(1);
    expect(vms.find((v) => v.name === 'pii2')).toMatchObject({ region: 'n2', status: 'running', deleted: false });
    // n2 logs the audit hit cleared and the deny hits appeared.
    await cluster.daemon(1).waitForLog((l) => l.msg === 'policy decision' && l.decision === 'cleared' && l.vm === 'pii2', 'n2 logs the audit hit cleared');
    expect(decisions(1, { source: 'audit', decision: 'deny' }).map((l) => `${l.vm} ${l.policy}`).sort()).toEqual(['pii2 eu-residency', 'pii2 required-tags', 'web1 required-tags']);
  }, 90_000);

  it('refuses a malformed document naming the file, policy, rule and position: policy apply, and dwcpd at config load', async () => {
    const bad = await document('bad.yaml', "policies:\n  - name: eu-residency\n    rules:\n      - name: personal-data-in-eu\n        condition: regoin.jurisdiction == 'eu'\n        effect: deny\n        message: m\n");
    const applied = await ctl(0, 'policy', 'apply', bad);
    expect(applied.code).toBe(1);
    expect(applied.stderr).toContain(`${bad}: policy eu-residency rule personal-data-in-eu: condition 1:1: Unknown variable: regoin`);
    expect((await json<PolicyListResponse>(0, 'policy', 'list')).version).toBe(3);

    const node = await prepareNode(scratch, 'badpolicy');
    await writeConfig(node, baseConfig(node, { policies: [bad] }));
    const res = await runDwcpd(['--config', node.configPath]);
    expect(res.code).toBe(78);
    expect(res.stderr).toContain(`policies: ${bad}: policy eu-residency rule personal-data-in-eu: condition 1:1: Unknown variable: regoin`);
  }, 60_000);
});
