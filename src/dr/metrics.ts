/**
 * DR metrics: dwcp_dr_rto_seconds (a histogram, observed by the DR region's
 * daemon when a failed-over VM it holds is first seen running: from the
 * first failed check of its lost region, the proposer's clock, to then),
 * dwcp_dr_region_failures_total{region} (regions this node saw fail) and
 * dwcp_dr_proposals_total{kind,result} (failover and failback proposals
 * this node made, by the log's answer: ok, lost (the race), refused, error).
 *
 * Invariant: label sets are bounded (the configured regions; two kinds, four
 * results).
 */
import { Counter, Histogram, type Registry } from 'prom-client';

export interface DrMetrics {
  readonly rto: Pick<Histogram, 'observe'>;
  readonly regionFailures: Pick<Counter<'region'>, 'inc'>;
  readonly proposals: Pick<Counter<'kind' | 'result'>, 'inc'>;
}

export const DR_PROPOSAL_RESULTS = ['ok', 'lost', 'refused', 'error'] as const;

export function createDrMetrics(registers: Registry[]): DrMetrics {
  const rto = new Histogram({
    name: 'dwcp_dr_rto_seconds',
    help: 'Recovery time of failovers into this region: from the first failed check of the lost region to the VM running here.',
    buckets: [1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800],
    registers,
  });
  const regionFailures = new Counter({ name: 'dwcp_dr_region_failures_total', help: 'Regions this node saw fail (the configured number of consecutive failed checks), by region.', labelNames: ['region'], registers });
  const proposals = new Counter({ name: 'dwcp_dr_proposals_total', help: 'Failover and failback proposals this node made, by the log\'s answer (lost: another proposal won the race).', labelNames: ['kind', 'result'], registers });
  for (const kind of ['failover', 'failback']) for (const result of DR_PROPOSAL_RESULTS) proposals.inc({ kind, result }, 0);
  return { rto, regionFailures, proposals };
}
