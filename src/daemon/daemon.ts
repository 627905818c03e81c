/**
 * One running dwcpd: wires configuration, identity, metrics, the member mesh,
 * the admin socket and the metrics endpoint together, and takes them down in
 * reverse order.
 *
 * This is the one place that holds the whole configuration, the whole metrics
 * set and the libp2p host: each component's options type names the slice it
 * reads (config sections, metric families, the few host operations of
 * src/net/host.ts), and the daemon hands it these objects, which satisfy it.
 *
 * Readiness means "serving locally": the admin socket and /metrics answer and
 * libp2p listens. It never waits for peers, so the first member of a new
 * federation becomes ready alone. Stop is bounded: each step has a deadline
 * and the whole stop finishes within STOP_BUDGET_MS.
 */
import type { DwcpConfig } from '../config/schema.ts';
import { MemberDirectory } from '../federation/members.ts';
import type { NodeStatus } from '../federation/status.ts';
import type { Logger } from '../log.ts';
import { createMetrics, type DwcpMetrics } from '../metrics/metrics.ts';
import { startMetricsServer, type MetricsServer } from '../metrics/server.ts';
import { startAdminServer, type AdminServer } from '../admin/server.ts';
import { MemberMesh } from '../net/mesh.ts';
import { RaftGroup } from '../consensus/raft/group.ts';
import { KV_MAX_COMMAND_BYTES, type KvResult } from '../kv/command.ts';
import { KvService } from '../kv/service.ts';
import { KvRaftReplica } from '../kv/raft-replica.ts';
import { KvPbftReplica } from '../kv/pbft-replica.ts';
import { KvPbftLog } from '../kv/pbft-log.ts';
import { KvGeoKeyspace } from '../kv/geo-keyspace.ts';
import { KvRouter } from '../kv/router.ts';
import { kvServiceRegistration } from '../admin/kv-service.ts';
import { raftServiceRegistration } from '../admin/raft-service.ts';
import { PbftGroup } from '../consensus/pbft/group.ts';
import { BYZANTINE_TEST_BEHAVIOURS, type ByzantineTestBehaviour } from '../consensus/pbft/node.ts';
import { pbftServiceRegistration } from '../admin/pbft-service.ts';
import { CloudInventory } from '../cloud/inventory.ts';
import { vmServiceRegistration } from '../admin/vm-service.ts';
import { BlobService } from '../blob/service.ts';
import { blobServiceRegistration } from '../admin/blob-service.ts';
import { GeoState } from '../state/geo-state.ts';
import { TestFaults } from '../net/test-faults.ts';
import { stateServiceRegistration } from '../admin/state-service.ts';
import { ObservedPublisher } from '../fleet/observed-publisher.ts';
import { fleetServiceRegistration } from '../admin/fleet-service.ts';
import { migrationServiceRegistration } from '../admin/migration-service.ts';
import { policyServiceRegistration } from '../admin/policy-service.ts';
import { drServiceRegistration } from '../admin/dr-service.ts';
import { join } from 'node:path';
import { DESIRED_VM_TAG, GENERATION_TAG } from '../fleet/reconciler.ts';
import { BackupDriver } from '../dr/backup-driver.ts';
import { DrDriver } from '../dr/driver.ts';
import { leasePlan } from '../dr/lease-plan.ts';
import { observedOf } from '../fleet/region-reconciler.ts';

/** The key the DR driver's barrier reads (any key does: a strong read answers only with the majority's consent). */
const DR_BARRIER_KEY = 'dwcp/dr/barrier';
import { costServiceRegistration } from '../admin/cost-service.ts';
import { BudgetWatch } from '../cost/budget-watch.ts';
import { CostTracker } from '../cost/cost-tracker.ts';
import { DEFAULT_RESOLUTION_MS } from '../cost/series.ts';
import { UtilisationCollector } from '../cost/utilisation-collector.ts';
import { BurstDriver } from '../burst/driver.ts';
import { homeProbe } from '../burst/home-probe.ts';
import { burstServiceRegistration } from '../admin/burst-service.ts';
import { Optimiser } from '../cost/optimiser.ts';
import { FleetSeat } from '../fleet/seat.ts';
import { regionDeclaration } from '../fleet/region-declaration.ts';
import type { ObservedFleet, RegionHealth } from '../fleet/placement.ts';
import { KvFleetPort } from '../kv/fleet-port.ts';
import { ImageCatalog } from '../image/catalog.ts';
import { IMAGE_FETCH_PROTOCOL, ImageFetch } from '../image/fetch.ts';
import { BlobImageSource, imagesDir } from '../image/source.ts';
import { LateImageSource } from '../cloud/qemu/late-image-source.ts';
import { watchdogPollMs } from '../cloud/qemu/guest-lease.ts';
import { MIGRATE_PROTOCOL, MigrateService } from '../migration/migrate-service.ts';
import { QemuTransfer } from '../migration/qemu-transfer.ts';
import { imageServiceRegistration } from '../admin/image-service.ts';
import { frameEventsFor } from '../net/framing.ts';
import { randomBytes } from 'node:crypto';
import { loadOrCreateIdentity, type Identity } from './identity.ts';
import { notifySystemd } from './notify.ts';
import { VERSION } from './version.ts';
import { planReload } from './reload.ts';
import { NO_POLICY_FILES } from '../policy/files.ts';

export const STOP_BUDGET_MS = 9_000;
/** The window of utilisation the fleet's VM records show. */
const RECENT_USAGE_MS = 15 * 60_000;

/** Part of the stop budget a Raft leader may spend handing leadership over. */
const RAFT_TRANSFER_MS = 2_000;

export class Daemon {
  readonly identity: Identity;
  readonly metrics: DwcpMetrics;
  readonly members: MemberDirectory;
  readonly mesh: MemberMesh;
  /** This node's seat in the trusted members' Raft group; null on an untrusted node. */
  readonly raft: RaftGroup<KvResult> | null;
  /** This node's seat in the federation's PBFT group; null when every member is trusted. */
  readonly pbft: PbftGroup<KvPbftReplica> | null;
  /** The Raft log's client path and the leader's side of write forwarding (/dwcp/kv/2.0.0). */
  readonly kv: KvService;
  /** Where each key-value request goes: scope × consistency to the Raft log, the PBFT log or the geo keyspace. */
  readonly kvRouter: KvRouter;
  /** The VMs of the configured cloud providers, synced periodically (src/cloud/inventory.ts). */
  readonly cloud: CloudInventory;
  /** Large values: the store under <dataDir>/blobs and /dwcp/blob/1.0.0 (src/blob/service.ts). */
  readonly blob: BlobService;
  /** The geo-distributed store (CRDTs, quorum/local/eventual levels) and member failure detection (src/state/geo-state.ts). */
  readonly geo: GeoState;
  /** This region's observed state in the geo store, and the whole fleet read back (src/fleet/observed-publisher.ts). */
  readonly fleet: ObservedPublisher;
  /** This region's part in the fleet's desired state: declaration, scheduling, the reconciler (src/fleet/seat.ts). */
  readonly seat: FleetSeat;
  readonly dr: DrDriver;
  /** DR backups of the protected VMs running here, the RPO of those whose DR region this is, restores (src/dr/backup-driver.ts). */
  readonly backups: BackupDriver;
  /** This region's VMs' utilisation series (src/cost/utilisation-collector.ts): what the cost core and the optimiser read. */
  readonly utilisation: UtilisationCollector;
  /** This region's accrued cost, published for the federation-wide report (src/cost/cost-tracker.ts). */
  readonly cost: CostTracker;
  /** Budgets in the log against the federation's spend: gauges, alerts, hard stops (src/cost/budget-watch.ts). */
  readonly budgets: BudgetWatch;
  /** The burst groups whose home is this region: triggers, scale-out into the clouds, scale-back (src/burst/driver.ts). */
  readonly burst: BurstDriver;
  /** This region's VMs' cost recommendations, published for every node to read, and their apply (src/cost/optimiser.ts). */
  readonly optimiser: Optimiser;
  /** The federation's guest images by name: records in the federation log, holders in the geo store (src/image/catalog.ts). */
  readonly images: ImageCatalog;
  /**
   * Named images as checked files under <dataDir>/qemu/images, fetched from a
   * holder when this node has none: the ImageSource a qemu provider takes
   * (src/cloud/qemu/image-source.ts, src/image/source.ts).
   */
  readonly imageSource: BlobImageSource;
  /** /dwcp/image/1.0.0: asks holders for image parts, and answers such asks (src/image/fetch.ts). */
  readonly #imageFetch: ImageFetch;
  /** /dwcp/migrate/2.0.0: a qemu migration's bytes to and from the other region's daemon (src/migration/migrate-service.ts). */
  readonly #migrate: MigrateService;
  /**
   * Settles if a component fails in a way the daemon cannot serve through
   * (the Raft node lost its storage or broke an invariant): the caller stops
   * the daemon and exits non-zero so the supervisor restarts it from disk.
   */
  readonly fatal: Promise<Error>;
  readonly #log: Logger;
  readonly #startedAt = new Date();
  #config: DwcpConfig;
  #admin: AdminServer | undefined;
  #metricsServer: MetricsServer | undefined;
  #ready = false;
  #stopped: Promise<void> | undefined;

  private constructor(parts: {
    config: DwcpConfig;
    log: Logger;
    identity: Identity;
    metrics: DwcpMetrics;
    members: MemberDirectory;
    mesh: MemberMesh;
    raft: RaftGroup<KvResult> | null;
    pbft: PbftGroup<KvPbftReplica> | null;
    kv: KvService;
    kvRouter: KvRouter;
    raftReplica: KvRaftReplica;
    cloud: CloudInventory;
    blob: BlobService;
    geo: GeoState;
    images: ImageCatalog;
    imageFetch: ImageFetch;
    imageSource: BlobImageSource;
    isConnected: (peerId: string) => boolean;
    fatal: Promise<Error>;
  }) {
    this.fatal = parts.fatal;
    this.#config = parts.config;
    this.#log = parts.log;
    this.identity = parts.identity;
    this.metrics = parts.metrics;
    this.members = parts.members;
    this.mesh = parts.mesh;
    this.raft = parts.raft;
    this.pbft = parts.pbft;
    this.kv = parts.kv;
    this.kvRouter = parts.kvRouter;
    this.cloud = parts.cloud;
    this.blob = parts.blob;
    this.geo = parts.geo;
    this.images = parts.images;
    this.#imageFetch = parts.imageFetch;
    this.imageSource = parts.imageSource;
    this.fleet = new ObservedPublisher({
      config: parts.config,
      inventory: parts.cloud,
      geo: parts.geo,
      members: () => this.mesh.status().map((m) => ({ name: m.name, location: m.region, ...this.geo.health(m.peerId) })),
      log: parts.log.child({ component: 'fleet' }),
    });
    this.metrics.fleet.setSource(() => this.fleet.view());
    const config = parts.config;
    // The fleet's desired state is in the federation scope's log: PBFT's replica when any member is untrusted, else Raft's.
    const federationReplica = () => (parts.pbft !== null ? parts.pbft.machine : parts.raft !== null ? parts.raftReplica : null);
    const migrationLog = parts.log.child({ component: 'migration' });
    this.#migrate = new MigrateService({
      host: parts.mesh.host,
      members: parts.members,
      isConnected: parts.isConnected,
      region: config.node.name,
      migration: (id) => this.seat.state.migration(id),
      qemu: (name) => parts.cloud.migrationGuests(name),
      store: parts.blob.store,
      log: migrationLog,
      events: frameEventsFor(parts.metrics, MIGRATE_PROTOCOL),
      codec: config.fleet.migration.liveCodec,
    });
    const qemuTransfer = new QemuTransfer({
      guests: (name) => parts.cloud.migrationGuests(name),
      channels: this.#migrate,
      codec: config.fleet.migration.liveCodec,
      multifd: config.fleet.migration.multifdChannels === 0 ? null : { channels: config.fleet.migration.multifdChannels, compression: config.fleet.migration.multifdCompression },
      blob: parts.blob,
      convergence: { armAfterRounds: config.fleet.migration.autoConvergeAfterRounds, timeoutMs: config.fleet.migration.convergeTimeoutMs },
      log: migrationLog,
    });
    this.seat = new FleetSeat({
      region: config.node.name,
      settings: config.fleet,
      port: new KvFleetPort(parts.kvRouter, federationReplica),
      clientId: `${config.node.name}-fleet-${randomBytes(4).toString('hex')}`,
      inventory: parts.cloud,
      observed: () => this.#observedFleet(),
      declaration: () => regionDeclaration({ node: this.#config.node, providers: this.#config.clouds.providers, maxMigrations: this.#config.fleet.migration.maxConcurrentPerRegion }, parts.cloud.catalog),
      policyFiles: () => this.#config.policies ?? NO_POLICY_FILES,
      metrics: this.metrics.fleet,
      migrationMetrics: this.metrics.migration,
      view: () => this.fleet.view(),
      transfers: { qemu: qemuTransfer },
      log: parts.log.child({ component: 'fleet' }),
      decisionLog: parts.log.child({ component: 'policy' }),
      commitTimeoutMs: config.raft.requestTimeoutMs,
      drFence: { fenceAfterMs: config.dr.fenceAfterMs, fenceHoldMs: config.dr.fenceHoldMs },
      logSeenAt: () => this.dr.logSeenAt(),
      restore: (vm, generation, backup) => this.backups.restore(vm, generation, backup),
      logConfirmed: () => this.dr.logConfirmed(),
    });
    this.dr = new DrDriver({
      region: config.node.name,
      settings: config.dr,
      state: () => this.seat.state,
      commit: (command, timeoutMs) => this.seat.log.commit(command, timeoutMs),
      // A linearizable read of the federation log: answered only while this node hears its majority.
      barrier: async (timeoutMs) => {
        await parts.kvRouter.read({ key: DR_BARRIER_KEY, prefix: false, limit: 0, level: 'strong', scope: 'federation', timeoutMs });
      },
      health: (region) => {
        const m = this.mesh.status().find((s) => s.name === region);
        if (m === undefined) return undefined;
        const h = this.geo.health(m.peerId);
        if (!m.connected) return { ok: false, detail: `not connected${m.lastError === null ? '' : ` (${m.lastError})`}` };
        return h.health === 'suspected' ? { ok: false, detail: `suspected (phi ${h.phi?.toFixed(1) ?? '?'})` } : { ok: true };
      },
      runningSince: (vm, generation) => {
        const r = this.seat.reconciler.reports().get(vm);
        return r !== undefined && r.status === 'running' && r.generation === generation ? r.since : null;
      },
      renewLeases: async (logSeenAt, leaseMs) => {
        const providers = parts.cloud.guestLeases();
        if (providers.size === 0) return;
        const { instances } = await parts.cloud.list({});
        const copies = instances.filter((e) => providers.has(e.provider)).map(observedOf);
        const plan = leasePlan({ region: config.node.name, state: this.seat.state, copies, logSeenAt, leaseMs });
        await Promise.all([...plan].map(([provider, p]) => providers.get(provider)?.renewLeases(p.renew, p.release)));
      },
      metrics: parts.metrics.dr,
      log: parts.log.child({ component: 'dr' }),
    });
    this.backups = new BackupDriver({
      region: config.node.name,
      state: () => this.seat.state,
      commit: (command, timeoutMs) => this.seat.log.commit(command, timeoutMs),
      copy: async (vm, generation) => {
        const { instances } = await parts.cloud.list({ states: ['running'] });
        const found = instances.find((e) => e.instance.tags[DESIRED_VM_TAG] === vm && e.instance.tags[GENERATION_TAG] === String(generation));
        return found === undefined ? undefined : { provider: found.provider, id: found.instance.id };
      },
      backupDisk: (provider, id, target) => parts.cloud.backupDisk(provider, id, target),
      blob: parts.blob,
      dir: join(config.dataDir, 'dr'),
      commitTimeoutMs: config.raft.requestTimeoutMs,
      metrics: parts.metrics.dr,
      log: parts.log.child({ component: 'dr' }),
    });
    this.metrics.policy.setSource(() => this.seat.auditor.latest());
    // Cost: this region's VMs' utilisation and accrued cost, published for the federation-wide report; budgets from the log.
    const costLog = parts.log.child({ component: 'cost' });
    const usage = config.cost.utilisation;
    this.utilisation = new UtilisationCollector({
      inventory: parts.cloud,
      shape: { resolutionMs: DEFAULT_RESOLUTION_MS, retentionMs: usage.retentionDays * 86_400_000 },
      intervalMs: usage.intervalMs,
      backfillMs: usage.backfillMs,
      maxVms: usage.maxVms,
      metrics: this.metrics.cost,
      log: costLog,
    });
    // Fleet records carry each VM's use over the last quarter hour: three 5-minute slots, recent yet not one sample's noise.
    this.fleet.setUsage((provider, id) => this.utilisation.series(provider, id)?.mean(Date.now() - RECENT_USAGE_MS));
    this.cost = new CostTracker({
      node: config.node.name,
      providers: config.clouds.providers,
      settings: config.cost,
      dataDir: config.dataDir,
      inventory: parts.cloud,
      collector: this.utilisation,
      fleetLabels: (vm) => this.seat.state.vm(vm)?.spec.labels,
      geo: parts.geo,
      metrics: this.metrics.cost,
      log: costLog,
    });
    this.optimiser = new Optimiser({
      node: config.node.name,
      providers: config.clouds.providers,
      settings: config.cost.recommendations,
      inventory: parts.cloud,
      collector: this.utilisation,
      observe: (instances, atMs) => this.cost.observe(instances, atMs),
      fleet: () => this.seat.state,
      command: (command, timeoutMs) => this.seat.command(command, timeoutMs),
      migrate: (request, timeoutMs) => this.seat.migrate(request, timeoutMs),
      geo: parts.geo,
      log: costLog,
    });
    this.budgets = new BudgetWatch({
      intervalMs: config.cost.intervalMs,
      configured: config.budgets,
      budgets: () => this.seat.state.budgets(),
      records: () => this.cost.records(),
      propose: (command) => this.seat.command(command, config.raft.requestTimeoutMs),
      ready: () => this.seat.whenDeclared(),
      metrics: this.metrics.cost,
      log: costLog,
    });
    const burstLog = parts.log.child({ component: 'burst' });
    this.burst = new BurstDriver({
      region: config.node.name,
      settings: config.burst,
      state: () => this.seat.state,
      sample: homeProbe({ region: config.node.name, inventory: parts.cloud, state: () => this.seat.state, lookbackMs: config.burst.sampleMaxAgeMs, log: burstLog }),
      schedule: (spec, power, timeoutMs, operation) => this.seat.create(spec, power, timeoutMs, operation),
      commit: (command, timeoutMs) => this.seat.command(command, timeoutMs),
      commitTimeoutMs: Math.max(config.raft.requestTimeoutMs, 30_000),
      metrics: this.metrics.burst,
      log: burstLog,
    });
    // The region record carries what the reconciler gave up on, so every node can say why a VM is not running.
    this.fleet.setFailures(() =>
      [...this.seat.reconciler.reports()].filter(([, r]) => r.status === 'failed').map(([vm, r]) => ({ vm, generation: r.generation, reason: r.reason ?? 'the provider gave no reason' })),
    );
  }

  /** Health and RTT of every region as this node sees them, for placement. */
  #observedFleet(): ObservedFleet {
    const self = this.#config.node.name;
    const health = new Map<string, RegionHealth>([[self, { phi: 0, suspected: false }]]);
    const rtt = new Map<string, number>([[self, 0]]);
    for (const m of this.mesh.status()) {
      const h = this.geo.health(m.peerId);
      // Never heard from yet (just started) is not suspicion; a member that went quiet is.
      health.set(m.name, { phi: h.phi ?? 0, suspected: h.health === 'suspected' });
      if (m.rttMs !== null) rtt.set(m.name, m.rttMs);
    }
    return { health, rttMs: new Map([[self, rtt]]) };
  }

  get config(): DwcpConfig {
    return this.#config;
  }

  static async start(config: DwcpConfig, log: Logger): Promise<Daemon> {
    const identity = await loadOrCreateIdentity(config.dataDir);
    if (identity.created) log.info({ peerId: identity.peerId.toString(), keyPath: identity.keyPath }, 'created a new node identity');
    const metrics = createMetrics();
    metrics.buildInfo.set({ version: VERSION, node: config.node.name, federation: config.federation }, 1);
    // First, so a bad pricing file stops the start before any port is bound.
    // The image catalog needs the mesh, blob store and router built below: qemu providers get a placeholder bound to it then.
    const catalogImages = new LateImageSource();
    const cloud = await CloudInventory.open({ clouds: config.clouds, dataDir: config.dataDir, metrics: metrics.cloud, log: log.child({ component: 'cloud' }), images: catalogImages, leasePollMs: watchdogPollMs(config.dr.leaseMs) });
    const members = new MemberDirectory(config.members);
    const mesh = await MemberMesh.create({ config, identity, members, metrics, log: log.child({ component: 'mesh' }) });
    // DWCP_TEST_FAULTS=1 lets a test cut members off without changing the member list (src/net/test-faults.ts).
    const faults = TestFaults.fromEnv(process.env);
    const isConnected = (peerId: string) => mesh.isConnected(peerId) && !faults.blocks(peerId);
    // The KV state machine is plugged into each log (Raft here, PBFT below): consensus knows only the interfaces.
    const replica = new KvRaftReplica();
    const fatal = Promise.withResolvers<Error>();
    const raft = await RaftGroup.open<KvResult>({
      config,
      host: mesh.host,
      members,
      isConnected,
      machine: replica,
      core: { maxProposalBytes: KV_MAX_COMMAND_BYTES },
      metrics,
      log: log.child({ component: 'raft' }),
      onFatal: (err) => fatal.resolve(err),
    });
    const pbft = await PbftGroup.open({
      config,
      host: mesh.host,
      identity,
      members,
      isConnected,
      machine: new KvPbftReplica(),
      initialSnapshot: KvPbftReplica.genesis(),
      metrics,
      log: log.child({ component: 'pbft' }),
      onFatal: (err) => fatal.resolve(err),
      ...testByzantine(process.env, log),
    });
    const kv = new KvService({
      node: raft?.node ?? null,
      minorityGraceMs: 4 * config.raft.electionTicks * config.raft.tickMs,
      replica,
      host: mesh.host,
      members,
      isConnected,
      metrics,
      log: log.child({ component: 'kv' }),
    });
    const blob = await BlobService.forDaemon({ config, mesh, members, metrics, log: log.child({ component: 'blob' }) });
    const geo = await GeoState.open({
      config,
      host: mesh.host,
      members,
      isConnected,
      memberLinks: () => mesh.status(),
      metrics,
      log: log.child({ component: 'state' }),
      onFatal: (err) => fatal.resolve(err),
      faults,
    });
    const kvRouter = new KvRouter({
      raft: kv,
      pbft: pbft === null ? null : new KvPbftLog(pbft, config.node.name),
      geo: new KvGeoKeyspace(geo),
      members,
      nodeName: config.node.name,
    });
    // Images: names in the federation log and holders in the geo store (both through the router), bytes in the blob store.
    const imageLog = log.child({ component: 'image' });
    const images = new ImageCatalog({ node: config.node.name, kv: kvRouter, blob, timeoutMs: config.raft.requestTimeoutMs, log: imageLog });
    const imageFetch = new ImageFetch({ host: mesh.host, members, isConnected, blob, log: imageLog, events: frameEventsFor(metrics, IMAGE_FETCH_PROTOCOL) });
    const imageSource = await BlobImageSource.open({
      catalog: images,
      store: blob.store,
      fetch: imageFetch,
      members: () => {
        const links = new Map(mesh.status().map((m) => [m.peerId, m.rttMs]));
        return members.list().map((member) => ({ member, connected: isConnected(member.peerId), rttMs: links.get(member.peerId) ?? null }));
      },
      dir: imagesDir(config.dataDir),
      metrics: metrics.image,
      log: imageLog,
    });
    catalogImages.bind(imageSource);
    const daemon = new Daemon({ config, log, identity, metrics, members, mesh, raft, pbft, kv, kvRouter, raftReplica: replica, cloud, blob, geo, images, imageFetch, imageSource, isConnected, fatal: fatal.promise });
    try {
      await daemon.#serve();
    } catch (err) {
      await daemon.stop();
      throw err;
    }
    return daemon;
  }

  async #serve(): Promise<void> {
    const config = this.#config;
    await this.mesh.start();
    await this.raft?.start();
    await this.pbft?.start();
    await this.kv.start();
    await this.geo.start();
    this.cloud.start();
    this.fleet.start();
    this.seat.start();
    this.dr.start();
    await this.backups.start();
    this.utilisation.start();
    await this.cost.start();
    this.budgets.start();
    this.burst.start(() => this.seat.whenDeclared());
    this.optimiser.start();
    await this.blob.start();
    await this.#imageFetch.start();
    await this.#migrate.start();
    const adminLog = this.#log.child({ component: 'admin' });
    const defaultTimeoutMs = config.raft.requestTimeoutMs;
    this.#admin = await startAdminServer({
      socketPath: config.adminSocket,
      status: () => this.status(),
      logger: adminLog,
      metrics: this.metrics,
      services: [
        kvServiceRegistration({ router: this.kvRouter, nodeName: config.node.name, defaultTimeoutMs, log: adminLog }),
        stateServiceRegistration({ geo: this.geo, members: this.members, faults: this.geo.faults, defaultTimeoutMs: config.state.quorumTimeoutMs, log: adminLog }),
        raftServiceRegistration({ node: this.raft?.node ?? null, members: this.members, defaultTimeoutMs, log: adminLog }),
        pbftServiceRegistration({ group: this.pbft, log: adminLog }),
        vmServiceRegistration({ inventory: this.cloud, log: adminLog }),
        blobServiceRegistration({ service: this.blob, log: adminLog }),
        imageServiceRegistration({ catalog: this.images, source: this.imageSource, dir: imagesDir(config.dataDir), log: adminLog }),
        fleetServiceRegistration({ view: () => this.fleet.view(), seat: this.seat, defaultTimeoutMs: Math.max(defaultTimeoutMs, 30_000), log: adminLog }),
        migrationServiceRegistration({ seat: this.seat, defaultTimeoutMs: Math.max(defaultTimeoutMs, 30_000), log: adminLog }),
        policyServiceRegistration({ seat: this.seat, defaultTimeoutMs: Math.max(defaultTimeoutMs, 30_000), log: adminLog }),
        drServiceRegistration({ seat: this.seat, view: () => this.fleet.view(), facts: (vm) => ({ lastBackupAt: this.backups.lastBackupAt(vm), rtoMeasuredMs: this.dr.rtoOf(vm) }), defaultTimeoutMs: Math.max(defaultTimeoutMs, 30_000), log: adminLog }),
        costServiceRegistration({
          report: (query) => this.cost.report(query),
          records: () => this.cost.records(),
          budgets: () => this.seat.state.budgets(),
          propose: (command, timeoutMs) => this.seat.command(command, timeoutMs),
          recommendations: () => this.optimiser.recommendations(),
          refreshRecommendations: () => this.optimiser.pass(),
          apply: (request) => this.optimiser.apply(request),
          defaultTimeoutMs: Math.max(defaultTimeoutMs, 30_000),
          log: adminLog,
        }),
        burstServiceRegistration({
          status: () => this.burst.status(),
          groups: () => this.seat.state.burstGroups(),
          propose: (command, timeoutMs) => this.seat.command(command, timeoutMs),
          defaultTimeoutMs: Math.max(defaultTimeoutMs, 30_000),
          log: adminLog,
        }),
      ],
    });
    this.#metricsServer = await startMetricsServer({
      listen: config.metricsListen,
      registry: this.metrics.registry,
      ready: () => this.#ready,
      logger: this.#log.child({ component: 'metrics' }),
    });
    this.#ready = true;
    this.#log.info(
      {
        node: config.node.name,
        federation: config.federation,
        peerId: this.identity.peerId.toString(),
        dataDir: config.dataDir,
        adminSocket: this.#admin.socketPath,
        metrics: `http://${this.#metricsServer.address}/metrics`,
        listen: this.mesh.listenAddrs(),
        members: this.members.size,
        config: config.configPath ?? '(embedded defaults)',
      },
      'dwcpd serving',
    );
    await notifySystemd({ ready: true, status: `serving, ${this.members.size} members configured` }, this.#log);
  }

  /** The admin socket's bound path and the metrics endpoint's bound address (port 0 resolved). */
  get endpoints(): { adminSocket: string; metrics: string } {
    return { adminSocket: this.#admin?.socketPath ?? this.#config.adminSocket, metrics: this.#metricsServer?.address ?? this.#config.metricsListen };
  }

  status(): NodeStatus {
    const { node, federation } = this.#config;
    return {
      ...node,
      peerId: this.identity.peerId.toString(),
      federation,
      version: VERSION,
      listenAddrs: this.mesh.listenAddrs(),
      startedAt: this.#startedAt.toISOString(),
      uptimeSeconds: (Date.now() - this.#startedAt.getTime()) / 1000,
      members: this.mesh.status().map((m) => ({ ...m, ...this.geo.health(m.peerId) })),
      scopes: this.kvRouter.scopePlan(),
    };
  }

  /**
   * Applies what can change without a restart (log level, member list: the
   * gater reads the directory, so it follows at once), or refuses the whole
   * reload when it would change trust or consensus membership (src/daemon/reload.ts).
   */
  async reload(next: DwcpConfig): Promise<void> {
    const prev = this.#config;
    const plan = planReload(prev, next);
    if (plan.kind === 'refuse') {
      this.#log.error(
        { changes: plan.changes },
        `reload refused: ${plan.changes.join('; ')} changes who runs which consensus log, which needs a coordinated restart of every member; keeping the running configuration`,
      );
      return;
    }
    const { needRestart } = plan;
    this.#config = { ...prev, logLevel: next.logLevel, members: next.members, policies: next.policies ?? NO_POLICY_FILES };
    // Policy files only bootstrap a log without a policy version; the seat says whether new ones were used or ignored.
    if (JSON.stringify(prev.policies ?? NO_POLICY_FILES) !== JSON.stringify(next.policies ?? NO_POLICY_FILES)) void this.seat.bootstrapPolicy();
    const changes = this.members.replace(next.members);
    await this.mesh.applyMemberChanges(changes);
    this.geo.applyMemberChanges();
    // Logged before the new level applies, so raising the level still records the reload itself.
    this.#log.info(
      {
        logLevel: next.logLevel,
        added: changes.added.map((m) => m.name),
        removed: changes.removed.map((m) => m.name),
        changed: changes.changed.map((m) => m.name),
        ...(needRestart.length ? { needRestart } : {}),
      },
      needRestart.length ? 'configuration reloaded; some changed settings apply only after a restart' : 'configuration reloaded',
    );
    this.#log.level = next.logLevel;
  }

  /** Idempotent; resolves when everything is closed and the socket removed. */
  stop(): Promise<void> {
    this.#stopped ??= this.#stop();
    return this.#stopped;
  }

  async #stop(): Promise<void> {
    this.#ready = false;
    this.#admin?.setServing(false);
    await notifySystemd({ stopping: true }, this.#log);
    // Each step has its own budget, clamped to what is left of the whole stop's: the sum may exceed it, the stop may not.
    const stopBy = performance.now() + STOP_BUDGET_MS;
    const step = async (name: string, fn: () => Promise<void>, stepBudgetMs: number) => {
      let timer: NodeJS.Timeout | undefined;
      const budgetMs = Math.max(0, Math.min(stepBudgetMs, stopBy - performance.now()));
      const deadline = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), budgetMs)));
      try {
        const result = await Promise.race([fn().then(() => 'done' as const), deadline]);
        if (result === 'timeout') this.#log.warn({ step: name, budgetMs }, 'shutdown step overran its budget; moving on');
      } catch (err) {
        this.#log.warn({ step: name, err: (err as Error).message }, 'shutdown step failed');
      } finally {
        clearTimeout(timer);
      }
    };
    // Cloud operations first: their callers get an answer before the admin socket closes.
    this.dr.stop();
    await step('dr backups', () => this.backups.stop(), 500);
    await step('burst', () => this.burst.stop(), 500);
    await step('cost', async () => {
      this.budgets.stop();
      await Promise.all([this.cost.stop(), this.utilisation.stop(), this.optimiser.stop()]);
    }, 500);
    await step('fleet reconciler', () => this.seat.stop(), 500);
    await step('fleet', () => this.fleet.stop(), 500);
    await step('cloud', () => this.cloud.stop(), 500);
    // Raft first, while the mesh is still up: a leader hands over before it goes.
    await step('kv', () => this.kv.stop(), 500);
    await step('pbft', async () => this.pbft?.stop(), 1_000);
    await step('raft', async () => this.raft?.stop(RAFT_TRANSFER_MS), RAFT_TRANSFER_MS + 1_000);
    await step('state', () => this.geo.stop(), 1_000);
    await step('migrate', () => this.#migrate.stop(), 500);
    await step('images', async () => {
      this.imageSource.stop();
      await this.#imageFetch.stop();
    }, 500);
    await step('blob', () => this.blob.stop(), 1_000);
    await step('mesh', () => this.mesh.stop(), 2_500);
    await step('admin', async () => this.#admin?.close(), 2_000);
    await step('metrics', async () => this.#metricsServer?.close(), 500);
    this.#log.info('dwcpd stopped');
  }
}

/**
 * The test-only Byzantine behaviour from DWCP_TEST_BYZANTINE (real-process
 * tests start one member misbehaving with it); an unknown value stops the
 * start rather than run a replica in some unintended mode.
 */
function testByzantine(env: NodeJS.ProcessEnv, log: Logger): { byzantine?: ByzantineTestBehaviour } {
  const value = env['DWCP_TEST_BYZANTINE'];
  if (value === undefined || value === '') return {};
  const known = BYZANTINE_TEST_BEHAVIOURS.find((b) => b === value);
  if (known === undefined) {
    throw new Error(`DWCP_TEST_BYZANTINE=${value} is not a test behaviour (known: ${BYZANTINE_TEST_BEHAVIOURS.join(', ')})`);
  }
  log.warn({ behaviour: known }, 'DWCP_TEST_BYZANTINE is set: this daemon will misbehave on purpose (tests only)');
  return { byzantine: known };
}
