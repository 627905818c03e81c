/**
 * GCP utilisation through Cloud Monitoring `projects.timeSeries.list`
 * (`@google-cloud/monitoring` over its REST transport, `fallback: 'rest'`,
 * like the Compute clients: one HTTP/JSON wire for both, which the fake
 * server speaks): `compute.googleapis.com/instance/cpu/utilization` aligned
 * to 5-minute means, and `instance/network/received_bytes_count` and
 * `sent_bytes_count` aligned to 5-minute sums.
 *
 * Invariants: one listing per metric for the whole project (not one per
 * VM), pages followed by the client; a point's series is matched to an
 * instance by zone and instance name (the provider's id is `zone/name`);
 * points for instances not asked about are dropped; only samples ending in
 * (sinceMs, untilMs] are returned. Memory is null: GCE publishes none
 * without the Ops agent. Auth is the Compute client's (same credentials, one
 * token cache).
 */
import { MetricServiceClient } from '@google-cloud/monitoring';
import { throwIfAborted, type ApiCallObserver, type CallOptions } from '../provider.ts';
import { byteCount, fraction, type UsageQuery, type UsageSample, type UtilisationSource } from '../utilisation.ts';
import { endpointOptions } from './endpoint.ts';
import { mapGcpError } from './errors.ts';

export const MONITORING_PERIOD_S = 300;
export const CPU_METRIC = 'compute.googleapis.com/instance/cpu/utilization';
export const RECEIVED_METRIC = 'compute.googleapis.com/instance/network/received_bytes_count';
export const SENT_METRIC = 'compute.googleapis.com/instance/network/sent_bytes_count';

export interface MonitoringUsageOptions {
  project: string;
  /** The Compute client's GoogleAuth. */
  auth: unknown;
  /** Endpoint override (config monitoringEndpoint), e.g. http://127.0.0.1:8086; default the public endpoint. */
  endpoint?: string;
  credentialSource: string;
  observer?: ApiCallObserver;
}

interface Point {
  interval?: { startTime?: { seconds?: number | string | Long | null } | null; endTime?: { seconds?: number | string | Long | null } | null } | null;
  value?: { doubleValue?: number | null; int64Value?: number | string | Long | null } | null;
}
type Long = { toNumber(): number };

function seconds(v: number | string | Long | null | undefined): number | null {
  if (v === null || v === undefined) return null;
  const n = typeof v === 'object' ? v.toNumber() : Number(v);
  return Number.isFinite(n) ? n : null;
}

export class MonitoringUsage implements UtilisationSource {
  readonly client: MetricServiceClient;
  readonly #o: MonitoringUsageOptions;

  constructor(options: MonitoringUsageOptions) {
    this.#o = options;
    this.client = new MetricServiceClient({ projectId: options.project, fallback: 'rest', ...endpointOptions(options.endpoint), auth: options.auth as never });
  }

  async usage(query: UsageQuery, options: CallOptions = {}): Promise<UsageSample[]> {
    if (query.instances.length === 0) return [];
    const wanted = new Map(query.instances.map((i) => [i.id, i]));
    const periodMs = MONITORING_PERIOD_S * 1000;
    const startS = Math.floor((query.sinceMs - periodMs) / 1000);
    const endS = Math.ceil(query.untilMs / 1000);
    const [cpu, received, sent] = [
      await this.#list(CPU_METRIC, 'ALIGN_MEAN', startS, endS, options.signal),
      await this.#list(RECEIVED_METRIC, 'ALIGN_SUM', startS, endS, options.signal),
      await this.#list(SENT_METRIC, 'ALIGN_SUM', startS, endS, options.signal),
    ];
    const samples = new Map<string, { instanceId: string; atMs: number; cpu: number | null; in: number | null; out: number | null }>();
    const put = (series: Map<string, Map<number, number>>, field: 'cpu' | 'in' | 'out'): void => {
      for (const [id, points] of series) {
        if (!wanted.has(id)) continue;
        for (const [atMs, value] of points) {
          if (atMs <= query.sinceMs || atMs > query.untilMs) continue;
          const key = `${id}\u0000${atMs}`;
          const s = samples.get(key) ?? { instanceId: id, atMs, cpu: null, in: null, out: null };
          s[field] = value;
          samples.set(key, s);
        }
      }
    };
    put(cpu, 'cpu');
    put(received, 'in');
    put(sent, 'out');
    return [...samples.values()]
      .sort((a, b) => a.instanceId.localeCompare(b.instanceId) || a.atMs - b.atMs)
      .map((s) => ({ instanceId: s.instanceId, atMs: s.atMs, periodMs, cpu: fraction(s.cpu), memory: null, networkInBytes: byteCount(s.in), networkOutBytes: byteCount(s.out) }));
  }

  /** instance id (zone/name) → sample end (epoch ms) → value. */
  async #list(metric: string, aligner: 'ALIGN_MEAN' | 'ALIGN_SUM', startS: number, endS: number, signal: AbortSignal | undefined): Promise<Map<string, Map<number, number>>> {
    throwIfAborted(signal, 'gcp', 'usage');
    const started = performance.now();
    let series;
    try {
      [series] = await this.client.listTimeSeries({
        name: `projects/${this.#o.project}`,
        filter: `metric.type = "${metric}" AND resource.type = "gce_instance"`,
        interval: { startTime: { seconds: startS }, endTime: { seconds: endS } },
        aggregation: { alignmentPeriod: { seconds: MONITORING_PERIOD_S }, perSeriesAligner: aligner },
        view: 'FULL',
      });
      this.#observe(true, undefined, started);
    } catch (error) {
      const mapped = mapGcpError(error, 'usage', this.#o.credentialSource);
      this.#observe(false, mapped.providerCode, started);
      throw mapped;
    }
    const out = new Map<string, Map<number, number>>();
    for (const ts of series) {
      const zone = ts.resource?.labels?.['zone'];
      const name = ts.metric?.labels?.['instance_name'];
      if (!zone || !name) continue;
      const points = out.get(`${zone}/${name}`) ?? new Map<number, number>();
      out.set(`${zone}/${name}`, points);
      for (const p of (ts.points ?? []) as Point[]) {
        const end = seconds(p.interval?.endTime?.seconds);
        const value = p.value?.doubleValue ?? seconds(p.value?.int64Value);
        if (end !== null && value !== null && value !== undefined) points.set(end * 1000, value);
      }
    }
    return out;
  }

  #observe(ok: boolean, code: string | undefined, started: number): void {
    const event = { provider: 'gcp' as const, call: 'timeSeries.list', ok, durationMs: performance.now() - started, attempts: 1, throttledAttempts: 0 };
    this.#o.observer?.(code === undefined ? event : { ...event, code });
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}
