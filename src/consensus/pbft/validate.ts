/**
 * Structural checks on a PBFT message or reply before the core or the wire
 * looks at it. Peers may be Byzantine, so a malformed message is never an
 * exception: it is dropped and counted ('malformed') with the field named for
 * logs and tests. Nested
 * messages (certificates, batches) are checked as deeply as the outer one,
 * so the rest of the core may trust field types.
 * Semantics (views, windows, quorums, signatures) are not this module's job.
 */
import type {
  Checkpoint,
  ClientRequest,
  Commit,
  CommitCertificate,
  PbftMessage,
  PrePrepare,
  Prepare,
  PreparedCertificate,
  ViewChange,
} from './types.ts';

import { MAX_CLIENT_BATCH_DEPTH } from './encoding.ts';

type Problem = string | null;

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function counter(v: unknown, field: string): Problem {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? null : `${field} must be a non-negative integer`;
}

function text(v: unknown, field: string): Problem {
  return typeof v === 'string' && v.length > 0 && v.length <= 256 ? null : `${field} must be a non-empty string of at most 256 characters`;
}

function bytes(v: unknown, field: string): Problem {
  return v instanceof Uint8Array ? null : `${field} must be bytes`;
}

function digest(v: unknown, field: string): Problem {
  return typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? null : `${field} must be a hex SHA-256 digest`;
}

function list<T>(v: unknown, field: string, item: (x: unknown, field: string) => Problem): Problem {
  if (!Array.isArray(v)) return `${field} must be a list`;
  for (let i = 0; i < v.length; i++) {
    const p = item(v[i] as T, `${field}[${i}]`);
    if (p !== null) return p;
  }
  return null;
}

function first(...problems: Problem[]): Problem {
  for (const p of problems) if (p !== null) return p;
  return null;
}

function sender(m: Record<string, unknown>, field: string, type: string): Problem {
  if (m['type'] !== type) return `${field}.type must be ${type}`;
  return text(m['from'], `${field}.from`);
}

function signed(m: Record<string, unknown>, field: string, type: string): Problem {
  return first(sender(m, field, type), bytes(m['signature'], `${field}.signature`));
}

/** A relayed request or a reply: its channel authenticates the sender, so it has no signature (types.ts). */
function fromPeer(m: Record<string, unknown>, field: string, type: string): Problem {
  return first(sender(m, field, type), 'signature' in m ? `${field} carries a signature, which a ${type} does not have` : null);
}

function batchPath(v: unknown, field: string): Problem {
  if (Array.isArray(v) && v.length > MAX_CLIENT_BATCH_DEPTH) return `${field} must have at most ${MAX_CLIENT_BATCH_DEPTH} entries`;
  return list(v, field, (x, f) => (x instanceof Uint8Array && x.length === 32 ? null : `${f} must be 32 bytes`));
}

export function clientRequestProblem(v: unknown, field = 'request'): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    text(v['client'], `${field}.client`),
    counter(v['timestamp'], `${field}.timestamp`),
    bytes(v['operation'], `${field}.operation`),
    typeof v['readOnly'] === 'boolean' ? null : `${field}.readOnly must be a boolean`,
    bytes(v['signature'], `${field}.signature`),
    v['path'] === undefined ? null : batchPath(v['path'], `${field}.path`),
  );
}

/** Null if `v` has the shape of a Reply, else the first problem, naming the field (as messageProblem does). */
export function replyProblem(v: unknown, field = 'reply'): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    fromPeer(v, field, 'reply'),
    counter(v['view'], `${field}.view`),
    text(v['client'], `${field}.client`),
    counter(v['timestamp'], `${field}.timestamp`),
    bytes(v['result'], `${field}.result`),
  );
}

function vote(v: unknown, field: string, type: 'prepare' | 'commit'): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    signed(v, field, type),
    counter(v['view'], `${field}.view`),
    counter(v['seq'], `${field}.seq`),
    digest(v['digest'], `${field}.digest`),
  );
}

function prePrepare(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    signed(v, field, 'pre_prepare'),
    counter(v['view'], `${field}.view`),
    counter(v['seq'], `${field}.seq`),
    digest(v['digest'], `${field}.digest`),
    list<ClientRequest>(v['batch'], `${field}.batch`, clientRequestProblem),
  );
}

function checkpoint(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(signed(v, field, 'checkpoint'), counter(v['seq'], `${field}.seq`), digest(v['digest'], `${field}.digest`));
}

function checkpointRef(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(counter(v['seq'], `${field}.seq`), digest(v['digest'], `${field}.digest`));
}

function preparedCertificate(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    prePrepare(v['prePrepare'], `${field}.prePrepare`),
    list<Prepare>(v['prepares'], `${field}.prepares`, (x, f) => vote(x, f, 'prepare')),
  );
}

function commitCertificate(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    prePrepare(v['prePrepare'], `${field}.prePrepare`),
    list<Commit>(v['commits'], `${field}.commits`, (x, f) => vote(x, f, 'commit')),
  );
}

function viewChange(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    signed(v, field, 'view_change'),
    counter(v['view'], `${field}.view`),
    checkpointRef(v['checkpoint'], `${field}.checkpoint`),
    list<Checkpoint>(v['checkpointProof'], `${field}.checkpointProof`, checkpoint),
    list<PreparedCertificate>(v['prepared'], `${field}.prepared`, preparedCertificate),
  );
}

function clientRecord(v: unknown, field: string): Problem {
  if (!isRecord(v)) return `${field} must be an object`;
  return first(
    text(v['client'], `${field}.client`),
    counter(v['timestamp'], `${field}.timestamp`),
    counter(v['seq'], `${field}.seq`),
    bytes(v['result'], `${field}.result`),
  );
}

/** Null if `m` has the shape of a PBFT message, else the first problem found. */
export function messageProblem(m: PbftMessage): Problem {
  const v: unknown = m;
  if (!isRecord(v)) return 'message must be an object';
  const type = v['type'];
  const field = typeof type === 'string' ? type : 'message';
  switch (type) {
    case 'request':
      return first(fromPeer(v, field, type), clientRequestProblem(v['request'], `${field}.request`));
    case 'pre_prepare':
      return prePrepare(v, field);
    case 'prepare':
    case 'commit':
      return vote(v, field, type);
    case 'checkpoint':
      return checkpoint(v, field);
    case 'view_change':
      return viewChange(v, field);
    case 'new_view':
      return first(
        signed(v, field, type),
        counter(v['view'], `${field}.view`),
        list<ViewChange>(v['viewChanges'], `${field}.viewChanges`, viewChange),
        list<PrePrepare>(v['prePrepares'], `${field}.prePrepares`, prePrepare),
      );
    case 'fetch':
    case 'state_request':
      return first(signed(v, field, type), counter(v['seq'], `${field}.seq`));
    case 'new_view_request':
      return first(signed(v, field, type), counter(v['view'], `${field}.view`));
    case 'committed':
      return first(signed(v, field, type), commitCertificate(v['certificate'], `${field}.certificate`));
    case 'state': {
      const state = v['state'];
      return first(
        signed(v, field, type),
        checkpointRef(v['checkpoint'], `${field}.checkpoint`),
        list<Checkpoint>(v['proof'], `${field}.proof`, checkpoint),
        isRecord(state) ? null : `${field}.state must be an object`,
        isRecord(state) ? bytes(state['snapshot'], `${field}.state.snapshot`) : null,
        isRecord(state) ? list(state['clients'], `${field}.state.clients`, clientRecord) : null,
        list<CommitCertificate>(v['entries'], `${field}.entries`, commitCertificate),
      );
    }
    default:
      return `unknown message type ${JSON.stringify(type)}`;
  }
}
