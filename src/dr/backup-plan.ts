/**
 * The pure rules of DR backups: when a protected VM's next backup is due,
 * what its blob key is, which stored backups retention drops, and the RPO
 * now. Time, the VM's protection and what is stored in; decisions out. The
 * backup driver (backup-driver.ts) takes the snapshots and moves the blobs.
 *
 * Invariants:
 * - A backup is due every `backupIntervalMs(rpo)`: half the RPO (a backup
 *   that takes up to half the interval to reach the DR region still keeps
 *   the RPO), never more often than every 5 s nor less than hourly. A failed
 *   attempt is retried after `min(interval, 5 s)`, not a whole interval.
 * - Retention never drops the newest backup committed at the DR region
 *   (nor anything newer, which may be on its way), whatever its age: an old
 *   backup is still better than none to fail over to.
 * - Backup keys sort by the time they were taken (fixed-width decimal).
 */

/** Backups are taken at least this far apart (the RPO's lower bound is 10 s). */
export const BACKUP_MIN_INTERVAL_MS = 5_000;
/** …and at most this far apart, whatever the RPO. */
export const BACKUP_MAX_INTERVAL_MS = 3_600_000;
/** Every DR backup's blob key starts with this, then the VM's name. */
export const BACKUP_KEY_PREFIX = 'dr/backup/';
const TAKEN_AT_DIGITS = 15;

/** How often a VM with this RPO is backed up. */
export function backupIntervalMs(rpoMs: number): number {
  return Math.min(BACKUP_MAX_INTERVAL_MS, Math.max(BACKUP_MIN_INTERVAL_MS, Math.floor(rpoMs / 2)));
}

/** What the driver remembers of one VM's backups on this node. */
export interface BackupMemory {
  /** When the newest backup this node committed at the DR region was taken. */
  readonly committedTakenAt: number | null;
  /** When the last attempt (successful or not) started. */
  readonly attemptAt: number | null;
  readonly lastFailed: boolean;
}

export const NO_BACKUP_MEMORY: BackupMemory = { committedTakenAt: null, attemptAt: null, lastFailed: false };

/** Whether a backup of a VM with this RPO is due now. */
export function backupDue(memory: BackupMemory, rpoMs: number, now: number): boolean {
  const interval = backupIntervalMs(rpoMs);
  if (memory.attemptAt !== null && now < memory.attemptAt + (memory.lastFailed ? Math.min(interval, BACKUP_MIN_INTERVAL_MS) : interval)) return false;
  return memory.committedTakenAt === null || now >= memory.committedTakenAt + interval;
}

/** The blob key of the backup of `vm` taken at `takenAt` from its copy at `generation`. */
export function backupKey(vm: string, takenAt: number, generation: number): string {
  return `${BACKUP_KEY_PREFIX}${vm}/${String(takenAt).padStart(TAKEN_AT_DIGITS, '0')}-g${generation}`;
}

export interface BackupKeyParts {
  readonly vm: string;
  readonly takenAt: number;
  readonly generation: number;
}

const KEY_RE = new RegExp(`^${BACKUP_KEY_PREFIX}([^/]+)/(\\d{${TAKEN_AT_DIGITS}})-g(\\d+)$`);

/** The parts of a backup key; null for any other key. */
export function parseBackupKey(key: string): BackupKeyParts | null {
  const m = KEY_RE.exec(key);
  if (m === null) return null;
  const takenAt = Number(m[2]);
  const generation = Number(m[3]);
  if (!Number.isSafeInteger(takenAt) || !Number.isSafeInteger(generation)) return null;
  return { vm: m[1] as string, takenAt, generation };
}

/**
 * The backup keys retention drops: those taken more than `retentionMs`
 * before now, except the newest committed at the DR region (`committedTakenAt`,
 * null: none known, then the newest stored is kept) and anything newer.
 */
export function retentionDrops(backups: readonly { readonly key: string; readonly takenAt: number }[], now: number, retentionMs: number, committedTakenAt: number | null): string[] {
  if (backups.length === 0) return [];
  const newest = Math.max(...backups.map((b) => b.takenAt));
  const keepFrom = Math.min(committedTakenAt ?? newest, newest);
  return backups.filter((b) => b.takenAt < keepFrom && b.takenAt < now - retentionMs).map((b) => b.key);
}

/** The RPO now, in seconds: now minus the newest backup committed at the DR region; +Inf when there is none. */
export function rpoSeconds(now: number, committedTakenAt: number | null): number {
  return committedTakenAt === null ? Number.POSITIVE_INFINITY : Math.max(0, now - committedTakenAt) / 1000;
}
