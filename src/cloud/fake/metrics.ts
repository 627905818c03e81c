/**
 * The metric values the fake CloudWatch and Cloud Monitoring servers serve:
 * per instance (an EC2 instance id, or a GCE `zone/name`) and metric, a
 * constant or a function of time. Tests set them; `npm run fake-clouds`
 * gives every instance of its fake EC2 and Compute a default.
 *
 * Units are the provider-neutral ones of src/cloud/utilisation.ts (CPU as a
 * fraction, network as bytes per 5-minute period); each fake converts to its
 * cloud's units (CloudWatch: percent; Monitoring: a fraction).
 *
 * Invariant: a metric has datapoints for every period that ended at or after
 * its `sinceMs` (default a day before it was set) and at or before the
 * server's clock, as a VM with that much history would; none before.
 */
export const FAKE_METRICS = ['cpu', 'networkIn', 'networkOut'] as const;
export type FakeMetricName = (typeof FAKE_METRICS)[number];
export type FakeMetricValue = number | ((atMs: number) => number);

interface Entry {
  value: FakeMetricValue;
  sinceMs: number;
}

export class FakeMetrics {
  readonly #entries = new Map<string, Entry>();
  /** Instances not set explicitly get this, when given (fake-clouds: every instance has some load). */
  fallback: ((instance: string, metric: FakeMetricName) => number | undefined) | null = null;

  set(instance: string, metric: FakeMetricName, value: FakeMetricValue, sinceMs = Date.now() - 86_400_000): void {
    this.#entries.set(`${instance}\u0000${metric}`, { value, sinceMs });
  }

  clear(): void {
    this.#entries.clear();
  }

  /** The instances with a value set explicitly. */
  instances(): string[] {
    return [...new Set([...this.#entries.keys()].map((k) => k.split('\u0000')[0] ?? ''))];
  }

  /** The value for the period ending at `endMs`, or undefined when there is no datapoint then. */
  value(instance: string, metric: FakeMetricName, endMs: number): number | undefined {
    const entry = this.#entries.get(`${instance}\u0000${metric}`);
    if (entry === undefined) return this.fallback?.(instance, metric);
    if (endMs < entry.sinceMs) return undefined;
    return typeof entry.value === 'function' ? entry.value(endMs) : entry.value;
  }
}
