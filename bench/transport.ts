/**
 * The transport bench: what the daemon's message path (libp2p TCP + Noise +
 * Yamux, one stream, FramedStream with a bytes schema) costs against raw TCP
 * (node:net) on loopback, as throughput and as 1-byte ping-pong latency.
 *
 * Invariants:
 * - Both sides of both transports live in this one process and thread, so a
 *   ratio compares CPU work per byte (and per round trip) on the same event
 *   loop, not two machines' network stacks.
 * - The libp2p hosts are built like MemberMesh builds the daemon's (same
 *   transport, encrypter (noiseChannel) and muxer with MUXER_STREAM_OPTIONS), minus what is
 *   not on the data path: identify, ping, the member gater and connection
 *   manager limits.
 * - Throughput counts payload bytes only (not length prefixes or TCP/Noise/
 *   Yamux headers), timed from just before the first write until the receiver
 *   has the last payload byte; connection and stream set-up are outside it.
 * - CPU time (process.cpuUsage: both ends and V8's GC threads) is recorded
 *   per run too: per MiB and per round trip it barely moves with other
 *   processes' load, which the MiB/s of a shared machine do.
 * - Each case runs once as a discarded warm-up, then `repeat` times with the
 *   two transports interleaved, so load that drifts during the run hits both.
 */
import net from 'node:net';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Libp2p } from 'libp2p';
import type { Connection, Stream } from '@libp2p/interface';
import { FramedStream } from '../src/net/framing.ts';
import { BytesSchema } from '../src/net/schema.ts';
import { meshLikeHost } from '../test/support/mesh-host.ts';
import { defineBench, formatBytes, intFlag, machineFacts, median, positiveFlag, progress, quantile, renderTable, sizesFlag, significant } from './run.ts';

export interface TransportOptions {
  /** Message sizes in bytes, one throughput case each. */
  sizes: number[];
  /** Payload bytes per throughput run, rounded down to whole messages (at least one). */
  totalBytes: number;
  /** Round trips per latency run. */
  rounds: number;
  /** Measured runs per case; the median is reported. */
  repeat: number;
}

export interface TransportCase {
  size: number;
  messages: number;
  bytes: number;
  tcp_mib_s: number;
  framed_mib_s: number;
  /** framed_mib_s / tcp_mib_s: below 1 means the framed stream is slower. */
  ratio: number;
  tcp_runs_mib_s: number[];
  framed_runs_mib_s: number[];
  /** Median process CPU time per MiB moved (both ends, GC threads included). */
  tcp_cpu_ms_per_mib: number;
  framed_cpu_ms_per_mib: number;
}

export interface TransportLatency {
  rounds: number;
  payload_bytes: number;
  tcp_p50_us: number;
  tcp_p99_us: number;
  framed_p50_us: number;
  framed_p99_us: number;
  /** framed_p50_us / tcp_p50_us: above 1 means the framed stream is slower. */
  ratio_p50: number;
  /** framed_p99_us / tcp_p99_us: above 1 means the framed stream is slower. */
  ratio_p99: number;
  /** Median process CPU time per round trip (both ends, GC threads included). */
  tcp_cpu_us: number;
  framed_cpu_us: number;
}

export interface TransportResult extends ReturnType<typeof machineFacts> {
  bench: 'transport';
  options: { sizes: number[]; total_bytes: number; rounds: number; repeat: number };
  ratios: { throughput: string; latency: string };
  cases: TransportCase[];
  latency: TransportLatency;
  /** Load average again once the bench is done: the bench's own load shows here, outside load shows in both. */
  loadavg_after: number[];
}

/** One way of moving bytes between two endpoints of this process. */
export interface Transport {
  readonly name: 'tcp' | 'framed';
  /** Sends `messages` messages of `size` bytes; resolves to the seconds until the receiver had them all. */
  throughput(size: number, messages: number): Promise<number>;
  /** Resolves to the duration of each of `rounds` sequential round trips of a `PING`, in microseconds. */
  pingPong(rounds: number): Promise<number[]>;
  close(): Promise<void>;
}

const LOOPBACK = '127.0.0.1';
const PING = new Uint8Array([0x70]);
const FILL = 0x5a;

/** Times `rounds` round trips of `roundTrip`, each started only once the previous one is back. */
async function timeRoundTrips(rounds: number, roundTrip: () => Promise<void>): Promise<number[]> {
  const samples: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const start = performance.now();
    await roundTrip();
    samples.push((performance.now() - start) * 1000);
  }
  return samples;
}

/** Resolves to the time the receiver counted `expected` bytes; `count` is fed from its data path. */
function byteCounter(expected: number): { count(n: number): void; done: Promise<number> } {
  const done = Promise.withResolvers<number>();
  let received = 0;
  return {
    count(n) {
      received += n;
      if (received >= expected) done.resolve(performance.now());
    },
    done: done.promise,
  };
}

/** A server and one connected client socket, both with Nagle off as libp2p's TCP transport sets it. */
async function tcpPair(serve: (socket: net.Socket) => void): Promise<{ client: net.Socket; close(): Promise<void> }> {
  const accepted = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (socket) => {
    accepted.add(socket);
    serve(socket);
  });
  server.listen(0, LOOPBACK);
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const client = net.connect({ host: LOOPBACK, port, noDelay: true });
  await once(client, 'connect');
  return {
    client,
    async close() {
      client.destroy();
      for (const socket of accepted) socket.destroy();
      await new Promise<void>((resolve, reject) => server.close((err) => (err ? reject(err) : resolve())));
    },
  };
}

/** The reference: plain node:net sockets, no encryption, muxing or framing (bench/delta.ts measures bulk transfers against it too). */
export function rawTcp(): Transport {
  return {
    name: 'tcp',
    async throughput(size, messages) {
      const counter = byteCounter(size * messages);
      const pair = await tcpPair((socket) => socket.on('data', (chunk: Buffer) => counter.count(chunk.byteLength)));
      try {
        const payload = Buffer.alloc(size, FILL);
        const start = performance.now();
        for (let i = 0; i < messages; i++) {
          if (!pair.client.write(payload)) await once(pair.client, 'drain');
        }
        return ((await counter.done) - start) / 1000;
      } finally {
        await pair.close();
      }
    },
    async pingPong(rounds) {
      const pair = await tcpPair((socket) => socket.on('data', (chunk: Buffer) => socket.write(chunk)));
      try {
        let arrived: (() => void) | undefined;
        pair.client.on('data', () => arrived?.());
        return await timeRoundTrips(rounds, () => {
          const back = new Promise<void>((resolve) => (arrived = resolve));
          pair.client.write(PING);
          return back;
        });
      } finally {
        await pair.close();
      }
    },
    async close() {},
  };
}

const SINK_PROTOCOL = '/dwcp-bench/sink/1.0.0';
const ECHO_PROTOCOL = '/dwcp-bench/echo/1.0.0';

/** A libp2p host built like the mesh's (TCP + Noise + Yamux with MUXER_STREAM_OPTIONS) on loopback; other benches use it too. */
export const benchHost = meshLikeHost;

function framedBytes(stream: Stream, protocol: string, maxFrameBytes: number): FramedStream<Uint8Array, Uint8Array> {
  return new FramedStream(stream, { protocol, maxFrameBytes, inbound: BytesSchema, outbound: BytesSchema });
}

/**
 * Registers `body` as the handler of `protocol` on `server`, opens one framed
 * stream to it over `connection`, runs `client` on that stream, then closes
 * it and waits for the handler to finish before unregistering, so no run
 * overlaps the next.
 */
async function withFramedStream<T>(
  server: Libp2p,
  connection: Connection,
  protocol: string,
  maxFrameBytes: number,
  body: (framed: FramedStream<Uint8Array, Uint8Array>) => Promise<void>,
  client: (framed: FramedStream<Uint8Array, Uint8Array>) => Promise<T>,
): Promise<T> {
  const served = Promise.withResolvers<void>();
  await server.handle(protocol, (raw) => {
    body(framedBytes(raw, protocol, maxFrameBytes)).then(served.resolve, served.reject);
  });
  try {
    const framed = framedBytes(await connection.newStream(protocol), protocol, maxFrameBytes);
    // A handler that fails or stops early must fail the run, not leave the client waiting for bytes.
    const early = served.promise.then(() => {
      throw new Error(`${protocol}: the server side finished before the client did`);
    });
    early.catch(() => {});
    const result = await Promise.race([client(framed), early]).catch((err: unknown) => {
      framed.reset(err instanceof Error ? err : new Error(String(err)));
      throw err;
    });
    await framed.close();
    await served.promise;
    return result;
  } finally {
    await server.unhandle(protocol);
  }
}

/** The subject: two libp2p hosts built like the daemon's, one connection between them, FramedStream on top. */
async function framedLibp2p(): Promise<Transport> {
  const [server, client] = await Promise.all([benchHost(), benchHost()]);
  try {
    const addr = server.getMultiaddrs()[0];
    if (addr === undefined) throw new Error('transport bench: the libp2p server host has no listen address');
    const connection = await client.dial(addr);
    return {
      name: 'framed',
      async throughput(size, messages) {
        const counter = byteCounter(size * messages);
        const sink = async (framed: FramedStream<Uint8Array, Uint8Array>): Promise<void> => {
          for await (const msg of framed) counter.count(msg.byteLength);
          await framed.close();
        };
        return withFramedStream(server, connection, SINK_PROTOCOL, size, sink, async (framed) => {
          const payload = new Uint8Array(size).fill(FILL);
          const start = performance.now();
          for (let i = 0; i < messages; i++) await framed.write(payload);
          return ((await counter.done) - start) / 1000;
        });
      },
      async pingPong(rounds) {
        const echo = async (framed: FramedStream<Uint8Array, Uint8Array>): Promise<void> => {
          for await (const msg of framed) await framed.write(msg);
          await framed.close();
        };
        return withFramedStream(server, connection, ECHO_PROTOCOL, PING.byteLength, echo, (framed) =>
          timeRoundTrips(rounds, async () => {
            await framed.write(PING);
            if ((await framed.read()) === undefined) throw new Error(`${ECHO_PROTOCOL}: the echo stream ended mid-bench`);
          }),
        );
      },
      async close() {
        await Promise.all([client.stop(), server.stop()]);
      },
    };
  } catch (err) {
    await Promise.all([client.stop(), server.stop()]);
    throw err;
  }
}

const MIB = 1024 ** 2;

/** Runs `measure` and also returns the process CPU milliseconds (all threads) it took. */
async function withCpu<T>(measure: () => Promise<T>): Promise<{ value: T; cpuMs: number }> {
  const before = process.cpuUsage();
  const value = await measure();
  const { user, system } = process.cpuUsage(before);
  return { value, cpuMs: (user + system) / 1000 };
}

/** Runs `measure` once per transport as a warm-up, then `repeat` times interleaved; returns the kept results per transport. */
async function interleaved<T>(transports: readonly Transport[], repeat: number, measure: (t: Transport) => Promise<T>): Promise<Map<Transport['name'], T[]>> {
  for (const t of transports) await measure(t);
  const kept = new Map<Transport['name'], T[]>(transports.map((t) => [t.name, []]));
  for (let i = 0; i < repeat; i++) {
    for (const t of transports) kept.get(t.name)?.push(await measure(t));
  }
  return kept;
}

function keptFor<T>(kept: Map<Transport['name'], T[]>, name: Transport['name']): T[] {
  const values = kept.get(name);
  if (values === undefined || values.length === 0) throw new Error(`transport bench: no measurements for ${name}`);
  return values;
}

async function measureCase(transports: readonly Transport[], size: number, opts: TransportOptions): Promise<TransportCase> {
  const messages = Math.max(1, Math.floor(opts.totalBytes / size));
  const bytes = messages * size;
  const kept = await interleaved(transports, opts.repeat, (t) => withCpu(() => t.throughput(size, messages)));
  const mibS = (name: Transport['name']): number[] => keptFor(kept, name).map((run) => bytes / MIB / run.value);
  const cpuPerMib = (name: Transport['name']): number => significant(median(keptFor(kept, name).map((run) => run.cpuMs / (bytes / MIB))), 3);
  const tcpRuns = mibS('tcp');
  const framedRuns = mibS('framed');
  const result: TransportCase = {
    size,
    messages,
    bytes,
    tcp_mib_s: significant(median(tcpRuns)),
    framed_mib_s: significant(median(framedRuns)),
    ratio: significant(median(framedRuns) / median(tcpRuns), 3),
    tcp_runs_mib_s: tcpRuns.map((v) => significant(v)),
    framed_runs_mib_s: framedRuns.map((v) => significant(v)),
    tcp_cpu_ms_per_mib: cpuPerMib('tcp'),
    framed_cpu_ms_per_mib: cpuPerMib('framed'),
  };
  progress(
    `  ${formatBytes(size)}: tcp ${result.tcp_mib_s} MiB/s, framed ${result.framed_mib_s} MiB/s, framed/tcp ${result.ratio}; CPU ms/MiB tcp ${result.tcp_cpu_ms_per_mib}, framed ${result.framed_cpu_ms_per_mib}`,
  );
  return result;
}

async function measureLatency(transports: readonly Transport[], opts: TransportOptions): Promise<TransportLatency> {
  const percentiles = async (t: Transport): Promise<{ p50: number; p99: number; cpuUs: number }> => {
    const { value: samples, cpuMs } = await withCpu(() => t.pingPong(opts.rounds));
    return { p50: quantile(samples, 0.5), p99: quantile(samples, 0.99), cpuUs: (cpuMs * 1000) / opts.rounds };
  };
  const kept = await interleaved(transports, opts.repeat, percentiles);
  const medianOf = (name: Transport['name'], p: 'p50' | 'p99' | 'cpuUs'): number => median(keptFor(kept, name).map((run) => run[p]));
  const tcpP50 = medianOf('tcp', 'p50');
  const tcpP99 = medianOf('tcp', 'p99');
  const framedP50 = medianOf('framed', 'p50');
  const framedP99 = medianOf('framed', 'p99');
  return {
    rounds: opts.rounds,
    payload_bytes: PING.byteLength,
    tcp_p50_us: significant(tcpP50),
    tcp_p99_us: significant(tcpP99),
    framed_p50_us: significant(framedP50),
    framed_p99_us: significant(framedP99),
    ratio_p50: significant(framedP50 / tcpP50, 3),
    ratio_p99: significant(framedP99 / tcpP99, 3),
    tcp_cpu_us: significant(medianOf('tcp', 'cpuUs'), 3),
    framed_cpu_us: significant(medianOf('framed', 'cpuUs'), 3),
  };
}

function report(result: TransportResult): string {
  const throughput = renderTable(
    ['message', 'tcp MiB/s', 'framed MiB/s', 'framed/tcp (<1 = slower)', 'CPU ms/MiB tcp', 'CPU ms/MiB framed'],
    result.cases.map((c) => [formatBytes(c.size), String(c.tcp_mib_s), String(c.framed_mib_s), String(c.ratio), String(c.tcp_cpu_ms_per_mib), String(c.framed_cpu_ms_per_mib)]),
  );
  const l = result.latency;
  const latency = renderTable(
    ['ping-pong', 'tcp µs', 'framed µs', 'framed/tcp (>1 = slower)'],
    [
      ['p50', String(l.tcp_p50_us), String(l.framed_p50_us), String(l.ratio_p50)],
      ['p99', String(l.tcp_p99_us), String(l.framed_p99_us), String(l.ratio_p99)],
      ['CPU µs per round trip', String(l.tcp_cpu_us), String(l.framed_cpu_us), ''],
    ],
  );
  const { options: o } = result;
  return [
    `transport: framed libp2p stream vs raw TCP, loopback, ${result.node}, ${result.cpus} cpus, load ${result.loadavg.join(' ')} -> ${result.loadavg_after.join(' ')}`,
    `throughput: ${formatBytes(o.total_bytes)} per run, median of ${o.repeat} after a warm-up`,
    throughput,
    '',
    `latency: ${l.payload_bytes}-byte ping-pong, ${o.rounds} rounds per run, median of ${o.repeat} runs' percentiles`,
    latency,
  ].join('\n');
}

export async function runTransportBench(opts: TransportOptions): Promise<TransportResult> {
  const facts = machineFacts();
  const transports = [rawTcp(), await framedLibp2p()];
  try {
    const cases: TransportCase[] = [];
    progress(`transport: throughput, ${formatBytes(opts.totalBytes)} per run, warm-up + ${opts.repeat} runs per case`);
    for (const size of opts.sizes) cases.push(await measureCase(transports, size, opts));
    progress(`transport: latency, ${opts.rounds} round trips per run`);
    const latency = await measureLatency(transports, opts);
    const result: TransportResult = {
      bench: 'transport',
      ...facts,
      options: { sizes: opts.sizes, total_bytes: opts.totalBytes, rounds: opts.rounds, repeat: opts.repeat },
      ratios: {
        throughput: 'cases[].ratio = framed_mib_s / tcp_mib_s; below 1 means the framed libp2p stream is slower',
        latency: 'latency.ratio_pNN = framed_pNN_us / tcp_pNN_us; above 1 means the framed libp2p stream is slower',
      },
      cases,
      latency,
      loadavg_after: machineFacts().loadavg,
    };
    progress(`\n${report(result)}`);
    return result;
  } finally {
    await Promise.all(transports.map((t) => t.close()));
  }
}

export const transportBench = defineBench<TransportOptions>({
  flags: {
    sizes: { default: '1k,64k,1m', description: 'message sizes, comma-separated; k = KiB, m = MiB' },
    'total-mb': { default: '256', description: 'payload MiB per throughput run' },
    rounds: { default: '2000', description: 'ping-pong round trips per latency run' },
    repeat: { default: '3', description: 'measured runs per case after one warm-up; the median is reported' },
  },
  parse: (flags) => ({
    sizes: sizesFlag(flags, 'sizes'),
    totalBytes: Math.floor(positiveFlag(flags, 'total-mb') * MIB),
    rounds: intFlag(flags, 'rounds'),
    repeat: intFlag(flags, 'repeat'),
  }),
  run: runTransportBench,
});
