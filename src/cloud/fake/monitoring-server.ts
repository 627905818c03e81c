/**
 * A fake Google Cloud Monitoring endpoint speaking the REST wire the real
 * `@google-cloud/monitoring` client sends with `fallback: 'rest'`:
 * `GET /v3/projects/{project}/timeSeries?filter=…&interval.startTime=…&
 * interval.endTime=…&aggregation.alignmentPeriod=300s&
 * aggregation.perSeriesAligner=ALIGN_MEAN&view=FULL[&pageToken=…]`,
 * answered with `{"timeSeries": [...], "nextPageToken": …}` in Monitoring's
 * JSON shapes (points newest first, RFC 3339 times, int64 as strings),
 * errors as `{"error": {"code", "message", "status"}}`.
 *
 * Served metrics (gce_instance): `compute.googleapis.com/instance/cpu/utilization`
 * (a fraction), `instance/network/received_bytes_count` and
 * `sent_bytes_count` (bytes), for the instances (`zone/name`) its FakeMetrics
 * knows, or the ones `instances()` lists (fake-clouds: the fake Compute's).
 *
 * Invariants: every call needs `Authorization: Bearer …`; the filter must
 * name a metric.type (other clauses on resource.type are accepted, anything
 * else is refused as the real service would for an unknown field); one point
 * per whole alignment period that ended by now; binds loopback.
 */
import type http from 'node:http';
import { listenLoopback, type LoopbackServer } from './http.ts';
import { CallLog, FaultPlan } from './faults.ts';
import { FakeMetrics, type FakeMetricName } from './metrics.ts';

const METRICS: Readonly<Record<string, FakeMetricName>> = {
  'compute.googleapis.com/instance/cpu/utilization': 'cpu',
  'compute.googleapis.com/instance/network/received_bytes_count': 'networkIn',
  'compute.googleapis.com/instance/network/sent_bytes_count': 'networkOut',
};

export type MonitoringFault = 'throttle' | { status: number; code: string; message: string };

interface ApiError {
  status: number;
  code: string;
  message: string;
}

class MonitoringError extends Error {
  readonly spec: ApiError;
  constructor(spec: ApiError) {
    super(spec.message);
    this.spec = spec;
  }
}

function invalid(message: string): MonitoringError {
  return new MonitoringError({ status: 400, code: 'INVALID_ARGUMENT', message });
}

function seconds(text: string | null, field: string): number {
  if (text === null) throw invalid(`${field}: required`);
  const ms = Date.parse(text);
  if (!Number.isFinite(ms)) throw invalid(`${field}: ${JSON.stringify(text)} is not an RFC 3339 time`);
  return Math.floor(ms / 1000);
}

export interface FakeMonitoringOptions {
  project?: string;
  port?: number;
  metrics?: FakeMetrics;
  /** Instances (`zone/name`) that have series besides those set in the metrics, e.g. the fake Compute's running ones. */
  instances?: () => string[];
  pageSize?: number;
  now?: () => number;
}

export class FakeMonitoringServer {
  readonly project: string;
  readonly metrics: FakeMetrics;
  readonly faults = new FaultPlan<MonitoringFault>();
  readonly calls = new CallLog();
  readonly #o: FakeMonitoringOptions;
  #http: LoopbackServer | undefined;

  private constructor(options: FakeMonitoringOptions) {
    this.project = options.project ?? 'dwcp-dev';
    this.metrics = options.metrics ?? new FakeMetrics();
    this.#o = options;
  }

  static async start(options: FakeMonitoringOptions = {}): Promise<FakeMonitoringServer> {
    const fake = new FakeMonitoringServer(options);
    fake.#http = await listenLoopback((req, res) => fake.#handle(req, res), options.port ?? 0);
    return fake;
  }

  get url(): string {
    if (!this.#http) throw new Error('fake Monitoring server not started');
    return this.#http.url;
  }

  async close(): Promise<void> {
    await this.#http?.close();
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://x');
    const action = 'timeSeries.list';
    try {
      if (!req.headers.authorization?.startsWith('Bearer ')) throw new MonitoringError({ status: 401, code: 'UNAUTHENTICATED', message: 'Request is missing required authentication credential.' });
      const match = /^\/v3\/projects\/([^/]+)\/timeSeries$/.exec(url.pathname);
      if (req.method !== 'GET' || match === null) throw new MonitoringError({ status: 404, code: 'NOT_FOUND', message: `${req.method} ${url.pathname} is not served` });
      if (match[1] !== this.project) throw new MonitoringError({ status: 403, code: 'PERMISSION_DENIED', message: `Permission monitoring.timeSeries.list denied (or the resource may not exist) on projects/${match[1]}` });
      const fault = this.faults.take(action);
      if (fault !== undefined) throw new MonitoringError(fault === 'throttle' ? { status: 429, code: 'RESOURCE_EXHAUSTED', message: 'Quota exceeded for quota metric Time series queries' } : fault);
      const body = this.#list(url.searchParams);
      res.writeHead(200, { 'content-type': 'application/json; charset=UTF-8' });
      res.end(JSON.stringify(body));
      this.calls.record({ action, status: 200 });
    } catch (error) {
      const spec = error instanceof MonitoringError ? error.spec : { status: 500, code: 'INTERNAL', message: 'internal error' };
      res.writeHead(spec.status, { 'content-type': 'application/json; charset=UTF-8' });
      res.end(JSON.stringify({ error: { code: spec.status, message: spec.message, status: spec.code } }));
      this.calls.record({ action, status: spec.status, code: spec.code });
    }
  }

  #list(params: URLSearchParams): Record<string, unknown> {
    const filter = params.get('filter') ?? '';
    const type = /metric\.type\s*=\s*"([^"]+)"/.exec(filter)?.[1];
    if (type === undefined) throw invalid('filter: must name a metric.type');
    const rest = filter.replace(/metric\.type\s*=\s*"[^"]+"/, '').replace(/resource\.type\s*=\s*"gce_instance"/, '').replace(/\bAND\b/g, '').trim();
    if (rest !== '') throw invalid(`filter: this fake does not understand ${JSON.stringify(rest)}`);
    const metric = METRICS[type];
    const start = seconds(params.get('interval.startTime'), 'interval.startTime');
    const end = seconds(params.get('interval.endTime'), 'interval.endTime');
    const periodText = params.get('aggregation.alignmentPeriod') ?? '60s';
    const period = Number(/^(\d+)s$/.exec(periodText)?.[1]);
    if (!Number.isInteger(period) || period < 60) throw invalid(`aggregation.alignmentPeriod: ${periodText} (at least 60s)`);
    const aligner = params.get('aggregation.perSeriesAligner') ?? 'ALIGN_NONE';
    const now = (this.#o.now ?? Date.now)();
    const instances = [...new Set([...this.metrics.instances(), ...(this.#o.instances?.() ?? [])])].sort();
    const series = metric === undefined ? [] : instances.flatMap((instance) => {
      const [zone = '', name = ''] = instance.split('/');
      const points: Record<string, unknown>[] = [];
      for (let t = Math.ceil(start / period) * period; t + period <= end && (t + period) * 1000 <= now; t += period) {
        const value = this.metrics.value(instance, metric, (t + period) * 1000);
        if (value === undefined) continue;
        const scaled = metric === 'cpu' ? value : value * (period / 300);
        points.unshift({
          interval: { startTime: new Date(t * 1000).toISOString(), endTime: new Date((t + period) * 1000).toISOString() },
          value: metric === 'cpu' || aligner === 'ALIGN_MEAN' ? { doubleValue: scaled } : { int64Value: String(Math.round(scaled)) },
        });
      }
      if (points.length === 0) return [];
      return [{
        metric: { type, labels: { instance_name: name } },
        resource: { type: 'gce_instance', labels: { project_id: this.project, zone, instance_id: String(hash(instance)) } },
        metricKind: 'GAUGE',
        valueType: metric === 'cpu' || aligner === 'ALIGN_MEAN' ? 'DOUBLE' : 'INT64',
        points,
      }];
    });
    const pageSize = this.#o.pageSize ?? 100;
    const offset = Number(params.get('pageToken') ?? '0');
    if (!Number.isInteger(offset) || offset < 0) throw invalid('pageToken: not a token this server gave');
    const page = series.slice(offset, offset + pageSize);
    return { timeSeries: page, unit: metric === 'cpu' ? '10^2.%' : 'By', ...(offset + pageSize < series.length ? { nextPageToken: String(offset + pageSize) } : {}) };
  }
}

/** A stable numeric instance id for a name, as GCE has one. */
function hash(text: string): number {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
  return h >>> 0;
}
