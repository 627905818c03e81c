/**
 * AWS utilisation through CloudWatch `GetMetricData` (`@aws-sdk/client-cloudwatch`,
 * which speaks the AWS JSON 1.0 protocol in query-compatible mode): for each
 * EC2 instance asked about, `AWS/EC2` CPUUtilization (Average), NetworkIn and
 * NetworkOut (Sum) at a 5-minute period, the basic-monitoring resolution.
 *
 * Invariants: at most 500 metric queries per call (CloudWatch's limit), so
 * 166 instances a call, pages followed through NextToken; a datapoint at
 * timestamp T covers [T, T + 5 min) and becomes a sample ending at T + 5 min;
 * only samples ending in (sinceMs, untilMs] are returned. Memory is null:
 * EC2 publishes none without the CloudWatch agent. Errors are mapped like
 * every other AWS call (errors.ts), with the operation `usage`.
 */
import { CloudWatchClient, GetMetricDataCommand, type CloudWatchClientConfig, type MetricDataQuery, type MetricDataResult } from '@aws-sdk/client-cloudwatch';
import { throwIfAborted, type ApiCallObserver, type CallOptions } from '../provider.ts';
import { byteCount, fraction, type UsageQuery, type UsageSample, type UtilisationSource } from '../utilisation.ts';
import { awsErrorCode, mapAwsError } from './errors.ts';

export const CLOUDWATCH_PERIOD_S = 300;
const MAX_QUERIES = 500;
const METRICS = [
  { prefix: 'c', name: 'CPUUtilization', stat: 'Average' },
  { prefix: 'i', name: 'NetworkIn', stat: 'Sum' },
  { prefix: 'o', name: 'NetworkOut', stat: 'Sum' },
] as const;

export interface CloudWatchUsageOptions {
  region: string;
  /** CloudWatch endpoint override (VPC endpoint, test server); default: the region's public endpoint. */
  endpoint?: string;
  /** The EC2 client's (resolved) credential provider, so both clients sign with the same identity. */
  credentials: CloudWatchClientConfig['credentials'];
  credentialSource: string;
  maxAttempts: number;
  observer?: ApiCallObserver;
}

export class CloudWatchUsage implements UtilisationSource {
  readonly client: CloudWatchClient;
  readonly #o: CloudWatchUsageOptions;

  constructor(options: CloudWatchUsageOptions) {
    this.#o = options;
    this.client = new CloudWatchClient({
      region: options.region,
      credentials: options.credentials,
      maxAttempts: options.maxAttempts,
      retryMode: 'standard',
      ...(options.endpoint === undefined ? {} : { endpoint: options.endpoint }),
    });
  }

  async usage(query: UsageQuery, options: CallOptions = {}): Promise<UsageSample[]> {
    const periodMs = CLOUDWATCH_PERIOD_S * 1000;
    const start = new Date(Math.floor((query.sinceMs - periodMs) / periodMs) * periodMs);
    const end = new Date(query.untilMs);
    const perCall = Math.floor(MAX_QUERIES / METRICS.length);
    const byInstance = new Map<string, { cpu: Map<number, number>; in: Map<number, number>; out: Map<number, number> }>();
    for (let offset = 0; offset < query.instances.length; offset += perCall) {
      const batch = query.instances.slice(offset, offset + perCall);
      const queries: MetricDataQuery[] = batch.flatMap((vm, i) =>
        METRICS.map((m) => ({
          Id: `${m.prefix}${i}`,
          ReturnData: true,
          MetricStat: { Metric: { Namespace: 'AWS/EC2', MetricName: m.name, Dimensions: [{ Name: 'InstanceId', Value: vm.id }] }, Period: CLOUDWATCH_PERIOD_S, Stat: m.stat },
        })),
      );
      for (const result of await this.#fetch(queries, start, end, options.signal)) {
        const match = /^([cio])(\d+)$/.exec(result.Id ?? '');
        const vm = match === null ? undefined : batch[Number(match[2])];
        if (match === null || vm === undefined) continue;
        const entry = byInstance.get(vm.id) ?? { cpu: new Map(), in: new Map(), out: new Map() };
        byInstance.set(vm.id, entry);
        const into = match[1] === 'c' ? entry.cpu : match[1] === 'i' ? entry.in : entry.out;
        (result.Timestamps ?? []).forEach((t, k) => {
          const value = result.Values?.[k];
          if (value !== undefined) into.set(t.getTime(), value);
        });
      }
    }
    const out: UsageSample[] = [];
    for (const [instanceId, m] of byInstance) {
      const times = new Set([...m.cpu.keys(), ...m.in.keys(), ...m.out.keys()]);
      for (const t of [...times].sort((a, b) => a - b)) {
        const atMs = t + periodMs;
        if (atMs <= query.sinceMs || atMs > query.untilMs) continue;
        const cpu = m.cpu.get(t);
        out.push({
          instanceId,
          atMs,
          periodMs,
          cpu: cpu === undefined ? null : fraction(cpu / 100),
          memory: null,
          networkInBytes: byteCount(m.in.get(t)),
          networkOutBytes: byteCount(m.out.get(t)),
        });
      }
    }
    return out;
  }

  async #fetch(queries: MetricDataQuery[], start: Date, end: Date, signal: AbortSignal | undefined): Promise<MetricDataResult[]> {
    const results: MetricDataResult[] = [];
    let token: string | undefined;
    do {
      throwIfAborted(signal, 'aws', 'usage');
      const started = performance.now();
      try {
        const page = await this.client.send(
          new GetMetricDataCommand({ MetricDataQueries: queries, StartTime: start, EndTime: end, ScanBy: 'TimestampAscending', NextToken: token }),
          { abortSignal: signal },
        );
        this.#observe(true, undefined, started, page.$metadata.attempts ?? 1);
        results.push(...(page.MetricDataResults ?? []));
        token = page.NextToken;
      } catch (error) {
        this.#observe(false, awsErrorCode(error), started, (error as { $metadata?: { attempts?: number } }).$metadata?.attempts ?? 1);
        throw mapAwsError(error, 'usage', this.#o.credentialSource);
      }
    } while (token !== undefined && token !== '');
    return results;
  }

  #observe(ok: boolean, code: string | undefined, started: number, attempts: number): void {
    const event = { provider: 'aws' as const, call: 'GetMetricData', ok, durationMs: performance.now() - started, attempts, throttledAttempts: 0 };
    this.#o.observer?.(code === undefined ? event : { ...event, code });
  }

  close(): void {
    this.client.destroy();
  }
}
