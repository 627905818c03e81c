/**
 * DR metrics: dwcp_dr_rto_seconds (a histogram, observed by the DR region's
 * daemon when a failed-over VM it holds is first seen running: from the
 * first failed check of its lost region, the proposer's clock, to then),
 * dwcp_dr_region_failures_total{region} (regions this node saw fail) and
 * dwcp_dr_proposals_total{kind,result} (failover and failback proposals
 * this node made, by the log's answer: ok, lost (the race), refused, error).
 *
 * Backups: dwcp_dr_rpo_seconds{vm} and dwcp_dr_rpo_target_seconds{vm} on the
 * VM's DR region's daemon (where "committed at the DR region" is a fact of
 * its own blob store), dwcp_dr_backups_total{result},
 * dwcp_dr_backup_duration_seconds and dwcp_dr_backup_wire_bytes_total on
 * the daemon taking them.
 *
 * Invariant: label sets are bounded (the configured regions; two kinds, four
 * results; the protected VMs, each removed when it is no longer protected).
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export interface DrMetrics {
  readonly rto: Pick<Histogram, 'observe'>;
  readonly regionFailures: Pick<Counter<'region'>, 'inc'>;
  readonly proposals: Pick<Counter<'kind' | 'result'>, 'inc'>;
  /** Per protected VM whose DR region this is: now minus its newest backup committed here (+Inf: none). */
  readonly rpo: Pick<Gauge<'vm'>, 'set' | 'remove'>;
  /** Its RPO target, for the alert rule (config/prometheus/dwcp-dr.rules.yml). */
  readonly rpoTarget: Pick<Gauge<'vm'>, 'set' | 'remove'>;
  /** Backups this node took and committed at a DR region (ok), or did not (failed). */
  readonly backups: Pick<Counter<'result'>, 'inc'>;
  /** From the start of a backup to its commit at the DR region. */
  readonly backupDuration: Pick<Histogram, 'observe'>;
  /** Bytes a backup's replication put on the wire (deltas against the DR region's previous backup). */
  readonly backupWireBytes: Pick<Counter, 'inc'>;
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
  const rpo = new Gauge({ name: 'dwcp_dr_rpo_seconds', help: 'Per protected VM whose DR region this node is: now minus the time its newest backup committed here was taken (+Inf: none yet).', labelNames: ['vm'], registers });
  const rpoTarget = new Gauge({ name: 'dwcp_dr_rpo_target_seconds', help: 'Per protected VM whose DR region this node is: its RPO target.', labelNames: ['vm'], registers });
  const backups = new Counter({ name: 'dwcp_dr_backups_total', help: 'Backups of protected VMs this node took, by result (ok: committed at the DR region).', labelNames: ['result'], registers });
  for (const result of ['ok', 'failed']) backups.inc({ result }, 0);
  const backupDuration = new Histogram({ name: 'dwcp_dr_backup_duration_seconds', help: 'From the start of a backup (snapshot) to its commit at the DR region.', buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600], registers });
  const backupWireBytes = new Counter({ name: 'dwcp_dr_backup_wire_bytes_total', help: 'Bytes the replication of backups to DR regions put on the wire.', registers });
  return { rto, regionFailures, proposals, rpo, rpoTarget, backups, backupDuration, backupWireBytes };
}
