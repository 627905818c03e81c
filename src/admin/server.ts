/**
 * The admin gRPC server on the local Unix socket: the Admin service, the
 * standard grpc.health.v1.Health service and server reflection, plus any
 * sibling service a component registers (KV, Raft, ...).
 *
 * Invariants:
 * - The socket file is mode 0600 before the server reports SERVING; the
 *   socket is the only access control the admin API has.
 * - A stale socket from a crashed daemon is replaced; a live daemon's socket
 *   and anything that is not a socket are never touched (socket.ts).
 * - Every call that reaches a registered method is counted in
 *   dwcp_admin_requests_total{method, code} exactly once, whatever service
 *   it belongs to (one server interceptor, not per-handler code).
 * - close() is bounded in time and removes the socket file only if it is
 *   still the one this server bound.
 *
 * Adding a service: load its .proto (add the file to ADMIN_PROTO_FILES in
 * schema.ts if it is in package dwcp.admin.v1), and pass an
 * AdminServiceRegistration in `services`; health, reflection and metrics
 * cover it with no further code.
 */
import { chmod, stat, unlink } from 'node:fs/promises';
import { resolve } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadSync, type PackageDefinition, type ServiceDefinition } from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatus } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import type { Logger } from '../log.ts';
import type { DwcpMetrics } from '../metrics/metrics.ts';
import type { MemberStatus, NodeStatus } from '../federation/status.ts';
import { ADMIN_SERVICE, PROTO_LOADER_OPTIONS, loadAdminPackage, serviceDefinition, type MemberInfo, type MembersRequest, type MembersResponse, type StatusRequest, type StatusResponse } from './schema.ts';
import { claimSocketPath } from './socket.ts';
import { asyncUnary } from './call.ts';

/** One gRPC service served on the admin socket. */
export interface AdminServiceRegistration {
  /** Fully-qualified service name (e.g. dwcp.admin.v1.Admin); also its key in the health service. */
  name: string;
  /** The loaded package that defines the service; reflection describes the service from it. */
  packageDefinition: PackageDefinition;
  implementation: grpc.UntypedServiceImplementation;
}

export interface AdminServerOptions {
  socketPath: string;
  status: () => NodeStatus;
  logger: Logger;
  metrics: DwcpMetrics;
  /** Services beyond Admin, health and reflection. */
  services?: readonly AdminServiceRegistration[];
  /** How long close() lets in-flight calls finish before cutting them off. */
  shutdownGraceMs?: number;
}

export interface AdminServer {
  /** Absolute path of the bound socket. */
  socketPath: string;
  /** Health status of the whole server and every registered service. */
  setServing(serving: boolean): void;
  close(): Promise<void>;
}

const SOCKET_MODE = 0o600;
const DEFAULT_SHUTDOWN_GRACE_MS = 2000;
const HEALTH_SERVICE = 'grpc.health.v1.Health';

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function toMemberInfo(m: MemberStatus): MemberInfo {
  return {
    name: m.name,
    peer_id: m.peerId,
    region: m.region,
    provider: m.provider,
    trust: m.trust,
    addrs: m.addrs,
    connected: m.connected,
    rtt_ms: m.rttMs,
    link_mode: m.linkMode,
    last_seen: m.lastSeen,
    last_error: m.lastError,
    phi: m.phi ?? null,
    health: m.health ?? 'unknown',
  };
}

export function toStatusResponse(s: NodeStatus): StatusResponse {
  return {
    name: s.name,
    peer_id: s.peerId,
    region: s.region,
    provider: s.provider,
    trust: s.trust,
    federation: s.federation,
    version: s.version,
    listen_addrs: s.listenAddrs,
    started_at: s.startedAt,
    uptime_seconds: s.uptimeSeconds,
    members: s.members.map(toMemberInfo),
    scopes: s.scopes,
  };
}

export function adminServiceRegistration(status: () => NodeStatus, logger: Logger): AdminServiceRegistration {
  return {
    name: ADMIN_SERVICE,
    packageDefinition: loadAdminPackage(),
    implementation: {
      Status: asyncUnary<StatusRequest, StatusResponse>(logger, 'Status', async () => toStatusResponse(status())),
      Members: asyncUnary<MembersRequest, MembersResponse>(logger, 'Members', async () => ({ members: status().members.map(toMemberInfo) })),
    },
  };
}

/** Label for a method path "/pkg.Service/Method": the path without its leading slash. */
function methodLabel(path: string): string {
  return path.startsWith('/') ? path.slice(1) : path;
}

/**
 * Counts each call once, at the status the server sends or, if the client
 * goes away first (its deadline passed, it was killed), as CANCELLED. Each
 * (method, code) keeps its labelled counter: prom-client would otherwise
 * hash the labels on every call, and every KV put is a call.
 */
function countingInterceptor(metrics: DwcpMetrics): grpc.ServerInterceptor {
  const counters = new Map<string, { inc(): void }>();
  const counterOf = (method: string, code: grpc.status) => {
    const key = `${code} ${method}`;
    let counter = counters.get(key);
    if (counter === undefined) counters.set(key, (counter = metrics.adminRequests.labels({ method, code: grpc.status[code] ?? String(code) })));
    return counter;
  };
  return (methodDescriptor, call) => {
    const method = methodLabel(methodDescriptor.path);
    let counted = false;
    const count = (code: grpc.status) => {
      if (counted) return;
      counted = true;
      counterOf(method, code).inc();
    };
    return new grpc.ServerInterceptingCall(call, {
      start: (next) => next({ onCancel: () => count(grpc.status.CANCELLED) }),
      sendStatus: (status, next) => {
        count(status.code);
        next(status);
      },
    });
  };
}

function bind(server: grpc.Server, address: string): Promise<void> {
  return new Promise((resolveBind, reject) => {
    server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolveBind()));
  });
}

/** Graceful shutdown for at most `graceMs`, then cut off whatever is left (e.g. open health Watch streams). */
function shutdown(server: grpc.Server, graceMs: number): Promise<void> {
  return new Promise((done) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      done();
    }, graceMs);
    server.tryShutdown(() => {
      clearTimeout(timer);
      done();
    });
  });
}

export async function startAdminServer(opts: AdminServerOptions): Promise<AdminServer> {
  const socketPath = resolve(opts.socketPath);
  const { logger, metrics } = opts;
  const registrations = [adminServiceRegistration(opts.status, logger), ...(opts.services ?? [])];

  // Every registration is checked before the filesystem is touched.
  const services: { registration: AdminServiceRegistration; definition: ServiceDefinition }[] = [];
  for (const r of registrations) {
    if (r.name === HEALTH_SERVICE) throw new Error(`admin service name ${r.name} is reserved for the built-in health service`);
    if (services.some((s) => s.registration.name === r.name)) throw new Error(`admin service ${r.name} is registered twice`);
    services.push({ registration: r, definition: serviceDefinition(r.packageDefinition, r.name) });
  }
  const names = services.map((s) => s.registration.name);

  await claimSocketPath(socketPath, logger);

  // channelz stays on (grpc-js's default): with it off, grpc-js 1.14 no longer tracks sessions for forceShutdown, and
  // stop() could not cut off calls past the grace period (admin.test.ts).
  const server = new grpc.Server({ interceptors: [countingInterceptor(metrics)] });
  for (const { registration, definition } of services) {
    server.addService(definition, registration.implementation);
    // Zero series for every method so rate() works from the first scrape.
    for (const m of Object.values(definition)) metrics.adminRequests.inc({ method: methodLabel(m.path), code: 'OK' }, 0);
  }

  const healthKeys = ['', ...names];
  const health = new HealthImplementation(Object.fromEntries(healthKeys.map((k) => [k, 'NOT_SERVING' as ServingStatus])));
  health.addToServer(server);
  const setHealth = (status: ServingStatus) => {
    for (const k of healthKeys) health.setStatus(k, status);
  };

  // Reflection describes health too, so `grpcurl list` shows everything a client can call.
  const described: PackageDefinition = Object.assign({}, loadSync(healthProtoPath, PROTO_LOADER_OPTIONS), ...registrations.map((r) => r.packageDefinition));
  new ReflectionService(described).addToServer(server);

  // Order: bind creates the socket file, with whatever mode the umask gives, so
  // it can only be chmodded afterwards. The gap between the two is closed by the
  // parent directory, which claimSocketPath creates 0700. Narrowing the umask
  // around bind instead would change it for the whole process while bindAsync
  // is pending, affecting files other components create meanwhile.
  try {
    await bind(server, `unix:${socketPath}`);
  } catch (err) {
    server.forceShutdown();
    throw new Error(`cannot bind admin socket ${socketPath}: ${errorMessage(err)}`);
  }
  let bound: { dev: number; ino: number };
  try {
    await chmod(socketPath, SOCKET_MODE);
    const st = await stat(socketPath);
    bound = { dev: st.dev, ino: st.ino };
  } catch (err) {
    server.forceShutdown();
    await unlink(socketPath).catch(() => {});
    throw new Error(`cannot restrict admin socket ${socketPath} to mode 0600: ${errorMessage(err)}`);
  }

  let closing: Promise<void> | null = null;
  setHealth('SERVING');
  logger.info({ socketPath, services: names }, 'admin socket listening');

  return {
    socketPath,
    setServing(serving: boolean) {
      if (closing) return;
      setHealth(serving ? 'SERVING' : 'NOT_SERVING');
    },
    close() {
      closing ??= (async () => {
        setHealth('NOT_SERVING');
        await shutdown(server, opts.shutdownGraceMs ?? DEFAULT_SHUTDOWN_GRACE_MS);
        // Another daemon may have claimed the path meanwhile (our file looked stale to it): leave its socket alone.
        try {
          const st = await stat(socketPath);
          if (st.dev === bound.dev && st.ino === bound.ino) await unlink(socketPath);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') logger.warn({ err, socketPath }, 'could not remove admin socket');
        }
        logger.info({ socketPath }, 'admin socket closed');
      })();
      return closing;
    },
  };
}
