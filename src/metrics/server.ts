/**
 * The daemon's plain-HTTP endpoint for Prometheus and orchestrators:
 * `/metrics` (the registry in text exposition format), `/healthz` (liveness:
 * answers while the process serves) and `/readyz` (readiness, from the
 * daemon's own ready() predicate).
 *
 * Invariants: it serves nothing else (404 for other paths, 405 for methods
 * other than GET and HEAD) and never changes daemon state, so exposing it
 * beyond localhost leaks metrics but grants no control. A failed bind rejects
 * the start with the address and the flag that sets it. close() also drops
 * idle keep-alive connections, so a scraper holding one cannot delay shutdown.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.ts';

export interface MetricsServerOptions {
  /** host:port; IPv6 hosts in brackets (`[::1]:9477`); port 0 picks a free port. */
  listen: string;
  registry: Registry;
  ready: () => boolean;
  logger: Logger;
}

export interface MetricsServer {
  /** The address actually bound, as host:port (IPv6 hosts in brackets). */
  address: string;
  close(): Promise<void>;
}

const FLAG = '--metrics-listen';
const TEXT = 'text/plain; charset=utf-8';
const MAX_CONNECTIONS = 64;
/** Bind failures an operator fixes by changing the flag, in plain words. */
const BIND_ERRORS: Record<string, string> = {
  EADDRINUSE: 'address already in use',
  EADDRNOTAVAIL: 'no such address on this host',
  EACCES: 'permission denied (ports below 1024 need privileges)',
  ENOTFOUND: 'host name does not resolve',
};

/** Splits `host:port` / `[v6]:port`; throws naming the flag on anything else. */
export function parseListenAddress(listen: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || port > 65535) {
    throw new Error(`${FLAG}: ${JSON.stringify(listen)} is not host:port (e.g. 127.0.0.1:9477 or [::1]:9477)`);
  }
  return { host: m[1] ?? m[2]!, port };
}

function formatAddress(a: AddressInfo): string {
  return a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

function reply(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'Content-Type': TEXT, 'Cache-Control': 'no-store', ...headers });
  res.end(body);
}

export async function startMetricsServer(opts: MetricsServerOptions): Promise<MetricsServer> {
  const { host, port } = parseListenAddress(opts.listen);
  const log = opts.logger;

  const routes: Record<string, (res: ServerResponse) => Promise<void> | void> = {
    '/metrics': async (res) => {
      const body = await opts.registry.metrics();
      reply(res, 200, body, { 'Content-Type': opts.registry.contentType });
    },
    '/healthz': (res) => reply(res, 200, 'ok\n'),
    '/readyz': (res) => (opts.ready() ? reply(res, 200, 'ready\n') : reply(res, 503, 'not ready\n')),
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    // Only the path selects a route; a query string (some scrapers add one) is ignored.
    const path = new URL(req.url ?? '/', 'http://metrics.invalid').pathname;
    const route = routes[path];
    if (!route) return reply(res, 404, 'not found\n');
    // HEAD is GET without a body (node:http drops the body); anything else is refused.
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, 'method not allowed\n', { Allow: 'GET, HEAD' });
    await route(res);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      log.error({ err, url: req.url }, 'metrics request failed');
      if (!res.headersSent) reply(res, 500, 'internal error\n');
      else res.destroy();
    });
  });

  // Scrapers and probes are few and quick; a client that trickles its request
  // or opens connections by the hundred is cut off rather than served.
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  server.maxConnections = MAX_CONNECTIONS;

  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      const reason = BIND_ERRORS[err.code ?? ''];
      const why = reason ? `${reason} (${err.code})` : err.message;
      reject(new Error(`cannot serve metrics on ${opts.listen} (set by ${FLAG}): ${why}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen({ host, port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  // After a successful bind, errors are per connection; log rather than crash.
  server.on('error', (err) => log.error({ err }, 'metrics server error'));

  const address = formatAddress(server.address() as AddressInfo);
  log.info({ address }, 'metrics endpoint listening');

  let closing: Promise<void> | undefined;
  return {
    address,
    close() {
      closing ??= new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closing;
    },
  };
}
