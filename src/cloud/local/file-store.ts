/**
 * Where the daemon keeps its `local` provider's simulated VMs: a snapshot
 * (`vms.json`, every record) and a journal of the changes since it
 * (`vms.log`, one JSON line per put or delete), in the data directory, so
 * local VMs survive a restart with the same lifecycle (a VM pending at
 * shutdown settles to running on the next read).
 *
 * Why a journal: rewriting the whole file per change made every create
 * O(records), and one fsync each, serialised: ~15 creates/s at 1 000 VMs.
 * Now a change appends one line, and the changes made while a write is under
 * way go together in the next append and its one fdatasync (group commit).
 *
 * Invariants:
 * - A change is in memory at once, in call order; its promise resolves only
 *   once it is on disk (appended and fdatasync'd, or in a snapshot that was
 *   fsync'd and renamed into place). Appends never overlap.
 * - Every change carries a sequence number, and the snapshot the number of
 *   the last change it holds; replay skips journal lines at or below it. So
 *   a crash between writing a snapshot and emptying the journal, or a
 *   journal line that repeats a snapshot's change, replays to the same state.
 * - The journal is compacted (snapshot written, journal emptied) once it
 *   holds more than COMPACT_MIN_LINES lines and twice as many as there are
 *   records, at open when it holds anything, and after a failed append or
 *   compaction (the journal may end in a partial line then; nothing is
 *   appended until it is empty again): so it stays O(records), and a torn
 *   line is never followed by good ones.
 * - At open, a last line cut short (a crash mid-append: no newline) is a
 *   change never acknowledged and is dropped. An unreadable snapshot, or a
 *   journal line that is not a change, is moved aside (`<name>.corrupt-…`)
 *   and reported by `open`; the store then starts from what came before it
 *   (for an unreadable snapshot: empty, and the journal is moved aside too).
 */
import { mkdir, open, readFile, rename, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { z } from 'zod';
import { INSTANCE_STATES } from '../provider.ts';
import { CoalescedWrites, readStateFile, writeStateFile } from '../state-file.ts';
import { MemoryVmStore, type LocalVmRecord } from './local-provider.ts';

/** Below this many journal lines no compaction runs, however few records there are (tests lower it). */
export const COMPACT_MIN_LINES = 4_096;

const state = z.enum(INSTANCE_STATES);
const RecordSchema = z.object({
  id: z.string(),
  name: z.string(),
  zone: z.string(),
  type: z.string(),
  image: z.string(),
  tags: z.record(z.string(), z.string()),
  spot: z.boolean(),
  userData: z.string().nullable(),
  idempotencyToken: z.string().nullable(),
  state,
  transition: z.object({ to: state, at: z.number() }).nullable(),
  createdAt: z.number(),
  stateSince: z.number(),
  launchTime: z.number().nullable(),
  privateIp: z.string(),
});
/** `seq`: the last change the snapshot holds (absent in files written before the journal: 0). */
const FileSchema = z.object({ version: z.literal(1), seq: z.number().int().nonnegative().default(0), vms: z.array(RecordSchema) });
const PutSchema = z.object({ seq: z.number().int().positive(), put: RecordSchema });
const DeleteSchema = z.object({ seq: z.number().int().positive(), delete: z.string() });
type Change = z.infer<typeof PutSchema> | z.infer<typeof DeleteSchema>;

export interface FileVmStoreProblem {
  file: string;
  movedTo: string;
  reason: string;
}

export class FileVmStore extends MemoryVmStore {
  /** The snapshot; the journal is beside it (`vms.log` for `vms.json`). */
  readonly path: string;
  readonly journalPath: string;
  readonly #journal: FileHandle;
  #seq: number;
  /** Lines appended since the last compaction. */
  #journalLines: number;
  /** Changes not yet handed to a write. */
  #pending: string[] = [];
  /** Group commit: changes made while a write is under way share the next one, which takes #pending when it starts. */
  readonly #writes = new CoalescedWrites(() => this.#write());
  /** An append or a compaction failed (the journal may end in a partial line): the next write compacts instead. */
  #compactNext = false;
  #closed = false;
  readonly #compactMinLines: number;

  private constructor(path: string, journalPath: string, journal: FileHandle, records: LocalVmRecord[], seq: number, compactMinLines: number) {
    super(records);
    this.path = path;
    this.journalPath = journalPath;
    this.#journal = journal;
    this.#seq = seq;
    this.#journalLines = 0;
    this.#compactMinLines = compactMinLines;
  }

  /** `problems` say which file was unreadable, where it was moved and why; the store then starts from what it could read. */
  static async open(path: string, options: { compactMinLines?: number } = {}): Promise<{ store: FileVmStore; problems: FileVmStoreProblem[] }> {
    const journalPath = path.endsWith('.json') ? `${path.slice(0, -'.json'.length)}.log` : `${path}.log`;
    const problems: FileVmStoreProblem[] = [];
    const snapshot = await readStateFile(path, FileSchema);
    const records = new Map<string, LocalVmRecord>();
    let seq = 0;
    let replayed = false;
    if (snapshot.state === 'corrupt') {
      problems.push({ file: path, movedTo: snapshot.movedTo, reason: snapshot.reason });
      // Its changes only make sense on top of the snapshot they followed.
      const moved = await moveAside(journalPath);
      if (moved !== null) problems.push({ file: journalPath, movedTo: moved, reason: `the snapshot ${path} it follows was unreadable` });
    } else {
      if (snapshot.state === 'ok') {
        seq = snapshot.value.seq;
        for (const r of snapshot.value.vms) records.set(r.id, r);
      }
      const replay = await replayJournal(journalPath, seq, records);
      seq = replay.seq;
      replayed = replay.nonEmpty;
      if (replay.problem !== null) problems.push(replay.problem);
    }
    const journal = await openJournal(journalPath);
    const store = new FileVmStore(path, journalPath, journal, [...records.values()], seq, options.compactMinLines ?? COMPACT_MIN_LINES);
    // One snapshot of what was read, so the journal starts empty (no torn line, nothing to replay twice).
    if (replayed || problems.length > 0) await store.#compact();
    return { store, problems };
  }

  override put(record: LocalVmRecord): Promise<void> {
    void super.put(record);
    return this.#change({ seq: ++this.#seq, put: record });
  }

  override delete(id: string): Promise<void> {
    if (!this.has(id)) return this.durable();
    void super.delete(id);
    return this.#change({ seq: ++this.#seq, delete: id });
  }

  /** Resolves once every change so far has been written or has failed to be (reads wait for it; they never fail on it). */
  override durable(): Promise<void> {
    return this.#writes.drain();
  }

  /** Waits for the writes under way and closes the journal; changes after this are refused. */
  override async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.durable();
    await this.#journal.close();
  }

  #change(change: Change): Promise<void> {
    if (this.#closed) return Promise.reject(new Error(`local VM store ${this.path} is closed`));
    // Serialised now: the record may change in memory before the write runs.
    this.#pending.push(`${JSON.stringify(change)}\n`);
    return this.#writes.save();
  }

  /** One write, called when it starts: the changes so far, appended, or a compaction (a snapshot holds them too). */
  #write(): Promise<void> {
    const lines = this.#pending;
    this.#pending = [];
    if (this.#compactNext || this.#journalLines + lines.length > Math.max(this.#compactMinLines, 2 * this.size)) return this.#compact();
    return this.#append(lines);
  }

  async #append(lines: readonly string[]): Promise<void> {
    try {
      await this.#journal.appendFile(lines.join(''));
      await this.#journal.datasync();
      this.#journalLines += lines.length;
    } catch (err) {
      this.#compactNext = true;
      throw err;
    }
  }

  /** A snapshot of every record as they are now (so past every change made so far), then an empty journal. */
  async #compact(): Promise<void> {
    // Read synchronously, before any await: `seq` and the records describe the same moment.
    const text = { version: 1, seq: this.#seq, vms: this.snapshot() };
    // Until the journal is empty again nothing is appended: after a failed append it may end in a partial line, and a good
    // line after that would be lost at replay (which stops at a bad line).
    this.#compactNext = true;
    await writeStateFile(this.path, text);
    // The snapshot holds every journal line (replay skips them by seq): emptying the journal is for its size and any torn end.
    await this.#journal.truncate(0);
    await this.#journal.datasync();
    this.#journalLines = 0;
    this.#compactNext = false;
  }
}

/** Applies the journal's changes after `since` to `records`; a cut-short last line is dropped, a bad line ends the replay and moves the journal aside. */
async function replayJournal(path: string, since: number, records: Map<string, LocalVmRecord>): Promise<{ seq: number; nonEmpty: boolean; problem: FileVmStoreProblem | null }> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { seq: since, nonEmpty: false, problem: null };
    throw err;
  }
  const lines = text.split('\n');
  // The text after the last newline: empty, or an append cut short by a crash (never acknowledged).
  lines.pop();
  let seq = since;
  for (const [i, line] of lines.entries()) {
    const parsed = parseChange(line);
    if (typeof parsed === 'string') {
      const movedTo = await moveAside(path);
      return { seq, nonEmpty: true, problem: { file: path, movedTo: movedTo ?? path, reason: `line ${i + 1}: ${parsed}` } };
    }
    if (parsed.seq <= seq) continue;
    seq = parsed.seq;
    if ('put' in parsed) records.set(parsed.put.id, parsed.put);
    else records.delete(parsed.delete);
  }
  return { seq, nonEmpty: text.length > 0, problem: null };
}

function parseChange(line: string): Change | string {
  let raw: unknown;
  try {
    raw = JSON.parse(line);
  } catch (err) {
    return `not JSON: ${(err as Error).message}`;
  }
  // By its key, so an error names the field at fault rather than "matches neither".
  const isPut = typeof raw === 'object' && raw !== null && 'put' in raw;
  if (!isPut && !(typeof raw === 'object' && raw !== null && 'delete' in raw)) return 'neither a put nor a delete';
  const parsed = isPut ? PutSchema.safeParse(raw) : DeleteSchema.safeParse(raw);
  if (parsed.success) return parsed.data;
  const first = parsed.error.issues[0];
  return first ? `${first.path.join('.') || '(top level)'}: ${first.message}` : 'not a change';
}

async function moveAside(path: string): Promise<string | null> {
  const movedTo = `${path}.corrupt-${new Date().toISOString().replace(/[:.]/g, '-')}`;
  try {
    await rename(path, movedTo);
    return movedTo;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
}

/** Opens (creating, 0600) the journal for appends; a new file's directory entry is fsync'd so it survives a crash. */
async function openJournal(path: string): Promise<FileHandle> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const journal = await open(path, 'a', 0o600);
  try {
    const dir = await open(dirname(path), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  } catch (err) {
    await journal.close();
    throw err;
  }
  return journal;
}
