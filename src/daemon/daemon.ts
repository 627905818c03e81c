/**
 * One running dwcpd: wires configuration, identity, metrics, the member mesh,
 * the admin socket and the metrics endpoint together, and takes them down in
 * reverse order.
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
import { loadOrCreateIdentity, type Identity } from './identity.ts';
import { notifySystemd } from './notify.ts';
import { VERSION } from './version.ts';

export const STOP_BUDGET_MS = 9_000;

export class Daemon {
  readonly identity: Identity;
  readonly metrics: DwcpMetrics;
  readonly members: MemberDirectory;
  readonly mesh: MemberMesh;
  readonly #log: Logger;
  readonly #startedAt = new Date();
  #config: DwcpConfig;
  #admin: AdminServer | undefined;
  #metricsServer: MetricsServer | undefined;
  #ready = false;
  #stopped: Promise<void> | undefined;

  private constructor(config: DwcpConfig, log: Logger, identity: Identity, metrics: DwcpMetrics, members: MemberDirectory, mesh: MemberMesh) {
    this.#config = config;
    this.#log = log;
    this.identity = identity;
    this.metrics = metrics;
    this.members = members;
    this.mesh = mesh;
  }

  get config(): DwcpConfig {
    return this.#config;
  }

  static async start(config: DwcpConfig, log: Logger): Promise<Daemon> {
    const identity = await loadOrCreateIdentity(config.dataDir);
    if (identity.created) log.info({ peerId: identity.peerId.toString(), keyPath: identity.keyPath }, 'created a new node identity');
    const metrics = createMetrics();
    metrics.buildInfo.set({ version: VERSION, node: config.node.name, federation: config.federation }, 1);
    const members = new MemberDirectory(config.members);
    const mesh = await MemberMesh.create({ config, identity, members, metrics, log: log.child({ component: 'mesh' }) });
    const daemon = new Daemon(config, log, identity, metrics, members, mesh);
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
    this.#admin = await startAdminServer({
      socketPath: config.adminSocket,
      status: () => this.status(),
      logger: this.#log.child({ component: 'admin' }),
      metrics: this.metrics,
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
      members: this.mesh.status(),
    };
  }

  /**
   * Applies what can change without a restart: log level and the member list
   * (the gater reads the directory, so it follows at once). Other changed
   * settings are reported as needing a restart.
   */
  async reload(next: DwcpConfig): Promise<void> {
    const prev = this.#config;
    const needRestart = (['federation', 'node', 'listen', 'dataDir', 'adminSocket', 'metricsListen', 'network'] as const).filter(
      (k) => JSON.stringify(prev[k]) !== JSON.stringify(next[k]),
    );
    this.#config = { ...prev, logLevel: next.logLevel, members: next.members };
    const changes = this.members.replace(next.members);
    await this.mesh.applyMemberChanges(changes);
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
    const step = async (name: string, fn: () => Promise<void>, budgetMs: number) => {
      let timer: NodeJS.Timeout | undefined;
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
    await step('mesh', () => this.mesh.stop(), 4_000);
    await step('admin', async () => this.#admin?.close(), 3_000);
    await step('metrics', async () => this.#metricsServer?.close(), 1_000);
    this.#log.info('dwcpd stopped');
  }
}
