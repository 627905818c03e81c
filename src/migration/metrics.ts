/**
 * Migration metrics, counted by the migrator of the source region (the
 * daemon that coordinates a migration sees it end, whoever ended it):
 * dwcp_migrations_total{mode,result}, dwcp_migration_duration_seconds{mode},
 * dwcp_migration_downtime_seconds{mode} and dwcp_migration_bytes_total{mode}.
 *
 * Invariant: label sets are bounded (three modes, three results), and every
 * combination is exported from the first scrape (zeroes), so rate() works.
 */
import { Counter, Histogram, type Registry } from 'prom-client';
import { MIGRATION_MODES, MIGRATION_RESULTS } from '../fleet/migrations.ts';

export interface MigrationMetrics {
  /** Migrations this region coordinated that ended, by mode and result. */
  readonly migrations: Pick<Counter<'mode' | 'result'>, 'inc'>;
  /** From the start command to the end command (their proposers' clocks). */
  readonly duration: Pick<Histogram<'mode'>, 'observe'>;
  /** Completed migrations' downtime as measured (live: the hypervisor's; cold and warm: source stopped to target reported serving). */
  readonly downtime: Pick<Histogram<'mode'>, 'observe'>;
  /** Bytes the transfers moved, on the wire. */
  readonly bytes: Pick<Counter<'mode'>, 'inc'>;
}

export function createMigrationMetrics(registers: Registry[]): MigrationMetrics {
  const migrations = new Counter({ name: 'dwcp_migrations_total', help: 'VM migrations this region coordinated (as their source) that ended, by mode and result.', labelNames: ['mode', 'result'], registers });
  const duration = new Histogram({
    name: 'dwcp_migration_duration_seconds',
    help: 'Time from a migration start to its end, by mode.',
    labelNames: ['mode'],
    buckets: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600],
    registers,
  });
  const downtime = new Histogram({
    name: 'dwcp_migration_downtime_seconds',
    help: 'Downtime of completed migrations as measured, by mode (live: the hypervisor; cold and warm: from the source stopping to the target reported serving).',
    labelNames: ['mode'],
    buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers,
  });
  const bytes = new Counter({ name: 'dwcp_migration_bytes_total', help: 'Bytes moved by migration transfers on the wire, by mode.', labelNames: ['mode'], registers });
  for (const mode of MIGRATION_MODES) {
    bytes.inc({ mode }, 0);
    for (const result of MIGRATION_RESULTS) migrations.inc({ mode, result }, 0);
  }
  return { migrations, duration, downtime, bytes };
}
