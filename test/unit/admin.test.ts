/**
 * The admin server on a real Unix socket in a temp dir: permissions, the Admin
 * RPCs through the typed client, health, reflection, stale/live/foreign files
 * at the socket path, shutdown and metrics.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmod, lstat, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { loadSync, type MethodDefinition } from '@grpc/proto-loader';
import { service as healthService } from 'grpc-health-check';
import { startAdminServer, type AdminServer, type AdminServerOptions } from '../../src/admin/server.ts';
import { AdminClientError, connectAdmin } from '../../src/admin/client.ts';
import { PROTO_LOADER_OPTIONS, serviceDefinition } from '../../src/admin/schema.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics, type DwcpMetrics } from '../../src/metrics/metrics.ts';
import { NODE_STATUS } from '../support/status-fixture.ts';


const EXPECTED_MEMBERS = [
  {
    name: 'beta',
    peer_id: '12D3KooWZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210zyxwvu',
    region: 'us-east-1',
    provider: 'aws',
    trust: 'untrusted',
    addrs: ['/dns4/beta.example/tcp/4777'],
    connected: false,
    rtt_ms: null,
    link_mode: 'internet',
    last_seen: null,
    last_error: 'dial timeout',
    phi: null,
    health: 'unknown',
  },
  {
    name: 'gamma',
    peer_id: '12D3KooWGammaGammaGammaGammaGammaGammaGammaGamma1',
    region: 'eu-central',
    provider: 'private',
    trust: 'trusted',
    addrs: [],
    connected: true,
    // A measured 0 must survive the wire as 0, not turn into "unknown".
    rtt_ms: 0,
    link_mode: 'datacenter',
    last_seen: '2026-01-02T04:00:00.000Z',
    last_error: null,
    phi: null,
    health: 'unknown',
  },
];

interface LogLine {
  level: string;
  msg: string;
  socketPath?: string;
}

let dir: string;
let socketPath: string;
let logs: LogLine[];
let metrics: DwcpMetrics;
const cleanups: (() => unknown)[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-admin-'));
  socketPath = join(dir, 'admin.sock');
  logs = [];
  metrics = createMetrics({ defaultMetrics: false });
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  await rm(dir, { recursive: true, force: true });
});

function captureLogger() {
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) logs.push(JSON.parse(line) as LogLine);
      done();
    },
  });
  return createLogger('info', sink);
}

async function start(overrides: Partial<AdminServerOptions> = {}): Promise<AdminServer> {
  const server = await startAdminServer({ socketPath, status: () => NODE_STATUS, logger: captureLogger(), metrics, ...overrides });
  cleanups.push(() => server.close());
  return server;
}

function rawClient(path: string): grpc.Client {
  const client = new grpc.Client(`unix:${path}`, grpc.credentials.createInsecure());
  cleanups.push(() => client.close());
  return client;
}

/** Takes any loaded service, including grpc-health-check's (typed by its own proto-loader copy). */
function method<Req, Res>(service: Record<string, unknown>, name: string): MethodDefinition<Req, Res> {
  const m = service[name];
  if (m === undefined) throw new Error(`no method ${name}`);
  return m as MethodDefinition<Req, Res>;
}

function unary<Req, Res>(client: grpc.Client, m: MethodDefinition<Req, Res>, request: Req): Promise<Res> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, request, { deadline: Date.now() + 5000 }, (err, res) =>
      err || res === undefined ? reject(err ?? new Error('no response')) : resolve(res),
    );
  });
}

interface HealthCheckResponse {
  status: string;
}
const healthCheck = method<{ service: string }, HealthCheckResponse>(healthService, 'Check');

async function requestCount(labels: { method: string; code: string }): Promise<number> {
  const { values } = await metrics.adminRequests.get();
  return values.find((v) => v.labels.method === labels.method && v.labels.code === labels.code)?.value ?? 0;
}

/** A socket file with nobody listening, as a daemon killed with SIGKILL leaves it. */
async function leaveStaleSocket(path: string): Promise<void> {
  const child = spawn(
    process.execPath,
    ['-e', "require('node:net').createServer().listen(process.argv[1], () => console.log('listening'))", path],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await once(child.stdout, 'data');
  child.kill('SIGKILL');
  await once(child, 'exit');
  expect((await lstat(path)).isSocket()).toBe(true);
}

/** A listener that accepts connections and never says anything. */
async function listenPlain(path: string): Promise<NetServer> {
  const accepted = new Set<Socket>();
  const server = createServer((sock) => {
    accepted.add(sock);
    sock.on('error', () => {});
  });
  server.listen(path);
  await once(server, 'listening');
  cleanups.push(() => {
    const closed = new Promise((done) => server.close(done));
    for (const sock of accepted) sock.destroy();
    return closed;
  });
  return server;
}

describe('admin server', () => {
  it('binds a 0600 socket in a 0700 directory it creates', async () => {
    socketPath = join(dir, 'run', 'dwcp', 'admin.sock');
    const server = await start();
    expect(server.socketPath).toBe(socketPath);
    const st = await stat(socketPath);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
    expect((await stat(dirname(socketPath))).mode & 0o777).toBe(0o700);
  });

  it('serves Status and Members with snake_case fields and null for unknown values', async () => {
    await start();
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    expect(await client.status()).toEqual({
      name: 'alpha',
      peer_id: NODE_STATUS.peerId,
      region: 'eu-west',
      provider: 'onprem',
      trust: 'trusted',
      federation: 'acme',
      version: '0.1.0',
      listen_addrs: ['/ip4/127.0.0.1/tcp/4777'],
      started_at: '2026-01-02T03:04:05.000Z',
      uptime_seconds: 3725.5,
      members: EXPECTED_MEMBERS,
      scopes: NODE_STATUS.scopes,
    });
    expect(await client.members()).toEqual({ members: EXPECTED_MEMBERS });
  });

  it('reports health SERVING once started and NOT_SERVING after setServing(false)', async () => {
    const server = await start();
    const client = rawClient(socketPath);
    for (const service of ['', 'dwcp.admin.v1.Admin']) {
      expect(await unary(client, healthCheck, { service })).toEqual({ status: 'SERVING' });
    }
    server.setServing(false);
    for (const service of ['', 'dwcp.admin.v1.Admin']) {
      expect(await unary(client, healthCheck, { service })).toEqual({ status: 'NOT_SERVING' });
    }
    server.setServing(true);
    expect(await unary(client, healthCheck, { service: '' })).toEqual({ status: 'SERVING' });
    await expect(unary(client, healthCheck, { service: 'no.such.Service' })).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it('lists and describes its services through server reflection', async () => {
    await start();
    const reflectionIndex = createRequire(import.meta.url).resolve('@grpc/reflection');
    const protoFile = join(dirname(reflectionIndex), '..', 'proto', 'grpc', 'reflection', 'v1', 'reflection.proto');
    const reflection = serviceDefinition(loadSync(protoFile, PROTO_LOADER_OPTIONS), 'grpc.reflection.v1.ServerReflection');
    interface ReflectionResponse {
      list_services_response?: { service: { name: string }[] };
      file_descriptor_response?: { file_descriptor_proto: Buffer[] };
      error_response?: { error_message: string };
    }
    const info = method<Record<string, string>, ReflectionResponse>(reflection, 'ServerReflectionInfo');
    const stream = rawClient(socketPath).makeBidiStreamRequest(info.path, info.requestSerialize, info.responseDeserialize);
    const ask = async (request: Record<string, string>): Promise<ReflectionResponse> => {
      const answer = once(stream, 'data') as Promise<[ReflectionResponse]>;
      stream.write(request);
      return (await answer)[0];
    };

    const listed = await ask({ list_services: '*' });
    const names = listed.list_services_response?.service.map((s) => s.name);
    expect(names).toContain('dwcp.admin.v1.Admin');
    expect(names).toContain('grpc.health.v1.Health');

    const described = await ask({ file_containing_symbol: 'dwcp.admin.v1.Admin' });
    expect(described.error_response).toBeUndefined();
    const files = Buffer.concat(described.file_descriptor_response?.file_descriptor_proto ?? []).toString('latin1');
    expect(files).toContain('dwcp.admin.v1');
    expect(files).toContain('rtt_ms');
    stream.end();
  });

  it('replaces a stale socket left by a daemon that died, and says so', async () => {
    await leaveStaleSocket(socketPath);
    await start();
    expect(logs.some((l) => l.level === 'warn' && /replaced stale admin socket/.test(l.msg) && l.socketPath === socketPath)).toBe(true);
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    expect((await client.status()).name).toBe('alpha');
  });

  it('refuses a socket a running daemon answers on, leaving that daemon serving', async () => {
    await start();
    await expect(start()).rejects.toThrow(`admin socket ${socketPath} is in use by a running daemon; stop it or choose another --admin-socket`);
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    expect((await client.status()).name).toBe('alpha');
  });

  it('refuses a socket any other process answers on', async () => {
    const other = join(dir, 'other.sock');
    await listenPlain(other);
    await expect(start({ socketPath: other })).rejects.toThrow(/is in use by a running daemon/);
  });

  it('refuses a path that is not a socket and leaves it in place', async () => {
    await writeFile(socketPath, 'precious');
    await expect(start()).rejects.toThrow(`admin socket path ${socketPath} exists and is a regular file, not a socket`);
    expect(await readFile(socketPath, 'utf8')).toBe('precious');
  });

  it('refuses a path too long for a Unix socket', async () => {
    await expect(start({ socketPath: join(dir, 'x'.repeat(120)) })).rejects.toThrow(/Unix sockets allow at most/);
  });

  it('close() removes the socket and is idempotent', async () => {
    const server = await start();
    await server.close();
    await expect(lstat(socketPath)).rejects.toMatchObject({ code: 'ENOENT' });
    await server.close();
  });

  it('close() cuts off calls that outlive the grace period, telling watchers NOT_SERVING first', async () => {
    const server = await start({ shutdownGraceMs: 100 });
    const watch = method<{ service: string }, HealthCheckResponse>(healthService, 'Watch');
    const stream = rawClient(socketPath).makeServerStreamRequest(watch.path, watch.requestSerialize, watch.responseDeserialize, { service: '' });
    const cutOff = new Promise<grpc.ServiceError>((resolve) => stream.on('error', resolve));
    const seen: string[] = [];
    stream.on('data', (r: HealthCheckResponse) => seen.push(r.status));
    await once(stream, 'data');
    const closing = server.close();
    expect((await cutOff).code).toBe(grpc.status.CANCELLED);
    await closing;
    expect(seen).toEqual(['SERVING', 'NOT_SERVING']);
    await expect(lstat(socketPath)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('counts every call by method and gRPC code, including health and failures', async () => {
    let fail = false;
    await start({
      status: () => {
        if (fail) throw new Error('boom');
        return NODE_STATUS;
      },
    });
    expect(await requestCount({ method: 'dwcp.admin.v1.Admin/Status', code: 'OK' })).toBe(0);
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    await client.status();
    await client.status();
    await client.members();
    fail = true;
    const err = await client.status().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(AdminClientError);
    expect((err as AdminClientError).message).toBe('Status failed with INTERNAL: Status: boom');
    await unary(rawClient(socketPath), healthCheck, { service: '' });

    expect(await requestCount({ method: 'dwcp.admin.v1.Admin/Status', code: 'OK' })).toBe(2);
    expect(await requestCount({ method: 'dwcp.admin.v1.Admin/Members', code: 'OK' })).toBe(1);
    expect(await requestCount({ method: 'dwcp.admin.v1.Admin/Status', code: 'INTERNAL' })).toBe(1);
    expect(await requestCount({ method: 'grpc.health.v1.Health/Check', code: 'OK' })).toBe(1);
  });

  it('serves a registered sibling service with health and metrics', async () => {
    const protoFile = join(dir, 'kv.proto');
    await writeFile(protoFile, KV_PROTO);
    const pkg = loadSync(protoFile, PROTO_LOADER_OPTIONS);
    await start({ services: [{ name: 'dwcp.admin.v1.Kv', packageDefinition: pkg, implementation: kvImplementation }] });
    const kv = serviceDefinition(pkg, 'dwcp.admin.v1.Kv');
    const client = rawClient(socketPath);
    expect(await unary(client, method<{ key: string }, { value: string }>(kv, 'Get'), { key: 'k' })).toEqual({ value: 'value of k' });
    expect(await unary(client, healthCheck, { service: 'dwcp.admin.v1.Kv' })).toEqual({ status: 'SERVING' });
    expect(await requestCount({ method: 'dwcp.admin.v1.Kv/Get', code: 'OK' })).toBe(1);
  });
});

const KV_PROTO = `syntax = "proto3";
package dwcp.admin.v1;
service Kv { rpc Get(GetRequest) returns (GetResponse); }
message GetRequest { string key = 1; }
message GetResponse { string value = 1; }
`;

const kvImplementation: grpc.UntypedServiceImplementation = {
  Get: ((call, callback) => callback(null, { value: `value of ${call.request.key}` })) as grpc.handleUnaryCall<{ key: string }, { value: string }>,
};

describe('admin client errors', () => {
  it('names a missing socket and how to point at another', async () => {
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    await expect(client.status()).rejects.toThrow(`no daemon socket at ${socketPath} (is dwcpd running? set --socket or DWCP_SOCKET)`);
  });

  it('says the daemon is not running when the socket refuses connections', async () => {
    await leaveStaleSocket(socketPath);
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    await expect(client.members()).rejects.toThrow(`daemon is not running: connection refused at ${socketPath}`);
  });

  it('reports a deadline when something accepts but never answers', async () => {
    await listenPlain(socketPath);
    const client = connectAdmin(socketPath, { timeoutMs: 200 });
    cleanups.push(() => client.close());
    await expect(client.status()).rejects.toThrow(`daemon at ${socketPath} did not answer Status within 200 ms (deadline exceeded)`);
  });

  it.skipIf(process.getuid?.() === 0)('reports permission denied on the socket', async () => {
    const server = await start();
    await chmod(server.socketPath, 0o000);
    const client = connectAdmin(socketPath, { timeoutMs: 5000 });
    cleanups.push(() => client.close());
    await expect(client.status()).rejects.toThrow(`permission denied on admin socket ${socketPath}`);
  });
});
