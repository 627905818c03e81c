/**
 * dwcpctl `vm` and `cost` without a daemon: the tables (local providers
 * marked simulated, sync state: age, restored, FAILED, never), the instance
 * and estimate blocks, and the usage errors that exit 2 before any call.
 * The commands against a real daemon are in test/integration/cloud-daemon.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { main } from '../../src/cli/main.ts';
import { formatEstimate, formatInstance, formatInstances, providerLabel } from '../../src/cli/vm.ts';
import type { VmInstance, VmProviderStatus } from '../../src/admin/schema.ts';

const NOW = new Date('2025-06-01T12:00:00Z');

const vm: VmInstance = {
  provider: 'lab',
  kind: 'local',
  id: 'local-0123456789ab',
  name: 'db-1',
  region: 'local',
  zone: 'local-a',
  type: 'local.medium',
  vcpus: 2,
  memory_mib: 4096,
  state: 'running',
  provider_state: 'running',
  tags: { 'managed-by': 'dwcp', role: 'db' },
  spot: false,
  launch_time: '2025-06-01T11:00:00.000Z',
  image: 'debian-12',
  private_ip: '10.200.1.2',
  public_ip: null,
};

function status(over: Partial<VmProviderStatus>): VmProviderStatus {
  return { name: 'aws', kind: 'aws', region: 'us-east-1', description: 'aws us-east-1', synced_at: '2025-06-01T11:59:30.000Z', restored: false, last_error: null, instances: 0, pending_creates: 0, ...over };
}

describe('vm tables', () => {
  it('labels providers, marking local ones simulated', () => {
    expect(providerLabel('aws', 'aws')).toBe('aws');
    expect(providerLabel('aws-east', 'aws')).toBe('aws-east (aws)');
    expect(providerLabel('local', 'local')).toBe('local (simulated)');
    expect(providerLabel('lab', 'local')).toBe('lab (local, simulated)');
  });

  it('lists instances, then each provider with its sync state', () => {
    const text = formatInstances(
      {
        instances: [vm],
        providers: [
          status({ name: 'lab', kind: 'local', region: 'local', description: 'local (simulated VMs, no cloud)', instances: 1, restored: true }),
          status({ last_error: 'aws list: Request has expired. [RequestExpired]' }),
          status({ name: 'gcp', kind: 'gcp', description: 'gcp p/us-central1', synced_at: null }),
        ],
      },
      NOW,
    );
    expect(text).toBe(
      [
        'PROVIDER                ID                  NAME  TYPE          ZONE     STATE    VCPU  MEMORY  SPOT  PRIVATE IP  PUBLIC IP',
        'lab (local, simulated)  local-0123456789ab  db-1  local.medium  local-a  running  2     4 GiB   no    10.200.1.2  -',
        '',
        'PROVIDER                DESCRIPTION                      INSTANCES  PENDING CREATES  SYNCED',
        'lab (local, simulated)  local (simulated VMs, no cloud)  1          0                30s ago (restored from disk)',
        'aws                     aws us-east-1                    0          0                FAILED (last good: 30s ago)',
        'gcp                     gcp p/us-central1                0          0                not yet',
        '',
      ].join('\n'),
    );
    expect(formatInstances({ instances: [], providers: [] })).toMatch(/^\(no cloud providers configured/);
    const killed = { ...vm, id: 'qemu-0123456789ab', kind: 'qemu', provider: 'qemu', state: 'stopped', provider_state: 'stopped: QEMU killed by SIGKILL (signal 9)' };
    expect(formatInstances({ instances: [killed], providers: [status({ name: 'qemu', kind: 'qemu' })] }, NOW)).toContain('\nqemu-0123456789ab (db-1): stopped: QEMU killed by SIGKILL (signal 9)\n\nPROVIDER');
  });

  it('shows one instance and one estimate as fields', () => {
    expect(formatInstance(vm)).toContain('Provider:    lab (local, simulated)\nID:          local-0123456789ab\n');
    expect(formatInstance(vm)).toContain('Tags:        managed-by=dwcp\n             role=db\n');
    const estimate = formatEstimate({
      provider: 'aws',
      region: 'us-east-1',
      type: 't3.medium',
      model: 'spot',
      currency: 'USD',
      hourly: 0.0125,
      hours: 100,
      total: 1.25,
      monthly: 9.125,
      as_of: '2025-06-01T11:00:00.000Z',
      source: 'live: DescribeSpotPriceHistory via provider aws (lowest zone)',
      basis: 'typical Spot price',
      live: true,
    });
    expect(estimate).toBe(
      [
        'Provider:  aws us-east-1',
        'Type:      t3.medium',
        'Model:     spot (typical Spot price)',
        'Hourly:    $0.0125 USD',
        'Total:     $1.25 for 100 h',
        'Monthly:   $9.13 (730 h)',
        'Price of:  2025-06-01T11:00:00.000Z',
        'Source:    live: DescribeSpotPriceHistory via provider aws (lowest zone)',
        '',
      ].join('\n'),
    );
  });
});

describe('vm and cost usage errors', () => {
  async function run(...argv: string[]): Promise<{ code: number; stderr: string }> {
    let stderr = '';
    const code = await main(['--socket', '/nonexistent/dwcp.sock', ...argv], {}, { stdout: () => undefined, stderr: (t) => (stderr += t) });
    return { code, stderr };
  }

  it('exits 2 naming the mistake, before talking to any daemon', async () => {
    const cases: [string[], string][] = [
      [['vm'], 'vm needs a subcommand: list, create, start, stop, terminate, migrate, failback, protect, unprotect, types or console'],
      [['vm', 'stop'], "vm stop takes one argument, a managed VM's name or an instance ID"],
      [['vm', 'list', 'extra'], 'vm list takes no arguments (got "extra")'],
      [['vm', 'console'], "vm console takes one argument, a VM's name or instance ID"],
      [['vm', 'console', 'web1', '--tail', 'lots'], '--tail: "lots" is not a number of bytes'],
      [['vm', 'stop', 'web1', '--keep-disk'], '--keep-disk: only with vm terminate, not vm stop'],
      [['vm', 'terminate', 'web1', '--keep-disk'], "--keep-disk: name the instance's provider with --provider (a qemu provider)"],
      [['vm', 'create', '--image', 'x'], 'vm create needs a NAME (a managed VM: NAME --cpu N --memory SIZE --image I) or --type (one unmanaged instance: --provider P --type T --image I)'],
      [['vm', 'create', 'web1', '--memory', '1GiB', '--image', 'x'], '--cpu is required (vCPUs, e.g. 2)'],
      [['vm', 'create', 'web1', '--cpu', '1', '--memory', '4 bananas', '--image', 'x'], '--memory: "4 bananas" has an unknown unit "bananas": expected B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)'],
      [['vm', 'create', 'web1', '--cpu', '1', '--memory', '1GiB', '--image', 'x', '--constraint', 'colour=red'], '--constraint "colour=red": unknown kind colour (region, provider, jurisdiction, compliance, label:KEY, max-price, max-rtt, anti-affinity, spread)'],
      [['vm', 'create', 'web1', '--cpu', '1', '--memory', '1GiB', '--image', 'x', '--placement', 'auto', '--region', 'r'], '--placement auto and --region exclude each other'],
      [['place'], "place takes one argument, the VM's name"],
      [['vm', 'create', '--type', 't', '--image', 'x', '--tag', 'novalue'], '--tag "novalue": expected KEY=VALUE'],
      [['vm', 'create', '--provider', 'aws', '--provider', 'gcp', '--type', 't', '--image', 'x'], '--provider given 2 times; give it once'],
      [['cost'], 'cost needs a subcommand: estimate, report, recommendations or apply'],
      [['cost', 'report', '--by', 'x', '--spot'], '--spot does not apply to cost report'],
      [['cost', 'report', '--confirm'], '--confirm does not apply to cost report'],
      [['cost', 'recommendations', '--confirm'], '--confirm does not apply to cost recommendations'],
      [['cost', 'recommendations', 'extra'], 'cost recommendations takes no arguments (got 1 argument)'],
      [['cost', 'apply'], 'cost apply takes ID (got 0 arguments)'],
      [['cost', 'apply', 'rs-0123456789', '--refresh'], '--refresh does not apply to cost apply'],
      [['budget', 'set', 'web'], '--limit is required (USD per month, e.g. 5000)'],
      [['budget', 'set', 'web', '--limit', '10', '--alerts', '50,x'], '--alerts: "50,x" is not a list of whole percentages, e.g. 50,75,90,100'],
      [['cost', 'estimate', '--provider', 'aws', '--region', 'r', '--type', 't', '--spot', '--reserved'], '--spot and --reserved exclude each other'],
      [['cost', 'estimate', '--provider', 'aws', '--region', 'r', '--type', 't', '--hours', '0'], '--hours: "0" is not a number of hours above 0'],
      [['cost', 'estimate', '--region', 'r', '--type', 't'], '--provider is required (aws, gcp, azure or oracle)'],
    ];
    for (const [argv, message] of cases) {
      const result = await run(...argv);
      expect([argv, result.code, result.stderr.split('\n')[0]]).toEqual([argv, 2, `dwcpctl: ${message}`]);
    }
  });
});
