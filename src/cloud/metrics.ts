/**
 * The cloud layer's Prometheus metrics: provider API calls (by provider,
 * operation and result), their latency, throttled attempts the SDKs retried,
 * the inventory (instances by provider and state), inventory sync failures,
 * and the half-finished-create reconciliation.
 *
 * Invariants: `provider` is the configured provider name (bounded by the
 * config), `operation` the SDK call name (bounded by the code), `result`
 * only ok|error and `state` only the five normalised states, so label
 * cardinality never depends on what a cloud returns. Every state of a
 * provider is exported, zeros included, so a state that empties drops to 0
 * instead of keeping its last value.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { INSTANCE_STATES, type ApiCallEvent, type ApiCallObserver, type Instance } from './provider.ts';
import { createQemuMetrics, type QemuMetrics } from './qemu/metrics.ts';

export interface CloudMetrics {
  apiCalls: Counter<'provider' | 'operation' | 'result'>;
  apiDuration: Histogram<'provider' | 'operation'>;
  throttleRetries: Counter<'provider'>;
  instances: Gauge<'provider' | 'state'>;
  syncErrors: Counter<'provider'>;
  lastSync: Gauge<'provider'>;
  pendingCreates: Gauge<'provider'>;
  reconciledCreates: Counter<'provider'>;
  unreconciledInstances: Gauge<'provider'>;
  /** The qemu provider's own (guests, QMP calls, per-guest use): src/cloud/qemu/metrics.ts. */
  qemu: QemuMetrics;
}

/** Cloud API latencies: tens of milliseconds for a read to minutes for a call the SDK kept retrying. */
const API_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];

export function createCloudMetrics(registers: Registry[]): CloudMetrics {
  return {
    apiCalls: new Counter({
      name: 'dwcp_cloud_api_calls_total',
      help: 'Cloud provider API calls after the SDK retries, by provider, API operation and result (ok|error).',
      labelNames: ['provider', 'operation', 'result'],
      registers,
    }),
    apiDuration: new Histogram({
      name: 'dwcp_cloud_api_duration_seconds',
      help: 'Duration of cloud provider API calls, retries and back-off included.',
      labelNames: ['provider', 'operation'],
      buckets: API_BUCKETS,
      registers,
    }),
    throttleRetries: new Counter({
      name: 'dwcp_cloud_throttle_retries_total',
      help: 'Throttled API attempts (HTTP 429, RequestLimitExceeded) that the SDK retried after backing off.',
      labelNames: ['provider'],
      registers,
    }),
    instances: new Gauge({
      name: 'dwcp_cloud_instances',
      help: 'Instances in the latest inventory, by provider and normalised state.',
      labelNames: ['provider', 'state'],
      registers,
    }),
    syncErrors: new Counter({
      name: 'dwcp_cloud_inventory_sync_errors_total',
      help: 'Inventory syncs that failed (the previous inventory is kept), by provider.',
      labelNames: ['provider'],
      registers,
    }),
    lastSync: new Gauge({
      name: 'dwcp_cloud_inventory_last_sync_timestamp_seconds',
      help: 'Unix time of the last successful inventory sync, by provider.',
      labelNames: ['provider'],
      registers,
    }),
    pendingCreates: new Gauge({
      name: 'dwcp_cloud_pending_creates',
      help: 'Creates in the journal whose VM is not yet recorded and tagged (in flight or half-finished), by provider.',
      labelNames: ['provider'],
      registers,
    }),
    reconciledCreates: new Counter({
      name: 'dwcp_cloud_reconciled_creates_total',
      help: 'Half-finished creates an inventory sync completed (VM found by its create token and tagged), by provider.',
      labelNames: ['provider'],
      registers,
    }),
    unreconciledInstances: new Gauge({
      name: 'dwcp_cloud_unreconciled_instances',
      help: 'VMs carrying a dwcp create token but missing default tags, with no journal entry here to complete them, by provider.',
      labelNames: ['provider'],
      registers,
    }),
    qemu: createQemuMetrics(registers),
  };
}

/** Zero series for a configured provider, so rate() and absence alerts work from the first scrape. */
export function initProviderMetrics(metrics: CloudMetrics, provider: string): void {
  metrics.syncErrors.inc({ provider }, 0);
  metrics.throttleRetries.inc({ provider }, 0);
  metrics.reconciledCreates.inc({ provider }, 0);
  metrics.pendingCreates.set({ provider }, 0);
  metrics.unreconciledInstances.set({ provider }, 0);
  for (const state of INSTANCE_STATES) metrics.instances.set({ provider, state }, 0);
}

export function recordInstances(metrics: CloudMetrics, provider: string, instances: Iterable<Instance>): void {
  const counts = new Map<string, number>();
  for (const i of instances) counts.set(i.state, (counts.get(i.state) ?? 0) + 1);
  for (const state of INSTANCE_STATES) metrics.instances.set({ provider, state }, counts.get(state) ?? 0);
}

/**
 * The observer a provider reports each SDK call to. A failed call's last
 * attempt is not a retry: when every attempt was throttled, one fewer was
 * retried than was throttled.
 */
export function apiCallObserver(metrics: CloudMetrics, provider: string): ApiCallObserver {
  return (event: ApiCallEvent) => {
    metrics.apiCalls.inc({ provider, operation: event.call, result: event.ok ? 'ok' : 'error' });
    metrics.apiDuration.observe({ provider, operation: event.call }, event.durationMs / 1000);
    const lastWasThrottled = !event.ok && event.attempts > 0 && event.throttledAttempts >= event.attempts;
    const retried = event.throttledAttempts - (lastWasThrottled ? 1 : 0);
    if (retried > 0) metrics.throttleRetries.inc({ provider }, retried);
  };
}
