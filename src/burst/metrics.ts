/**
 * Burst metrics, created on the daemon's registry by createMetrics
 * (src/metrics/metrics.ts), exported by the node that drives each group (its
 * home region's):
 * - dwcp_burst_replicas{group,role} (gauge): the group's replicas in the
 *   log: `home` (placed), `queued` (waiting for home capacity), `burst`;
 * - dwcp_burst_decisions_total{group,decision,result} (counter): scale-out
 *   and scale-in decisions, `result` = `ok` when carried out in full, else
 *   `failed` (no cloud fit, the log refused).
 *
 * Invariant: label sets are bounded by the burst groups in the log (at most
 * MAX_BURST_GROUPS); a group no longer driven here loses its series.
 */
import { Counter, Gauge, type Registry } from 'prom-client';

export interface BurstMetrics {
  replicas: Gauge<'group' | 'role'>;
  decisions: Counter<'group' | 'decision' | 'result'>;
}

export function createBurstMetrics(registers: Registry[]): BurstMetrics {
  return {
    replicas: new Gauge({ name: 'dwcp_burst_replicas', help: 'Replicas of each burst group this node drives, by role: home (placed), queued (waiting for home capacity), burst (in the clouds).', labelNames: ['group', 'role'], registers }),
    decisions: new Counter({ name: 'dwcp_burst_decisions_total', help: 'Burst decisions this node made, by group, decision (scale-out, scale-in) and result (ok, failed).', labelNames: ['group', 'decision', 'result'], registers }),
  };
}
