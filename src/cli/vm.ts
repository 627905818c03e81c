/**
 * dwcpctl's `vm` and `cost` commands: the VMs of the clouds the daemon
 * manages, and what a type costs.
 *
 *   dwcpctl vm list [--provider P]... [--state S]... [--refresh] [--json]
 *   dwcpctl vm list --all [--region R]... [--label k=v]... [--json]   (every region's VMs: fleet.ts)
 *   dwcpctl vm create --provider P --type T --image I [--zone Z] [--name N] [--tag k=v]... [--spot] [--user-data TEXT] [--json]
 *   dwcpctl vm start|stop|terminate ID [--provider P] [--json]
 *   dwcpctl vm types [--provider P]... [--json]
 *   dwcpctl vm console NAME|ID [--follow] [--tail BYTES] [--provider P]   (a qemu guest's serial console)
 *   dwcpctl vm migrate NAME --to REGION [--mode live|warm|cold] [...]  (migration.ts)
 *   dwcpctl vm failback NAME [--mode warm|cold|live] [--detach]   (a DR failback, migration.ts)
 *   dwcpctl vm protect NAME --dr-region R [--rpo 5m] [...] | vm unprotect NAME   (dr.ts)
 *   dwcpctl cost estimate --provider aws --region us-east-1 --type t3.medium [--hours 720] [--spot|--reserved] [--json]
 *
 * `vm console` prints the guest's serial log as the guest wrote it; with
 * --follow it goes on printing what the guest writes until interrupted.
 *
 * The `local` provider's VMs are simulated records, and every table says so
 * next to the provider name. Long operations wait for the target state, up
 * to 10 minutes unless --timeout says otherwise; reads default to 30 s. A
 * listing whose provider failed to sync still prints what is known, then
 * exits 1 with the reason; a create whose tags the next sync must finish
 * exits 0 with a warning on stderr.
 */
import { randomBytes } from 'node:crypto';
import type { ParseArgsOptionsConfig } from 'node:util';
import type { EstimateCostResponse, ListInstancesResponse, VmInstance, VmInstanceType, VmProviderStatus } from '../admin/schema.ts';
import { formatDuration, formatJson, renderFields, renderTable } from './format.ts';
import type { Command, CommandContext, FlagValues } from './command.ts';
import { flagStrings, requiredFlag, singleFlag, UsageError, subcommandError } from './command.ts';
import { listAllVms } from './fleet.ts';
import { MANAGED_VM_OPTIONS, createManaged, listDesired, powerManaged } from './fleet-vm.ts';
import { failbackVm, MIGRATE_OPTIONS, migrateVm } from './migration.ts';
import { PROTECT_OPTIONS, protectVm, unprotectVm } from './dr.ts';

const READ_TIMEOUT_MS = 30_000;
const OPERATION_TIMEOUT_MS = 600_000;
const UNKNOWN = '-';

const VM_OPTIONS = {
  provider: { type: 'string', multiple: true },
  state: { type: 'string', multiple: true },
  refresh: { type: 'boolean' },
  type: { type: 'string' },
  image: { type: 'string' },
  zone: { type: 'string' },
  name: { type: 'string' },
  tag: { type: 'string', multiple: true },
  spot: { type: 'boolean' },
  all: { type: 'boolean' },
  region: { type: 'string', multiple: true },
  label: { type: 'string', multiple: true },
  follow: { type: 'boolean' },
  tail: { type: 'string' },
  'keep-disk': { type: 'boolean' },
  'user-data': { type: 'string' },
  ...MANAGED_VM_OPTIONS,
  ...MIGRATE_OPTIONS,
  ...PROTECT_OPTIONS,
} as const satisfies ParseArgsOptionsConfig;

export const COST_ESTIMATE_OPTIONS = {
  provider: { type: 'string' },
  region: { type: 'string' },
  type: { type: 'string' },
  hours: { type: 'string' },
  spot: { type: 'boolean' },
  reserved: { type: 'boolean' },
} as const satisfies ParseArgsOptionsConfig;

/** --timeout when given, else the default for this kind of call. */
function timeout(ctx: CommandContext, fallbackMs: number): number {
  return ctx.flags.timeout === undefined ? fallbackMs : ctx.timeoutMs;
}

function noArguments(ctx: CommandContext, sub: string): void {
  if (ctx.args.length > 1) throw new UsageError(`${sub} takes no arguments (got ${JSON.stringify(ctx.args[1])})`);
}

function tags(flags: FlagValues): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of flagStrings(flags, 'tag')) {
    const eq = raw.indexOf('=');
    if (eq < 1) throw new UsageError(`--tag ${JSON.stringify(raw)}: expected KEY=VALUE`);
    out[raw.slice(0, eq)] = raw.slice(eq + 1);
  }
  return out;
}

/** The provider column: the configured name, with its kind when they differ; local VMs are marked simulated. */
export function providerLabel(name: string, kind: string): string {
  if (kind === 'local') return name === 'local' ? 'local (simulated)' : `${name} (local, simulated)`;
  return name === kind ? name : `${name} (${kind})`;
}

function memory(mib: number | null): string {
  if (mib === null) return UNKNOWN;
  return mib >= 1024 ? `${(mib / 1024).toFixed(mib % 1024 === 0 ? 0 : 1)} GiB` : `${mib} MiB`;
}

function dollars(value: number, digits = 2): string {
  return `$${value.toFixed(digits)}`;
}

export function formatInstances(res: ListInstancesResponse, now: Date = new Date()): string {
  if (res.providers.length === 0) return '(no cloud providers configured: add clouds.providers to the dwcpd config, see docs/clouds.md)\n';
  const kinds = new Map(res.providers.map((p) => [p.name, p.kind]));
  const table =
    res.instances.length === 0
      ? '(no instances)\n'
      : renderTable(
          ['PROVIDER', 'ID', 'NAME', 'TYPE', 'ZONE', 'STATE', 'VCPU', 'MEMORY', 'SPOT', 'PRIVATE IP', 'PUBLIC IP'],
          res.instances.map((i) => [
            providerLabel(i.provider, kinds.get(i.provider) ?? i.kind),
            i.id,
            i.name,
            i.type,
            i.zone,
            i.state,
            i.vcpus === null ? UNKNOWN : String(i.vcpus),
            memory(i.memory_mib),
            i.spot ? 'yes' : 'no',
            i.private_ip ?? UNKNOWN,
            i.public_ip ?? UNKNOWN,
          ]),
        );
  // A provider state that explains its state ("stopped: QEMU killed by SIGKILL (signal 9)", qemu's) is worth a line of its own.
  const why = res.instances.filter((i) => i.provider_state.startsWith(`${i.state}: `)).map((i) => `${i.id} (${i.name}): ${i.provider_state}\n`);
  return `${table}${why.length > 0 ? `\n${why.join('')}` : ''}\n${formatProviders(res.providers, now)}`;
}

export function formatProviders(providers: readonly VmProviderStatus[], now: Date = new Date()): string {
  return renderTable(
    ['PROVIDER', 'DESCRIPTION', 'INSTANCES', 'PENDING CREATES', 'SYNCED'],
    providers.map((p) => [providerLabel(p.name, p.kind), p.description, String(p.instances), String(p.pending_creates), syncState(p, now)]),
  );
}

function syncState(p: VmProviderStatus, now: Date): string {
  const age = p.synced_at === null ? null : `${formatDuration((now.getTime() - Date.parse(p.synced_at)) / 1000)} ago`;
  if (p.last_error !== null) return `FAILED (last good: ${age ?? 'never'})`;
  if (age === null) return 'not yet';
  return p.restored ? `${age} (restored from disk)` : age;
}

export function formatInstance(i: VmInstance, kind: string = i.kind): string {
  return renderFields([
    ['Provider', providerLabel(i.provider, kind)],
    ['ID', i.id],
    ['Name', i.name],
    ['Type', `${i.type} (${i.vcpus ?? UNKNOWN} vCPU, ${memory(i.memory_mib)})`],
    ['Zone', `${i.zone} (${i.region})`],
    ['State', i.state === i.provider_state ? i.state : `${i.state} (${i.provider_state})`],
    ['Spot', i.spot ? 'yes' : 'no'],
    ['Image', i.image ?? UNKNOWN],
    ['Private IP', i.private_ip ?? UNKNOWN],
    ['Public IP', i.public_ip ?? UNKNOWN],
    ['Launched', i.launch_time ?? UNKNOWN],
    ['Tags', Object.entries(i.tags).map(([k, v]) => `${k}=${v}`).join('\n') || UNKNOWN],
  ]);
}

export function formatTypes(types: readonly VmInstanceType[]): string {
  if (types.length === 0) return '(no instance types)\n';
  return renderTable(
    ['PROVIDER', 'TYPE', 'VCPU', 'MEMORY', 'ARCH', 'SPOT', 'ON-DEMAND/H'],
    types.map((t) => [
      providerLabel(t.provider, t.kind),
      t.name,
      String(t.vcpus),
      memory(t.memory_mib),
      t.architectures.join(',') || UNKNOWN,
      t.spot ? 'yes' : 'no',
      t.on_demand_hourly === null ? UNKNOWN : dollars(t.on_demand_hourly, 4),
    ]),
  );
}

export function formatEstimate(e: EstimateCostResponse): string {
  return renderFields([
    ['Provider', `${e.provider} ${e.region}`],
    ['Type', e.type],
    ['Model', `${e.model} (${e.basis})`],
    ['Hourly', `${dollars(e.hourly, 4)} ${e.currency}`],
    ['Total', `${dollars(e.total)} for ${e.hours} h`],
    ['Monthly', `${dollars(e.monthly)} (730 h)`],
    ['Price of', e.as_of],
    ['Source', `${e.source}${e.live ? '' : ' (indicative list price)'}`],
  ]);
}

/** Prints the listing first, then fails on any provider whose last sync failed: the table is what is known, not all there is. */
function failIfStale(providers: readonly { name: string; last_error: string | null }[]): void {
  const failed = providers.filter((p) => p.last_error !== null);
  if (failed.length > 0) throw new Error(failed.map((p) => `inventory of ${p.name} may be stale: its last sync failed: ${p.last_error}`).join('; '));
}

async function vm(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  const client = async () => (await ctx.admin()).vm;
  const { flags } = ctx;
  switch (sub) {
    case 'list': {
      if (flags.desired === true) return listDesired(ctx);
      noArguments(ctx, 'vm list');
      if (flags.all === true) return listAllVms(ctx);
      if (flags.region !== undefined || flags.label !== undefined) throw new UsageError('--region and --label select among every region\'s VMs: give --all');
      const res = await (await client()).listInstances({
        providers: flagStrings(flags, 'provider'),
        states: flagStrings(flags, 'state'),
        refresh: flags.refresh === true,
        timeout_ms: timeout(ctx, READ_TIMEOUT_MS),
      });
      ctx.io.stdout(ctx.json ? formatJson(res) : formatInstances(res));
      failIfStale(res.providers);
      return;
    }
    case 'create': {
      // A name and a size make a managed VM (the fleet places it); --provider with --type is one instance, unmanaged.
      if (flags.type === undefined) return createManaged(ctx, false);
      noArguments(ctx, 'vm create');
      const res = await (await client()).createInstance({
        provider: singleFlag(flags, 'provider') ?? '',
        name: singleFlag(flags, 'name') ?? `dwcp-${randomBytes(3).toString('hex')}`,
        type: requiredFlag(flags, 'type', 'the instance type, e.g. t3.medium; see dwcpctl vm types'),
        image: requiredFlag(flags, 'image', 'an AMI id on AWS, an image on GCP, an image of the catalog on qemu, anything on local'),
        zone: singleFlag(flags, 'zone') ?? '',
        tags: tags(flags),
        spot: flags.spot === true,
        user_data: singleFlag(flags, 'user-data') ?? '',
        timeout_ms: timeout(ctx, OPERATION_TIMEOUT_MS),
      });
      ctx.io.stdout(ctx.json ? formatJson(res) : formatInstance(res.instance));
      if (res.warning !== null) ctx.io.stderr(`dwcpctl: warning: ${res.warning}\n`);
      return;
    }
    case 'start':
    case 'stop':
    case 'terminate': {
      const keepDisk = flags['keep-disk'] === true;
      if (keepDisk && sub !== 'terminate') throw new UsageError(`--keep-disk: only with vm terminate, not vm ${sub}`);
      // A managed VM's copies belong to the fleet (its reconciler removes them): keeping a disk is an instance's business.
      if (keepDisk && flags.provider === undefined) throw new UsageError('--keep-disk: name the instance\'s provider with --provider (a qemu provider)');
      if (flags.provider === undefined && (await powerManaged(ctx, sub))) return;
      const [id, extra] = ctx.args.slice(1);
      if (id === undefined || extra !== undefined) throw new UsageError(`vm ${sub} takes one argument, a managed VM's name or an instance ID`);
      const request = { provider: singleFlag(flags, 'provider') ?? '', id, timeout_ms: timeout(ctx, OPERATION_TIMEOUT_MS), ...(keepDisk ? { keep_disk: true } : {}) };
      const c = await client();
      const res = await (sub === 'start' ? c.startInstance(request) : sub === 'stop' ? c.stopInstance(request) : c.terminateInstance(request));
      const i = res.instance;
      ctx.io.stdout(ctx.json ? formatJson(res) : `${i.id} ${i.state} (${providerLabel(i.provider, i.kind)}, ${i.name})\n`);
      return;
    }
    case 'migrate':
      return migrateVm(ctx);
    case 'failback':
      return failbackVm(ctx);
    case 'protect':
      return protectVm(ctx);
    case 'unprotect':
      return unprotectVm(ctx);
    case 'types': {
      noArguments(ctx, 'vm types');
      const res = await (await client()).listTypes({ providers: flagStrings(flags, 'provider'), timeout_ms: timeout(ctx, READ_TIMEOUT_MS) });
      ctx.io.stdout(ctx.json ? formatJson(res) : formatTypes(res.types));
      if (res.failures.length > 0) throw new Error(res.failures.map((f) => `${f.provider}: ${f.message}`).join('; '));
      return;
    }
    case 'console':
      return consoleOf(ctx);
    default:
      throw subcommandError('vm', 'list, create, start, stop, terminate, migrate, failback, protect, unprotect, types or console', sub);
  }
}

/** `vm console NAME`: the serial log, as bytes decoded to text (a character split between two pieces stays whole). */
async function consoleOf(ctx: CommandContext): Promise<void> {
  const [vm, extra] = ctx.args.slice(1);
  if (vm === undefined || extra !== undefined) throw new UsageError('vm console takes one argument, a VM\'s name or instance ID');
  const rawTail = singleFlag(ctx.flags, 'tail');
  const tail = rawTail === undefined ? 0 : Number(rawTail);
  if (!Number.isSafeInteger(tail) || tail < 0) throw new UsageError(`--tail: ${JSON.stringify(rawTail)} is not a number of bytes`);
  const decoder = new TextDecoder();
  await (await ctx.admin()).vm.console(
    { provider: singleFlag(ctx.flags, 'provider') ?? '', vm, follow: ctx.flags.follow === true, tail_bytes: tail },
    (bytes) => ctx.io.stdout(decoder.decode(bytes, { stream: true })),
  );
  const rest = decoder.decode();
  if (rest !== '') ctx.io.stdout(rest);
}

/** `dwcpctl cost estimate` (the rest of `cost` is src/cli/cost.ts). */
export async function costEstimate(ctx: CommandContext): Promise<void> {
  noArguments(ctx, 'cost estimate');
  const { flags } = ctx;
  if (flags.spot === true && flags.reserved === true) throw new UsageError('--spot and --reserved exclude each other');
  const rawHours = singleFlag(flags, 'hours');
  const hours = rawHours === undefined ? 0 : Number(rawHours);
  if (rawHours !== undefined && !(hours > 0 && Number.isFinite(hours))) throw new UsageError(`--hours: ${JSON.stringify(rawHours)} is not a number of hours above 0`);
  const res = await (await ctx.admin()).vm.estimateCost({
    provider: requiredFlag(flags, 'provider', 'aws, gcp, azure or oracle'),
    region: requiredFlag(flags, 'region', 'e.g. us-east-1'),
    type: requiredFlag(flags, 'type', 'e.g. t3.medium'),
    model: flags.spot === true ? 'spot' : flags.reserved === true ? 'reserved' : 'on-demand',
    hours,
  });
  ctx.io.stdout(ctx.json ? formatJson(res) : formatEstimate(res));
}

export const VM_COMMAND: Command = {
  name: 'vm',
  args: 'list | create [NAME] | start NAME|ID | stop NAME|ID | terminate NAME|ID | migrate NAME | failback NAME | protect NAME | unprotect NAME | types | console NAME|ID',
  summary:
    "VMs: create NAME --cpu N --memory 4GiB --image I [--region R | --placement auto] [--constraint K=V] [--label k=v] [--dry-run] [--explain] places a managed VM; " +
    "list (--provider P, --state S, --refresh; --all: every region's, --region R, --label k=v; --desired: managed VMs); " +
    'create --provider P --type T --image I: one unmanaged instance; ' +
    'migrate NAME --to REGION [--mode live|warm|cold] [--max-downtime 300ms] [--provider P] [--dry-run] [--detach]: moves a managed VM to another region; ' +
    'failback NAME [--mode warm|cold|live] [--dry-run] [--detach]: a failed-over VM goes home (warm migration); ' +
    'protect NAME --dr-region R [--dr-provider P] [--rpo 5m] [--rto 10m] [--retention 7d] [--failback auto|manual], unprotect NAME: disaster recovery (dr status); ' +
    'terminate ID --provider P --keep-disk: a qemu instance whose disk stays; ' +
    'console NAME [--follow] [--tail BYTES]: a qemu guest\'s serial console',
  options: VM_OPTIONS,
  run: vm,
};

export const PLACE_COMMAND: Command = {
  name: 'place',
  args: 'NAME',
  summary: 'where the fleet would place a VM, every region explained (the flags of vm create; nothing is created)',
  options: VM_OPTIONS,
  run: (ctx) => createManaged(ctx, true),
};
