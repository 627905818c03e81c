/**
 * The metrics HTTP endpoint over real sockets: routes, status codes, content
 * type, IPv6, bind errors and fast close; and the scraped exposition text is
 * checked by Prometheus' own linter (promtool check metrics), which must
 * report nothing at all.
 */
import { spawnSync } from 'node:child_process';
import { request, Agent } from 'node:http';
import { createServer, type Server } from 'node:net';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import { createMetrics, type DwcpMetrics } from '../../src/metrics/metrics.ts';
import { parseListenAddress, startMetricsServer, type MetricsServer } from '../../src/metrics/server.ts';
import { createLogger } from '../../src/log.ts';
import { lintMetrics, promtool } from '../support/promtool.ts';

const logger = createLogger('silent');
const open: MetricsServer[] = [];

afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

async function start(opts: { listen?: string; ready?: () => boolean; metrics?: DwcpMetrics } = {}) {
  const metrics = opts.metrics ?? createMetrics();
  const server = await startMetricsServer({
    listen: opts.listen ?? '127.0.0.1:0',
    registry: metrics.registry,
    ready: opts.ready ?? (() => true),
    logger,
  });
  open.push(server);
  return { server, metrics, url: (path: string) => `http://${server.address}${path}` };
}

/** Exercises every metric family so the scrape shows each one with samples. */
function bumpAll(m: DwcpMetrics): void {
  m.buildInfo.set({ version: '0.1.0', node: 'dc1', federation: 'acme' }, 1);
  m.membersConfigured.set(2);
  m.membersConnected.set(1);
  m.connectionsRefused.inc({ reason: 'not_member' });
  m.dialAttempts.inc({ peer: 'dc2', result: 'ok' });
  m.dialAttempts.inc({ peer: 'dc3', result: 'error' }, 3);
  m.protocolBytesReceived.inc({ protocol: '/dwcp/hello/1' }, 512);
  m.protocolBytesSent.inc({ protocol: '/dwcp/hello/1' }, 256);
  m.framesRejected.inc({ protocol: '/dwcp/hello/1', reason: 'oversized' });
  m.peerRtt.observe({ peer: 'dc2' }, 0.004);
  m.adminRequests.inc({ method: 'Status', code: 'OK' });
}

async function scrape(): Promise<string> {
  const { metrics, url } = await start();
  bumpAll(metrics);
  const res = await fetch(url('/metrics'));
  expect(res.status).toBe(200);
  return res.text();
}

describe('metrics HTTP endpoint', () => {
  it('serves the registry at /metrics with its content type', async () => {
    const { metrics, url } = await start();
    bumpAll(metrics);
    const res = await fetch(url('/metrics'));
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe(metrics.registry.contentType);
    const text = await res.text();
    expect(text).toContain('dwcp_build_info{version="0.1.0",node="dc1",federation="acme"} 1');
    expect(text).toContain('dwcp_dial_attempts_total{peer="dc3",result="error"} 3');
    expect(text).toContain('dwcp_connections_refused_total{reason="hello_failed"} 0');
    expect(text).toContain('dwcp_peer_rtt_seconds_bucket{le="0.005",peer="dc2"} 1');
    expect(text).toMatch(/^process_resident_memory_bytes \d+/m);
    // A query string does not change the route.
    expect((await fetch(url('/metrics?x=1'))).status).toBe(200);
  });

  it('answers /healthz always and /readyz from ready()', async () => {
    let ready = false;
    const { url } = await start({ ready: () => ready });
    const health = await fetch(url('/healthz'));
    expect([health.status, await health.text()]).toEqual([200, 'ok\n']);
    const notReady = await fetch(url('/readyz'));
    expect([notReady.status, await notReady.text()]).toEqual([503, 'not ready\n']);
    ready = true;
    const isReady = await fetch(url('/readyz'));
    expect([isReady.status, await isReady.text()]).toEqual([200, 'ready\n']);
  });

  it('refuses other paths with 404 and other methods with 405', async () => {
    const { url } = await start();
    for (const path of ['/', '/metricsx', '/healthz/', '/admin']) {
      expect((await fetch(url(path))).status, path).toBe(404);
    }
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const res = await fetch(url('/metrics'), { method });
      expect(res.status, method).toBe(405);
      expect(res.headers.get('allow')).toBe('GET, HEAD');
    }
    const head = await fetch(url('/healthz'), { method: 'HEAD' });
    expect([head.status, await head.text()]).toEqual([200, '']);
  });

  it('binds IPv6 loopback and reports the bracketed address', async (ctx) => {
    let server: MetricsServer;
    try {
      ({ server } = await start({ listen: '[::1]:0' }));
    } catch (err) {
      // Only a host without IPv6 excuses a failure; anything else is a bug.
      const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
      if (code !== 'EADDRNOTAVAIL' && code !== 'EAFNOSUPPORT') throw err;
      return ctx.skip(`no IPv6 loopback on this machine: ${(err as Error).message}`);
    }
    expect(server.address).toMatch(/^\[::1\]:\d+$/);
    expect((await fetch(`http://${server.address}/healthz`)).status).toBe(200);
  });

  it('reports the actual port when given port 0', async () => {
    const { server } = await start();
    const { host, port } = parseListenAddress(server.address);
    expect(host).toBe('127.0.0.1');
    expect(port).toBeGreaterThan(0);
  });

  it('rejects a port in use naming the address and --metrics-listen', async () => {
    const blocker: Server = createServer();
    blocker.listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    try {
      const { port } = blocker.address() as { port: number };
      const listen = `127.0.0.1:${port}`;
      await expect(start({ listen })).rejects.toThrow(
        `cannot serve metrics on ${listen} (set by --metrics-listen): address already in use (EADDRINUSE)`,
      );
    } finally {
      blocker.close();
    }
  });

  it('rejects an address this host does not have', async () => {
    // 192.0.2.0/24 is reserved for documentation, so no machine has it.
    await expect(start({ listen: '192.0.2.1:0' })).rejects.toThrow(
      'cannot serve metrics on 192.0.2.1:0 (set by --metrics-listen): no such address on this host (EADDRNOTAVAIL)',
    );
  });

  it('rejects a malformed listen address naming --metrics-listen', async () => {
    await expect(start({ listen: '127.0.0.1' })).rejects.toThrow('--metrics-listen: "127.0.0.1" is not host:port');
    await expect(start({ listen: '127.0.0.1:70000' })).rejects.toThrow('--metrics-listen: "127.0.0.1:70000" is not host:port');
  });

  it('close() drops idle keep-alive connections and is idempotent', async () => {
    const { server } = await start();
    const agent = new Agent({ keepAlive: true });
    try {
      const { host, port } = parseListenAddress(server.address);
      // Wrapped in an object: resolving with the bare promise would adopt it and wait for the close.
      const idle = await new Promise<{ closed: Promise<unknown> }>((resolve, reject) => {
        const req = request({ host, port, path: '/healthz', agent }, (res) => {
          res.resume();
          res.on('end', () => resolve({ closed: once(req.socket!, 'close') }));
        });
        req.on('error', reject);
        req.end();
      });
      await server.close();
      await idle.closed;
      await server.close();
      await expect(fetch(`http://${server.address}/healthz`)).rejects.toThrow();
    } finally {
      agent.destroy();
    }
  });
});

describe('exposition format', () => {
  it('passes promtool check metrics with no findings', async (ctx) => {
    const verdict = lintMetrics(await scrape(), ctx);
    expect(verdict).toEqual({ status: 0, output: '' });
  });

  it('promtool does flag a misnamed metric (the check can fail)', (ctx) => {
    const verdict = promtool('# HELP dwcp_things_total A gauge named like a counter.\n# TYPE dwcp_things_total gauge\ndwcp_things_total 1\n');
    if (!verdict) return ctx.skip('promtool not installed');
    expect(verdict.status).not.toBe(0);
    expect(verdict.output).toContain('dwcp_things_total');
  });
});
