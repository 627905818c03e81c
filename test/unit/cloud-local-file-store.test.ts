/**
 * The local provider's file store (src/cloud/local/file-store.ts): a
 * snapshot plus a journal of changes, group-committed. Real files and
 * fsyncs in a temporary directory: changes survive a reopen, concurrent
 * changes share appends, a torn last line is dropped, a bad line or an
 * unreadable snapshot is moved aside and reported, compaction keeps the
 * journal bounded, and replay after a crash between snapshot and journal
 * truncation gives the same state.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FileVmStore } from '../../src/cloud/local/file-store.ts';
import { LocalProvider, type LocalVmRecord } from '../../src/cloud/local/local-provider.ts';

const dirs: string[] = [];
const stores: FileVmStore[] = [];
afterEach(async () => {
  await Promise.all(stores.splice(0).map((s) => s.close()));
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function paths(): { dir: string; snapshot: string; journal: string } {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-local-store-'));
  dirs.push(dir);
  return { dir, snapshot: join(dir, 'local', 'vms.json'), journal: join(dir, 'local', 'vms.log') };
}

async function open(path: string, options: { compactMinLines?: number } = {}): Promise<Awaited<ReturnType<typeof FileVmStore.open>>> {
  const opened = await FileVmStore.open(path, options);
  stores.push(opened.store);
  return opened;
}

function record(n: number, extra: Partial<LocalVmRecord> = {}): LocalVmRecord {
  return {
    id: `local-${n.toString(16).padStart(12, '0')}`,
    name: `vm${n}`,
    zone: 'local-a',
    type: 'local.small',
    image: 'base',
    tags: { n: String(n) },
    spot: false,
    userData: null,
    idempotencyToken: `t-${n}`,
    state: 'running',
    transition: null,
    createdAt: 1_000 + n,
    stateSince: 1_000 + n,
    launchTime: 1_000 + n,
    privateIp: '10.200.0.2',
    ...extra,
  };
}

const byId = (records: LocalVmRecord[]): LocalVmRecord[] => [...records].sort((a, b) => a.id.localeCompare(b.id));
const lines = (file: string): string[] => readFileSync(file, 'utf8').split('\n').filter((l) => l !== '');

describe('local file store', () => {
  it('makes each change durable before resolving it, shares appends between concurrent changes, and reopens to the same records', async () => {
    const p = paths();
    const { store, problems } = await open(p.snapshot);
    expect(problems).toEqual([]);
    await store.put(record(1));
    // Resolved means written: the line is in the journal now.
    expect(lines(p.journal).map((l) => JSON.parse(l))).toEqual([{ seq: 1, put: record(1) }]);
    expect(statSync(p.journal).mode & 0o777).toBe(0o600);

    // 200 changes at once: every one resolves, all are in the journal, in call order.
    await Promise.all(Array.from({ length: 200 }, (_, i) => store.put(record(i + 2))));
    await store.delete(record(3).id);
    await store.put(record(2, { state: 'stopped' }));
    const journal = lines(p.journal).map((l) => JSON.parse(l) as { seq: number });
    expect(journal.map((l) => l.seq)).toEqual(Array.from({ length: 203 }, (_, i) => i + 1));

    await store.close();
    const again = await open(p.snapshot);
    expect(again.problems).toEqual([]);
    const expected = [record(1), record(2, { state: 'stopped' }), ...Array.from({ length: 198 }, (_, i) => record(i + 4))];
    expect(byId(again.store.load())).toEqual(byId(expected));
    // Opening compacted: everything in the snapshot, the journal empty.
    expect(lines(p.journal)).toEqual([]);
    expect(JSON.parse(readFileSync(p.snapshot, 'utf8'))).toMatchObject({ version: 1, seq: 203 });
  });

  it('drops a last line cut short by a crash (never acknowledged) and keeps every line before it', async () => {
    const p = paths();
    const { store } = await open(p.snapshot);
    await store.put(record(1));
    await store.put(record(2));
    await store.close();
    appendFileSync(p.journal, JSON.stringify({ seq: 3, put: record(3) }).slice(0, 40));
    const again = await open(p.snapshot);
    expect(again.problems).toEqual([]);
    expect(byId(again.store.load())).toEqual([record(1), record(2)]);
    // The next change follows on a clean journal.
    await again.store.put(record(4));
    await again.store.close();
    expect(byId((await open(p.snapshot)).store.load())).toEqual([record(1), record(2), record(4)]);
  });

  it('moves a journal with a bad line aside, reports it, and keeps the changes before it', async () => {
    const p = paths();
    const { store } = await open(p.snapshot);
    await store.put(record(1));
    await store.close();
    appendFileSync(p.journal, `{"seq":2,"put":{"id":"local-x"}}\n${JSON.stringify({ seq: 3, put: record(3) })}\n`);
    const again = await open(p.snapshot);
    expect(again.problems).toEqual([{ file: p.journal, movedTo: expect.stringMatching(/vms\.log\.corrupt-/), reason: expect.stringMatching(/^line 2: put\.name/) }]);
    expect(again.store.load()).toEqual([record(1)]);
    expect(readdirSync(join(p.dir, 'local')).some((f) => f.startsWith('vms.log.corrupt-'))).toBe(true);
  });

  it('moves an unreadable snapshot and its journal aside, reports both, and starts empty', async () => {
    const p = paths();
    const { store } = await open(p.snapshot);
    await store.put(record(1));
    await store.close();
    writeFileSync(p.snapshot, '{"version":1,"vms":[{"id":');
    const again = await open(p.snapshot);
    expect(again.problems.map((x) => x.file)).toEqual([p.snapshot, p.journal]);
    expect(again.problems[0]?.reason).toMatch(/not JSON/);
    expect(again.store.load()).toEqual([]);
  });

  it('reads a snapshot written before the journal existed (no seq)', async () => {
    const p = paths();
    const { store } = await open(p.snapshot);
    await store.close();
    writeFileSync(p.snapshot, JSON.stringify({ version: 1, vms: [record(7)] }));
    const again = await open(p.snapshot);
    expect(again.problems).toEqual([]);
    expect(again.store.load()).toEqual([record(7)]);
    await again.store.put(record(8));
    await again.store.close();
    expect(byId((await open(p.snapshot)).store.load())).toEqual([record(7), record(8)]);
  });

  it('compacts the journal into the snapshot once it outgrows the records, so it stays bounded', async () => {
    const p = paths();
    const { store } = await open(p.snapshot, { compactMinLines: 50 });
    for (let round = 0; round < 20; round++) await Promise.all(Array.from({ length: 10 }, (_, i) => store.put(record(i, { stateSince: round }))));
    // 200 changes to 10 records: the journal never held more than max(50, 2 × 10) lines (+ one batch).
    expect(lines(p.journal).length).toBeLessThanOrEqual(60);
    await store.close();
    expect(byId((await open(p.snapshot)).store.load())).toEqual(Array.from({ length: 10 }, (_, i) => record(i, { stateSince: 19 })));
  });

  it('replays to the same state after a crash between writing a snapshot and emptying the journal (lines at or below its seq are skipped)', async () => {
    const p = paths();
    const { store } = await open(p.snapshot);
    await store.close();
    // The snapshot holds changes up to seq 3, where vm1 was stopped; the journal still has seq 1-3 and a later seq 4.
    writeFileSync(p.snapshot, JSON.stringify({ version: 1, seq: 3, vms: [record(1, { state: 'stopped' }), record(2)] }));
    writeFileSync(
      p.journal,
      [{ seq: 1, put: record(1) }, { seq: 2, put: record(2) }, { seq: 3, put: record(1, { state: 'stopped' }) }, { seq: 4, delete: record(2).id }].map((c) => `${JSON.stringify(c)}\n`).join(''),
    );
    const again = await open(p.snapshot);
    expect(again.store.load()).toEqual([record(1, { state: 'stopped' })]);
    // Numbering goes on after the highest seq seen.
    await again.store.put(record(5));
    await again.store.close();
    expect(JSON.parse(readFileSync(p.snapshot, 'utf8')).seq).toBe(4);
    expect(lines(p.journal).map((l) => JSON.parse(l).seq)).toEqual([5]);
  });

  it('under the provider: 300 concurrent creates are all durable when they return, and a new provider on the same files sees them', async () => {
    const p = paths();
    const { store } = await open(p.snapshot);
    const provider = new LocalProvider({ store, transitionDelayMs: 10, capacity: { vcpus: 1_000, memoryMiB: 1_000 * 1024 } });
    const created = await Promise.all(Array.from({ length: 300 }, (_, i) => provider.create({ name: `vm${i}`, type: 'local.small', image: 'base', idempotencyToken: `t-${i}` })));
    expect(created.every((i) => i.state === 'running')).toBe(true);
    // Each create's record was written before it returned (pending), its settling to running after.
    expect(lines(p.journal).length).toBeGreaterThanOrEqual(300);
    await provider.close();
    const reopened = await open(p.snapshot);
    const again = new LocalProvider({ store: reopened.store });
    const listed = await again.list();
    expect(listed.map((i) => i.id).sort()).toEqual(created.map((i) => i.id).sort());
    expect(listed.every((i) => i.state === 'running')).toBe(true);
  });
});
