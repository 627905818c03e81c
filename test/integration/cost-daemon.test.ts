/**
 * Cost end to end: a real dwcpd with AWS and GCP providers against the fake
 * EC2, Compute, CloudWatch and Cloud Monitoring servers (started here, so
 * their state and metrics are set by the test) and a local on-premises
 * provider as its home region, driven through the real dwcpctl; a real
 * Prometheus scrapes it with the shipped rules.
 *
 * What it proves: utilisation reaches the daemon's series through the real
 * CloudWatch and Monitoring SDKs; `cost report` matches a hand computation
 * from the pricing catalog (each VM's billed hours × its catalog price, the
 * idle line from the configured on-premises prices, the projection to month
 * end); a budget crosses 50 %, the daemon logs it, exports the gauges, and
 * the DwcpBudgetThresholdCrossed rule fires in Prometheus; a hard budget once
 * spent makes placement refuse a new VM in its scope.
 *
 * Every wait polls a condition with a deadline; no fixed sleeps.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeCloudWatchServer } from '../../src/cloud/fake/cloudwatch-server.ts';
import type { FakeComputeServer } from '../../src/cloud/fake/compute-server.ts';
import type { FakeEc2Server } from '../../src/cloud/fake/ec2-server.ts';
import type { FakeMonitoringServer } from '../../src/cloud/fake/monitoring-server.ts';
import type { CostReportView } from '../../src/admin/cost-client.ts';
import type { BudgetView } from '../../src/cost/wire.ts';
import { fakeAwsEnv, fakeCloudProviders, startCloudFakes, type CloudFakes } from '../support/cloud-fakes.ts';
import { baseConfig, ctlOn, eventually, metricValue, prepareNode, ROOT, startDaemon, tempRoot, type CtlResult, type DaemonProcess, type NodeFiles } from './harness.ts';

const HOUR = 3_600_000;
const env = fakeAwsEnv('AKIDCOST00000001');

let root: { path: string; remove: () => Promise<void> };
let fakes: CloudFakes;
let ec2: FakeEc2Server;
let compute: FakeComputeServer;
let cloudwatch: FakeCloudWatchServer;
let monitoring: FakeMonitoringServer;
let node: NodeFiles;
let daemon: DaemonProcess;
let prometheus: ChildProcess | undefined;

function catalog(file: string, region: string, type: string): number {
  const doc = parse(readFileSync(join(ROOT, 'config/pricing', file), 'utf8')) as { regions: Record<string, Record<string, { onDemand: number }>> };
  const price = doc.regions[region]?.[type]?.onDemand;
  if (price === undefined) throw new Error(`no ${type} in ${region} in ${file}`);
  return price;
}

beforeAll(async () => {
  root = await tempRoot('cost-daemon');
  fakes = await startCloudFakes(root.path);
  ({ ec2, compute, cloudwatch, monitoring } = fakes);
  const [web] = ec2.seed(1, { instanceType: 't3.micro', tags: { team: 'web' } });
  const [batch] = ec2.seed(1, { instanceType: 't3.small', tags: { team: 'batch' } });
  const [gce] = compute.seed(1, { machineType: 'e2-small', labels: { team: 'web' } });
  for (const [id, cpu] of [[web?.instanceId, 0.42], [batch?.instanceId, 0.07]] as const) {
    cloudwatch.metrics.set(id ?? '', 'cpu', cpu);
    cloudwatch.metrics.set(id ?? '', 'networkIn', 2_000_000);
  }
  monitoring.metrics.set(`${gce?.zone}/${gce?.name}`, 'cpu', 0.63);
  node = await prepareNode(root.path, 'home');
  const config = baseConfig(node, {
    clouds: {
      providers: [
        ...fakeCloudProviders(fakes, 600_000),
        { kind: 'local', capacity: { vcpus: 4, memoryGiB: 8 }, pricePerVcpuHour: 0.01, pricePerGiBHour: 0.001, inventoryIntervalMs: 600_000 },
      ],
    },
    cost: { intervalMs: 250, utilisation: { intervalMs: 500, backfillMs: HOUR } },
    // A budget over the web team's VMs so small that it crosses 50 % within seconds: t3.micro + e2-small ≈ $0.027/h.
    budgets: [{ name: 'web', limitUsd: 0.00005, scope: 'label:team=web', alerts: [50, 100] }],
  });
  daemon = await startDaemon(node, config, env);
  await daemon.serving();
}, 90_000);

afterAll(async () => {
  prometheus?.kill('SIGTERM');
  await daemon?.stop();
  await fakes?.close();
  await root?.remove();
});

const ctl = (...args: string[]): Promise<CtlResult> => ctlOn(node.socket).ctl(...args);
const ctlJson = <T>(...args: string[]): Promise<T> => ctlOn(node.socket).ctlJson<T>(...args);

describe('cost and budgets on a daemon with AWS, GCP and a local home region', () => {
  it('collects utilisation through CloudWatch and Cloud Monitoring', async () => {
    await eventually('utilisation series for the two EC2 and the GCE instance', 60_000, async () => {
      const text = await daemon.scrape();
      return metricValue(text, 'dwcp_utilisation_series', { provider: 'aws' }) === 2 && metricValue(text, 'dwcp_utilisation_series', { provider: 'gcp' }) === 1 ? true : undefined;
    });
    const text = await daemon.scrape();
    // An hour of backfill: 12 five-minute samples per VM at least.
    expect(metricValue(text, 'dwcp_utilisation_samples_total', { provider: 'aws' })).toBeGreaterThanOrEqual(24);
    expect(metricValue(text, 'dwcp_utilisation_samples_total', { provider: 'gcp' })).toBeGreaterThanOrEqual(12);
    expect(cloudwatch.calls.count('GetMetricData', 200)).toBeGreaterThan(0);
    expect(monitoring.calls.count('timeSeries.list', 200)).toBeGreaterThan(0);
  }, 90_000);

  it("the fleet's VM records carry each VM's recent use, in 5 % steps", async () => {
    const vms = await eventually('fleet records with the measured CPU', 60_000, async () => {
      const { vms: all } = await ctlJson<{ vms: { provider: string; type: string; cpu: number | null; memory: number | null }[] }>('vm', 'list', '--all');
      const cpu = (provider: string, type: string) => all.find((v) => v.provider === provider && v.type === type)?.cpu;
      return cpu('aws', 't3.micro') != null && cpu('aws', 't3.small') != null && cpu('gcp', 'e2-small') != null ? all : undefined;
    });
    const byType = Object.fromEntries(vms.map((v) => [v.type, v.cpu]));
    // The fakes report 42 % and 7 % for the two EC2 instances and 63 % for the GCE one.
    expect(byType['t3.micro']).toBe(0.4);
    expect(byType['t3.small']).toBe(0.05);
    expect(byType['e2-small']).toBe(0.65);
    const status = await ctlJson<{ regions: { region: string; vcpus_busy: number | null }[] }>('fleet', 'status');
    expect(status.regions.find((r) => r.region === 'home')?.vcpus_busy).toBeGreaterThan(0);
    const table = await ctl('vm', 'list', '--all');
    expect(table.stdout).toMatch(/^REGION +PROVIDER +ID +NAME +TYPE +STATE +VCPU +MEMORY +CPU +MEM USED/m);
    expect(table.stdout).toMatch(/ t3\.micro .* 40% /);
  }, 90_000);

  it('cost report matches a hand computation from the catalog', async () => {
    const rates: Record<string, number> = {
      [ec2.instances().find((i) => i.instanceType === 't3.micro')?.instanceId ?? '']: catalog('aws-2025-01.yaml', 'us-east-1', 't3.micro'),
      [ec2.instances().find((i) => i.instanceType === 't3.small')?.instanceId ?? '']: catalog('aws-2025-01.yaml', 'us-east-1', 't3.small'),
      [compute.instances()[0]?.name ?? '']: catalog('gcp-2025-01.yaml', 'us-central1', 'e2-small'),
    };
    const report = await eventually('a report with the three cloud VMs billed for a while', 60_000, async () => {
      const r = await ctlJson<CostReportView>('cost', 'report', '--by', 'provider');
      return r.top.length === 3 && r.top.every((t) => t.hours > 0.0005) ? r : undefined;
    });
    const idleRate = 4 * 0.01 + 8 * 0.001;
    const monthEnd = Date.UTC(new Date(report.regions[0]?.asOfMs ?? 0).getUTCFullYear(), new Date(report.regions[0]?.asOfMs ?? 0).getUTCMonth() + 1, 1);
    const asOf = report.regions[0]?.asOfMs ?? 0;
    expect(report.regions.map((r) => r.region)).toEqual(['home']);
    let total = 0;
    let projected = 0;
    for (const t of report.top) {
      const rate = rates[t.vm];
      expect(rate, `catalog price of ${t.vm}`).toBeDefined();
      expect(t.hourlyUsd).toBeCloseTo(rate ?? 0, 6);
      expect(t.model).toBe('on-demand');
      // Billed hours × the catalog price (the report rounds USD to 1/100 of a cent and hours to 1/1000).
      expect(Math.abs(t.mtdUsd - t.hours * (rate ?? 0))).toBeLessThan(0.0002);
      total += t.mtdUsd;
      projected += t.mtdUsd + (rate ?? 0) * ((monthEnd - asOf) / HOUR);
    }
    // Idle on-premises capacity: the local provider has no VM, so all of it, at 4 × $0.01 + 8 GiB × $0.001 an hour.
    const hours = Math.max(...report.top.map((t) => t.hours));
    expect(Math.abs(report.idleUsd - hours * idleRate)).toBeLessThan(0.0003);
    total += report.idleUsd;
    projected += report.idleUsd + idleRate * ((monthEnd - asOf) / HOUR);
    expect(Math.abs(report.mtdUsd - total)).toBeLessThan(0.0005);
    expect(Math.abs(report.projectedUsd - projected) / projected).toBeLessThan(0.001);
    expect(report.groups.map((g) => g.key).sort()).toEqual(['aws', 'gcp', 'local']);

    const table = await ctl('cost', 'report', '--by', 'label:team');
    expect(table, table.stderr).toMatchObject({ code: 0 });
    expect(table.stdout).toMatch(/^LABEL:TEAM +MONTH TO DATE +PROJECTED +VMS$/m);
    expect(table.stdout).toMatch(/^web +\$\d+\.\d{2} +\$\d+\.\d{2} +2$/m);
    expect(table.stdout).toMatch(/^\(idle\) /m);
    const bad = await ctl('cost', 'report', '--by', 'colour');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('by: "colour" is not region, provider or label:KEY');
  }, 120_000);

  it('a budget crosses 50 %: logged, exported, and the shipped rule fires in a real Prometheus', async (ctx) => {
    const web = await eventually('budget web (from the config) at 50 %', 60_000, async () => {
      const list = await ctlJson<BudgetView[]>('budget', 'list');
      const b = list.find((x) => x.spec.name === 'web');
      return b !== undefined && b.spend.ratio >= 0.5 ? b : undefined;
    });
    expect(web.spec).toEqual({ name: 'web', limitUsd: 0.00005, scope: 'label:team=web', alerts: [50, 100], hard: false });
    await eventually('the budget_threshold log event', 30_000, async () => (daemon.lines.some((l) => l.event === 'budget_threshold' && l.budget === 'web' && l.threshold === 50) ? true : undefined));
    const text = await daemon.scrape();
    expect(metricValue(text, 'dwcp_budget_used_ratio', { budget: 'web' })).toBeGreaterThanOrEqual(0.5);
    expect(metricValue(text, 'dwcp_budget_limit_usd', { budget: 'web' })).toBe(0.00005);
    expect(metricValue(text, 'dwcp_cost_usd_total', { region: 'home', provider: 'aws' })).toBeGreaterThan(0);

    const target = new URL((await daemon.serving()).metrics).host;
    const port = await freePort();
    const prometheusDir = join(root.path, 'prometheus');
    writeFileSync(
      join(root.path, 'prometheus.yml'),
      `global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: ['${join(ROOT, 'config/prometheus/dwcp-cost.rules.yml')}']\nscrape_configs:\n  - job_name: dwcp\n    static_configs: [{targets: ['${target}']}]\n`,
    );
    const proc = spawn('prometheus', [`--config.file=${join(root.path, 'prometheus.yml')}`, `--storage.tsdb.path=${prometheusDir}`, `--web.listen-address=127.0.0.1:${port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    const started = await new Promise<boolean>((resolve) => {
      proc.once('error', () => resolve(false));
      proc.once('spawn', () => resolve(true));
    });
    if (!started) {
      if (process.env.CI === 'true') throw new Error('prometheus is required under CI=true (Debian package "prometheus")');
      ctx.skip('prometheus not installed (Debian package "prometheus")');
    }
    prometheus = proc;
    const firing = await eventually('DwcpBudgetThresholdCrossed firing in Prometheus', 90_000, async () => {
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/alerts`).catch(() => null);
      if (res === null || !res.ok) return undefined;
      const body = (await res.json()) as { data: { alerts: { labels: Record<string, string>; state: string; annotations: Record<string, string> }[] } };
      return body.data.alerts.find((a) => a.labels.alertname === 'DwcpBudgetThresholdCrossed' && a.labels.budget === 'web' && a.state === 'firing');
    }, 500);
    expect(firing.annotations.summary).toMatch(/^Budget web crossed (50|100)% of its monthly limit$/);
  }, 180_000);

  it('a hard budget, once spent, makes placement refuse new VMs in its scope', async () => {
    const set = await ctl('budget', 'set', 'capweb', '--limit', '0.00001', '--scope', 'label:team=web', '--hard', '--alerts', '100');
    expect(set, set.stderr).toMatchObject({ code: 0 });
    expect(set.stdout).toContain('budget capweb set: $0.00/month over label:team=web, alerts at 100%, hard');
    await eventually('capweb marked spent in the log', 60_000, async () => {
      const list = await ctlJson<BudgetView[]>('budget', 'list');
      return list.find((b) => b.spec.name === 'capweb')?.spentMonth !== null && list.some((b) => b.spec.name === 'capweb') ? true : undefined;
    });
    const refused = await ctl('vm', 'create', 'web9', '--cpu', '1', '--memory', '512MiB', '--image', 'base', '--label', 'team=web', '--placement', 'auto');
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain('hard budget capweb');
    const placed = await ctl('place', 'db9', '--cpu', '1', '--memory', '512MiB', '--image', 'base', '--label', 'team=db');
    expect(placed, placed.stderr).toMatchObject({ code: 0 });
    const deleted = await ctl('budget', 'delete', 'capweb');
    expect(deleted, deleted.stderr).toMatchObject({ code: 0 });
  }, 120_000);
});

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0));
    });
  });
}
