/**
 * Structural checks on a message before the core looks at it. The transport
 * schema-checks wire frames too; this is the core's own line of defence, so a
 * malformed message is refused with an error naming the peer and field
 * instead of corrupting state. Semantics (terms, log positions) are the
 * core's business, not this module's.
 */
import type { Entry, Membership, Message, NodeId, SnapshotMeta } from './types.ts';
import { RaftInputError } from './types.ts';

function fail(m: Message, field: string, problem: string): never {
  throw new RaftInputError(`raft ${m.type} from ${m.from}: ${field} ${problem}`);
}

function counter(m: Message, field: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) fail(m, field, `must be a non-negative integer, got ${String(value)}`);
}

function membership(m: Message, field: string, value: Membership): void {
  if (!Array.isArray(value.voters) || !Array.isArray(value.learners)) fail(m, field, 'must list voters and learners');
}

function snapshotMeta(m: Message, meta: SnapshotMeta): void {
  counter(m, 'meta.index', meta.index);
  counter(m, 'meta.term', meta.term);
  membership(m, 'meta.membership', meta.membership);
}

function entries(m: Message, prevIndex: number, prevTerm: number, list: readonly Entry[]): void {
  let index = prevIndex;
  let term = prevTerm;
  for (const [i, entry] of list.entries()) {
    index++;
    if (entry.index !== index) fail(m, `entries[${i}].index`, `must be ${index}, got ${entry.index}`);
    counter(m, `entries[${i}].term`, entry.term);
    if (entry.term < term || entry.term > m.term) {
      fail(m, `entries[${i}].term`, `${entry.term} must lie in [${term}, ${m.term}]`);
    }
    if (entry.kind === 'config') membership(m, `entries[${i}].membership`, entry.membership);
    else if (!(entry.data instanceof Uint8Array)) fail(m, `entries[${i}].data`, 'must be bytes');
    term = entry.term;
  }
}

export function validateMessage(m: Message, self: NodeId): void {
  if (m.to !== self) fail(m, 'to', `is ${m.to}, not this node ${self}`);
  if (typeof m.from !== 'string' || m.from === '' || m.from === self) fail(m, 'from', 'must name another node');
  counter(m, 'term', m.term);
  switch (m.type) {
    case 'vote_request':
      counter(m, 'lastIndex', m.lastIndex);
      counter(m, 'lastTerm', m.lastTerm);
      return;
    case 'append':
      counter(m, 'prevIndex', m.prevIndex);
      counter(m, 'prevTerm', m.prevTerm);
      counter(m, 'commit', m.commit);
      entries(m, m.prevIndex, m.prevTerm, m.entries);
      return;
    case 'append_response':
      counter(m, 'index', m.index);
      counter(m, 'hintIndex', m.hintIndex);
      counter(m, 'hintTerm', m.hintTerm);
      return;
    case 'heartbeat':
      counter(m, 'commit', m.commit);
      counter(m, 'readSeq', m.readSeq);
      return;
    case 'heartbeat_response':
      counter(m, 'readSeq', m.readSeq);
      return;
    case 'snapshot_chunk':
      snapshotMeta(m, m.meta);
      counter(m, 'offset', m.offset);
      counter(m, 'totalBytes', m.totalBytes);
      if (!(m.data instanceof Uint8Array)) fail(m, 'data', 'must be bytes');
      return;
    case 'snapshot_response':
      counter(m, 'index', m.index);
      counter(m, 'nextOffset', m.nextOffset);
      return;
    case 'read_index':
      if (typeof m.ctx !== 'string') fail(m, 'ctx', 'must be a string');
      return;
    case 'read_index_response':
      if (typeof m.ctx !== 'string') fail(m, 'ctx', 'must be a string');
      counter(m, 'index', m.index);
      return;
    case 'vote_response':
    case 'timeout_now':
      return;
  }
}
