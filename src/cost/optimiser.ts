/**
 * Optimiser: the driver of the recommendations core (recommend.ts) for this
 * node's region, and the one that carries a recommendation out.
 *
 * Where the data lives decides the shape: each region's utilisation series
 * are in that region's daemon only (its collector), so each region computes
 * its own VMs' recommendations, every `cost.recommendations.intervalMs`, and
 * publishes them as one record `cost-recommendations/<node>` in the geo
 * store (eventual, one writer per key, at most `maxPublished` entries: the
 * largest savings). `recommendations()` on any node reads every region's
 * record: federation-wide without shipping 40 M samples between regions.
 *
 * Applying acts through the normal paths, and only in the VM's own region
 * (its provider calls are that daemon's): resize = stop, change the type,
 * start (a fleet VM through its desired power state in the federation log,
 * so the reconciler does not restart it half way; an unmanaged one through
 * the inventory); idle = stop (the caller must confirm); move = a migration
 * started in the log (the migration coordinator does it); spot and reserved
 * cannot be automated and say why.
 *
 * Invariants:
 * - An id is applied only if this region's latest pass holds it and the VM
 *   still is what the recommendation saw (same type, running); otherwise the
 *   refusal names the id and says why. An applied id leaves the held set.
 * - Passes never overlap; a failed pass is logged and the next one retries.
 */
import type { CloudProviderConfig } from '../cloud/config.ts';
import type { CloudInventory, InventoryEntry } from '../cloud/inventory.ts';
import type { PricingModel } from '../cloud/pricing/catalog.ts';
import { DwcpError } from '../errors.ts';
import type { FleetCommandInput, FleetResult } from '../fleet/commands.ts';
import type { FleetState } from '../fleet/state-machine.ts';
import type { Logger } from '../log.ts';
import type { MigrationPlan, MigrationRequest } from '../migration/plan.ts';
import type { GeoState } from '../state/geo-state.ts';
import type { CostObservation } from './accrual.ts';
import type { RecommendationSettings } from './config.ts';
import { moveRefusal, moveTargets, type FleetFacts } from './move-targets.ts';
import { recommend, type Recommendation, type RecommendResult, type TypeOffer, type VmFacts } from './recommend.ts';
import type { UtilisationCollector } from './utilisation-collector.ts';
import { COST_STORE_TYPE, readGeoRecords } from './geo-records.ts';
import { RegionRecommendationsSchema, type ApplyResult, type RecommendationsView, type RegionRecommendations } from './wire.ts';

export const RECOMMENDATIONS_PREFIX = 'cost-recommendations/';
const WRITE_TIMEOUT_MS = 5_000;
const MAX_REGIONS = 4_096;
const MAX_INSUFFICIENT = 200;
const POLL_MS = 250;

export interface OptimiserOptions {
  node: string;
  providers: readonly CloudProviderConfig[];
  settings: RecommendationSettings;
  inventory: Pick<CloudInventory, 'list' | 'catalog' | 'types' | 'change' | 'setType'>;
  collector: Pick<UtilisationCollector, 'series'>;
  /** This region's VMs as the cost core prices them (CostTracker.observe). */
  observe(instances: readonly InventoryEntry[], atMs: number): CostObservation;
  /** The federation log's state, when this node holds a replica. */
  fleet(): (FleetFacts & Pick<FleetState, 'vm'>) | null;
  /** Commits a fleet command (set-power) and wakes the reconciler. */
  command(command: FleetCommandInput, timeoutMs: number): Promise<FleetResult>;
  migrate(request: MigrationRequest, timeoutMs: number): Promise<{ plan: MigrationPlan; result: FleetResult | null }>;
  geo: Pick<GeoState, 'update' | 'list' | 'valueOf'>;
  log: Logger;
  now?: () => number;
}

export interface ApplyRequest {
  id: string;
  /** Required for a stop (idle): the operator's yes. */
  confirm: boolean;
  timeoutMs: number;
}

export class Optimiser {
  readonly #o: OptimiserOptions;
  readonly #now: () => number;
  /** Configured provider name -> its types with sizes, once listed. */
  readonly #types = new Map<string, { name: string; vcpus: number; memoryMiB: number; architectures: readonly string[] }[]>();
  #latest: RecommendResult | null = null;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | null = null;
  #stopped = false;

  constructor(options: OptimiserOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  start(): void {
    this.#timer = setInterval(() => void this.pass(), this.#o.settings.intervalMs);
    this.#timer.unref();
    void this.pass();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running;
  }

  /** This region's latest pass (null before the first). */
  get latest(): RecommendResult | null {
    return this.#latest;
  }

  /** One pass now (or the one running). */
  pass(): Promise<void> {
    if (this.#stopped) return Promise.resolve();
    this.#running ??= this.#pass()
      .catch((err: unknown) => this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'recommendation pass failed; retrying on the next tick'))
      .finally(() => {
        this.#running = null;
      });
    return this.#running;
  }

  async #pass(): Promise<void> {
    const { instances } = await this.#o.inventory.list();
    const now = this.#now();
    await this.#learnTypes();
    const result = recommend(this.inputs(instances, now));
    this.#latest = result;
    if (!this.#stopped) await this.#publish(result);
  }

  /** The core's inputs from this region's inventory, series, catalog and the fleet's state. */
  inputs(instances: readonly InventoryEntry[], now: number): Parameters<typeof recommend>[0] {
    const observation = this.#o.observe(instances, now);
    const subjects = new Map(observation.subjects.map((s) => [s.key, s]));
    const fleet = this.#o.fleet();
    const vms: VmFacts[] = [];
    for (const { provider, instance: i } of instances) {
      const subject = subjects.get(`${provider}/${i.id}`);
      if (subject === undefined) continue;
      const fleetVm = i.tags['dwcp-vm'] === undefined ? undefined : fleet?.vm(i.tags['dwcp-vm']);
      const price = subject.price;
      vms.push({
        region: this.#o.node,
        provider,
        kind: subject.kind,
        location: i.region,
        instanceId: i.id,
        vm: subject.vm,
        fleet: fleetVm !== undefined && !fleetVm.deleted,
        type: i.type,
        vcpus: i.vcpus,
        memoryMiB: i.memoryMiB,
        diskBytes: fleetVm?.spec.diskBytes ?? null,
        labels: subject.labels,
        model: price?.model ?? 'on-demand',
        hourlyUsd: price === null ? null : price.model === 'on-prem' ? price.vcpus * price.vcpuHourUsd + price.memoryGiB * price.memoryGiBHourUsd : price.hourlyUsd,
        running: i.state === 'running',
        series: this.#o.collector.series(provider, i.id),
      });
    }
    const offers = new Map<string, TypeOffer[]>();
    return {
      nowMs: now,
      settings: this.#o.settings,
      vms,
      offers: (kind, location) => {
        const key = `${kind}\u0000${location}`;
        let list = offers.get(key);
        if (list === undefined) offers.set(key, (list = this.#offers(kind, location)));
        return list;
      },
      targets: (vm) => {
        const spec = fleet?.vm(vm.vm)?.spec;
        return fleet === null || spec === undefined ? [] : moveTargets(fleet, spec);
      },
      policy: (vm, target) => {
        const spec = fleet?.vm(vm.vm)?.spec;
        return fleet === null || spec === undefined ? 'not a fleet VM' : moveRefusal(fleet, spec, target);
      },
    };
  }

  /** The priced types of a provider kind at a location, sized from a configured provider of that kind and location. */
  #offers(kind: string, location: string): TypeOffer[] {
    const entry = this.#o.providers.find((p) => p.kind === kind && p.region === location);
    const sizes = entry === undefined ? undefined : this.#types.get(entry.name);
    if (sizes === undefined) return [];
    const quote = (type: string, model: PricingModel): number | null => {
      try {
        return this.#o.inventory.catalog.quote({ provider: kind, region: location, type, model }).hourly;
      } catch {
        return null;
      }
    };
    return sizes.flatMap((t) => {
      const onDemand = quote(t.name, 'on-demand');
      return onDemand === null ? [] : [{ ...t, onDemandHourly: onDemand, spotHourly: quote(t.name, 'spot'), reservedHourly: quote(t.name, 'reserved') }];
    });
  }

  /** Lists each cloud provider's types once (their sizes do not change); a failure is retried on the next pass. */
  async #learnTypes(): Promise<void> {
    const missing = this.#o.providers.filter((p) => (p.kind === 'aws' || p.kind === 'gcp') && !this.#types.has(p.name)).map((p) => p.name);
    if (missing.length === 0) return;
    const { types, failures } = await this.#o.inventory.types({ providers: missing });
    for (const name of missing) {
      if (failures.some((f) => f.provider === name)) continue;
      this.#types.set(name, types.filter((t) => t.provider === name).map((t) => ({ name: t.type.name, vcpus: t.type.vcpus, memoryMiB: t.type.memoryMiB, architectures: t.type.architectures })));
    }
    for (const f of failures) this.#o.log.warn({ provider: f.provider, err: f.message }, 'instance types not listed; rightsizing skips this provider until they are');
  }

  /** This region's record of a pass: the largest savings first, at most `maxPublished`. */
  #record(result: RecommendResult): RegionRecommendations {
    const max = this.#o.settings.maxPublished;
    return {
      region: this.#o.node,
      generatedAtMs: result.generatedAtMs,
      scanned: result.scanned,
      omitted: Math.max(0, result.recommendations.length - max),
      recommendations: result.recommendations.slice(0, max),
      insufficient: result.insufficient.slice(0, MAX_INSUFFICIENT),
      insufficientCount: result.insufficient.length,
    };
  }

  async #publish(result: RecommendResult): Promise<void> {
    try {
      await this.#o.geo.update(`${RECOMMENDATIONS_PREFIX}${this.#o.node}`, COST_STORE_TYPE, { op: 'put', value: JSON.stringify(this.#record(result)) }, 'eventual', { ttlMs: null, timeoutMs: WRITE_TIMEOUT_MS });
    } catch (err) {
      if (!this.#stopped) this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'recommendations not published; retrying on the next pass');
    }
  }

  /** Every region's published recommendations (this node's own from its latest pass), sorted by savings. */
  recommendations(): RecommendationsView {
    const records = new Map(readGeoRecords(this.#o.geo, RECOMMENDATIONS_PREFIX, RegionRecommendationsSchema, MAX_REGIONS, this.#o.log).map((r) => [r.region, r]));
    if (this.#latest !== null) records.set(this.#o.node, this.#record(this.#latest));
    const regions = [...records.values()].sort((a, b) => (a.region < b.region ? -1 : 1));
    return {
      regions: regions.map(({ recommendations: _r, ...rest }) => rest),
      recommendations: regions.flatMap((r) => r.recommendations).sort((a, b) => b.savingsMonthlyUsd - a.savingsMonthlyUsd || (a.id < b.id ? -1 : 1)),
    };
  }

  /** Carries out a recommendation of this region (see the header). */
  async apply(request: ApplyRequest): Promise<ApplyResult> {
    const rec = this.#latest?.recommendations.find((r) => r.id === request.id);
    if (rec === undefined) {
      const elsewhere = this.recommendations().recommendations.find((r) => r.id === request.id);
      if (elsewhere !== undefined && elsewhere.region !== this.#o.node) {
        throw new DwcpError('rejected', `id: recommendation ${request.id} is for ${elsewhere.vm} in region ${elsewhere.region}; apply it on that region's node (its daemon makes the provider calls)`);
      }
      const at = this.#latest === null ? 'no pass has run yet' : `the latest pass ran at ${new Date(this.#latest.generatedAtMs).toISOString()}`;
      throw new DwcpError('not_found', `id: no recommendation ${request.id} in region ${this.#o.node} (unknown, already applied, or stale: ${at}); list them again with dwcpctl cost recommendations`);
    }
    const { instances } = await this.#o.inventory.list();
    const now = instances.find((e) => e.provider === rec.provider && e.instance.id === rec.instanceId)?.instance;
    if (now === undefined || now.state !== 'running' || now.type !== rec.type) {
      const seen = now === undefined ? 'is gone' : `is now ${now.state}, type ${now.type}`;
      throw new DwcpError('rejected', `id: recommendation ${rec.id} is stale: ${rec.vm} (${rec.instanceId}) was running as ${rec.type} and ${seen}; list them again with dwcpctl cost recommendations`);
    }
    const result = await this.#carryOut(rec, request);
    this.#forget(rec.id);
    this.#o.log.info({ event: 'recommendation_applied', id: rec.id, kind: rec.kind, vm: rec.vm, provider: rec.provider, instanceId: rec.instanceId, done: result.done }, 'recommendation applied');
    return result;
  }

  async #carryOut(rec: Recommendation, request: ApplyRequest): Promise<ApplyResult> {
    const done: string[] = [];
    const base = { id: rec.id, kind: rec.kind, vm: rec.vm, done, migration: null };
    switch (rec.action.kind) {
      case 'stop':
        if (!request.confirm) throw new DwcpError('invalid', `confirm: recommendation ${rec.id} stops ${rec.vm} (${rec.instanceId}, idle); pass --confirm to stop it`);
        await this.#power(rec, 'stopped', request.timeoutMs, done);
        return base;
      case 'resize': {
        await this.#power(rec, 'stopped', request.timeoutMs, done);
        await this.#o.inventory.setType(rec.instanceId, rec.action.toType, { provider: rec.provider });
        done.push(`changed ${rec.instanceId} from ${rec.type} to ${rec.action.toType}`);
        await this.#power(rec, 'running', request.timeoutMs, done);
        return base;
      }
      case 'move': {
        const { plan, result } = await this.#o.migrate({ vm: rec.vm, region: rec.action.region, provider: rec.action.provider, mode: 'cold' }, request.timeoutMs);
        if (!plan.ok) throw new DwcpError('rejected', `${plan.code}: ${plan.message}`);
        if (result === null || !result.ok) throw new DwcpError('rejected', result === null ? 'the migration was not started' : `${result.code}: ${result.message}`);
        const id = result.migration ?? null;
        done.push(`started migration ${id ?? '?'} of ${rec.vm} to ${rec.action.region}/${rec.action.provider} (cold)`);
        return { ...base, migration: id };
      }
      case 'spot':
        throw new DwcpError(
          'unsupported',
          `recommendation ${rec.id} cannot be applied automatically: a running instance cannot become spot in place (EC2 and GCE fix the purchase option at launch). ` +
            (rec.fleet ? `Set spot: true in ${rec.vm}'s spec and recreate or migrate it onto spot capacity.` : `Launch a spot ${rec.type} from ${rec.vm}'s image and retire the on-demand one.`),
        );
      case 'reserve':
        throw new DwcpError(
          'unsupported',
          `recommendation ${rec.id} cannot be applied automatically: a reservation is a 1-year purchase ($${rec.evidence.commitmentUsd ?? '?'}) made in ${rec.provider}'s billing console or API, which dwcp does not make for you. ` +
            `Once bought, add {provider: ${rec.provider}, type: ${rec.type}, count: N} to cost.reservations so accrual prices it as reserved.`,
        );
    }
  }

  /** Drives the VM to a power state: through the log for a fleet VM (then waits for the reconciler), else through the inventory. */
  async #power(rec: Recommendation, power: 'stopped' | 'running', timeoutMs: number, done: string[]): Promise<void> {
    if (!rec.fleet) {
      await this.#o.inventory.change(power === 'stopped' ? 'stop' : 'start', rec.instanceId, { provider: rec.provider });
      done.push(`${power === 'stopped' ? 'stopped' : 'started'} ${rec.instanceId}`);
      return;
    }
    const result = await this.#o.command({ kind: 'set-power', vm: rec.vm, power }, timeoutMs);
    if (!result.ok) throw new DwcpError('rejected', `${result.code}: ${result.message}`);
    const want = power === 'stopped' ? 'stopped' : 'running';
    const deadline = this.#now() + timeoutMs;
    for (;;) {
      const { instances } = await this.#o.inventory.list();
      const i = instances.find((e) => e.provider === rec.provider && e.instance.id === rec.instanceId)?.instance;
      if (i?.state === want) break;
      if (this.#now() > deadline) throw new DwcpError('timeout', `${rec.vm} (${rec.instanceId}) not ${want} within ${timeoutMs} ms (it is ${i?.state ?? 'gone'}); its desired power is ${power} in the log`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
    done.push(`set ${rec.vm}'s desired power to ${power}; it is ${want}`);
  }

  #forget(id: string): void {
    if (this.#latest === null) return;
    this.#latest = { ...this.#latest, recommendations: this.#latest.recommendations.filter((r) => r.id !== id) };
    void this.#publish(this.#latest);
  }
}
