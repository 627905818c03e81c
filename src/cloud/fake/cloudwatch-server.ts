/**
 * A fake Amazon CloudWatch endpoint speaking the wire protocol the real
 * `@aws-sdk/client-cloudwatch` sends: AWS JSON 1.0 in query-compatible mode
 * (`POST /`, `Content-Type: application/x-amz-json-1.0`,
 * `X-Amz-Target: GraniteServiceVersion20100801.<Action>`, timestamps as
 * epoch seconds), errors as `{"__type": …, "message": …}` with the
 * `x-amzn-query-error` header. Served: GetMetricData for the `AWS/EC2`
 * metrics CPUUtilization (percent), NetworkIn and NetworkOut (bytes), with
 * the statistics Average, Sum, Maximum and Minimum (all one datapoint per
 * period here), MetricDataQueries pages of at most `pageSize` results.
 *
 * Invariants: a SigV4 Authorization header scoped to this region and the
 * `monitoring` service is required (signatures are not checked); values come
 * from a FakeMetrics (metrics.ts), one datapoint per whole period that ended
 * by now; injected faults are answered before anything else; binds loopback.
 */
import type http from 'node:http';
import { randomUUID } from 'node:crypto';
import { BodyTooLargeError, listenLoopback, readBody, type LoopbackServer } from './http.ts';
import { CallLog, FaultPlan } from './faults.ts';
import { FakeMetrics, type FakeMetricName } from './metrics.ts';

const TARGET_PREFIX = 'GraniteServiceVersion20100801.';
const METRIC_NAMES: Readonly<Record<string, FakeMetricName>> = { CPUUtilization: 'cpu', NetworkIn: 'networkIn', NetworkOut: 'networkOut' };
const STATS = new Set(['Average', 'Sum', 'Maximum', 'Minimum', 'SampleCount']);

export type CloudWatchFault = 'throttle' | { code: string; message: string; status: number };

interface ApiError {
  code: string;
  message: string;
  status: number;
}

class CloudWatchError extends Error {
  readonly spec: ApiError;
  constructor(spec: ApiError) {
    super(spec.message);
    this.spec = spec;
  }
}

function invalid(message: string): CloudWatchError {
  return new CloudWatchError({ code: 'InvalidParameterValue', message, status: 400 });
}

interface Query {
  Id?: unknown;
  ReturnData?: unknown;
  MetricStat?: { Metric?: { Namespace?: unknown; MetricName?: unknown; Dimensions?: { Name?: unknown; Value?: unknown }[] }; Period?: unknown; Stat?: unknown };
}

export interface FakeCloudWatchOptions {
  region?: string;
  port?: number;
  metrics?: FakeMetrics;
  /** Results per page (the real service pages by datapoints; this pages by result). Default 100. */
  pageSize?: number;
  now?: () => number;
}

export class FakeCloudWatchServer {
  readonly region: string;
  readonly metrics: FakeMetrics;
  readonly faults = new FaultPlan<CloudWatchFault>();
  readonly calls = new CallLog();
  readonly #pageSize: number;
  readonly #now: () => number;
  #http: LoopbackServer | undefined;

  private constructor(options: FakeCloudWatchOptions) {
    this.region = options.region ?? 'us-east-1';
    this.metrics = options.metrics ?? new FakeMetrics();
    this.#pageSize = options.pageSize ?? 100;
    this.#now = options.now ?? Date.now;
  }

  static async start(options: FakeCloudWatchOptions = {}): Promise<FakeCloudWatchServer> {
    const fake = new FakeCloudWatchServer(options);
    fake.#http = await listenLoopback((req, res) => void fake.#handle(req, res), options.port ?? 0);
    return fake;
  }

  get url(): string {
    if (!this.#http) throw new Error('fake CloudWatch server not started');
    return this.#http.url;
  }

  async close(): Promise<void> {
    await this.#http?.close();
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const target = String(req.headers['x-amz-target'] ?? '');
    const action = target.startsWith(TARGET_PREFIX) ? target.slice(TARGET_PREFIX.length) : 'unknown';
    try {
      const raw = await readBody(req);
      this.#authorize(req);
      if (req.method !== 'POST' || !String(req.headers['content-type'] ?? '').startsWith('application/x-amz-json-1.0')) {
        throw new CloudWatchError({ code: 'InvalidAction', message: 'expected POST with Content-Type application/x-amz-json-1.0', status: 400 });
      }
      const fault = this.faults.take(action);
      if (fault !== undefined) throw new CloudWatchError(fault === 'throttle' ? { code: 'Throttling', message: 'Rate exceeded', status: 400 } : fault);
      if (action !== 'GetMetricData') throw new CloudWatchError({ code: 'InvalidAction', message: `The action ${action} is not valid for this web service.`, status: 400 });
      let body: unknown;
      try {
        body = JSON.parse(raw);
      } catch {
        throw new CloudWatchError({ code: 'SerializationException', message: 'the body is not JSON', status: 400 });
      }
      const answer = this.#getMetricData(body as Record<string, unknown>);
      res.writeHead(200, { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-requestid': randomUUID() });
      res.end(JSON.stringify(answer));
      this.calls.record({ action, status: 200 });
    } catch (error) {
      const spec: ApiError =
        error instanceof CloudWatchError
          ? error.spec
          : error instanceof BodyTooLargeError
            ? { code: 'RequestEntityTooLarge', message: error.message, status: 413 }
            : { code: 'InternalFailure', message: 'internal error', status: 500 };
      res.writeHead(spec.status, { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-query-error': `${spec.code};Sender`, 'x-amzn-requestid': randomUUID() });
      res.end(JSON.stringify({ __type: `com.amazonaws.cloudwatch#${spec.code}`, message: spec.message }));
      this.calls.record({ action, status: spec.status, code: spec.code });
    }
  }

  #authorize(req: http.IncomingMessage): void {
    const header = req.headers.authorization;
    if (!header) throw new CloudWatchError({ code: 'MissingAuthenticationToken', message: 'Request is missing Authentication Token', status: 403 });
    const match = /^AWS4-HMAC-SHA256 Credential=[^/]+\/\d{8}\/([^/]+)\/([^/]+)\/aws4_request,/.exec(header);
    if (!match || match[2] !== 'monitoring') throw new CloudWatchError({ code: 'IncompleteSignature', message: 'the credential scope must name the monitoring service', status: 403 });
    if (match[1] !== this.region) throw new CloudWatchError({ code: 'InvalidClientTokenId', message: `Credential should be scoped to a valid region, not '${match[1]}'.`, status: 403 });
  }

  #getMetricData(body: Record<string, unknown>): Record<string, unknown> {
    const queries = body['MetricDataQueries'];
    if (!Array.isArray(queries) || queries.length === 0 || queries.length > 500) throw invalid('MetricDataQueries: 1 to 500 queries are required');
    const start = body['StartTime'];
    const end = body['EndTime'];
    if (typeof start !== 'number' || typeof end !== 'number' || !(start < end)) throw invalid('StartTime and EndTime: epoch seconds, StartTime before EndTime');
    const offset = typeof body['NextToken'] === 'string' ? Number(body['NextToken']) : 0;
    if (!Number.isInteger(offset) || offset < 0 || offset >= queries.length) throw invalid('NextToken: not a token this server gave');
    const descending = body['ScanBy'] !== 'TimestampAscending';
    const now = this.#now();
    const results = (queries as Query[]).slice(offset, offset + this.#pageSize).map((q, k) => {
      const id = q.Id;
      if (typeof id !== 'string' || !/^[a-z][A-Za-z0-9_]{0,254}$/.test(id)) throw invalid(`MetricDataQueries[${offset + k}].Id: must start with a lowercase letter`);
      const stat = q.MetricStat;
      const period = stat?.Period;
      if (typeof period !== 'number' || period < 1 || (period >= 60 && period % 60 !== 0)) throw invalid(`MetricDataQueries[${offset + k}].MetricStat.Period: 1, 5, 10, 30 or a multiple of 60`);
      if (typeof stat?.Stat !== 'string' || !STATS.has(stat.Stat)) throw invalid(`MetricDataQueries[${offset + k}].MetricStat.Stat: not a statistic`);
      const metric = METRIC_NAMES[String(stat.Metric?.MetricName)];
      const instance = stat.Metric?.Dimensions?.find((d) => d.Name === 'InstanceId')?.Value;
      const timestamps: number[] = [];
      const values: number[] = [];
      if (stat.Metric?.Namespace === 'AWS/EC2' && metric !== undefined && typeof instance === 'string') {
        const first = Math.ceil(start / period) * period;
        for (let t = first; t + period <= end && (t + period) * 1000 <= now; t += period) {
          const value = this.metrics.value(instance, metric, (t + period) * 1000);
          if (value === undefined) continue;
          timestamps.push(t);
          values.push(metric === 'cpu' ? value * 100 : value * (period / 300));
        }
      }
      if (descending) {
        timestamps.reverse();
        values.reverse();
      }
      return { Id: id, Label: String(stat.Metric?.MetricName ?? ''), Timestamps: timestamps, Values: values, StatusCode: 'Complete' };
    });
    const next = offset + this.#pageSize < queries.length ? String(offset + this.#pageSize) : undefined;
    return { MetricDataResults: results, Messages: [], ...(next === undefined ? {} : { NextToken: next }) };
  }
}
