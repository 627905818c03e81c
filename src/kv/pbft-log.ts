/**
 * KvPbftLog: the client path of the federation scope when untrusted members
 * take part, over this member's seat in the PBFT group. A write, and a strong
 * read, is a request ordered through PBFT: the answer is the result f + 1
 * replicas agreed on byte for byte. A serializable read is this member's own
 * replica, unordered (possibly stale, and only as honest as this member).
 *
 * Invariant: every call ends by its deadline, with a result or a DwcpError
 * whose `retryable` says whether the same request may still succeed (the
 * PBFT client bounds the wait; see consensus/pbft/client.ts).
 */
import { PbftClientError, type PbftClient } from '../consensus/pbft/client.ts';
import type { KvCommand, KvResult } from './command.ts';
import { KvResultSchema, encodeKvCommand } from './command.ts';
import type { ConsensusLevel } from './consistency.ts';
import type { KvPbftReplica } from './pbft-replica.ts';
import { readMachine, type KvKeyRead, type KvReadOutcome } from './read.ts';
import { KvServiceError, type KvWriteOutcome } from './service.ts';

/** What the KV path needs of this member's seat in the PBFT group (a PbftGroup<KvPbftReplica>). */
export interface KvPbftSeat {
  readonly client: PbftClient;
  readonly machine: KvPbftReplica;
  /** The primary of the replica's current view, for answers. */
  readonly primary: string;
  /** Replicas of the PBFT group, for status. */
  readonly replicas: number;
}

export class KvPbftLog {
  readonly seat: KvPbftSeat;
  /** This member's name: the client id of its ordered reads. */
  readonly #self: string;

  constructor(seat: KvPbftSeat, self: string) {
    this.seat = seat;
    this.#self = self;
  }

  async write(command: KvCommand, timeoutMs: number): Promise<KvWriteOutcome> {
    const result = await this.#order(encodeKvCommand(command), false, timeoutMs);
    return { result, leader: this.seat.primary };
  }

  async read(req: KvKeyRead & { consistency: ConsensusLevel; timeoutMs: number }): Promise<KvReadOutcome> {
    const { machine } = this.seat.machine;
    if (req.consistency === 'serializable') return readMachine(machine, req, machine.appliedIndex);
    // Read-only requests are ordered like writes (no read-only optimisation; see the PBFT core).
    const op: KvCommand = req.prefix
      ? { clientId: this.#self, seq: 1, op: 'range', prefix: req.key, limit: req.limit, after: '' }
      : { clientId: this.#self, seq: 1, op: 'get', key: req.key };
    const result = await this.#order(encodeKvCommand(op), true, req.timeoutMs);
    if (result.ok && result.op === 'get') return { entries: result.entry === null ? [] : [result.entry], more: false, appliedIndex: result.revision };
    if (result.ok && result.op === 'range') return { entries: [...result.entries], more: result.more, appliedIndex: result.revision };
    throw new KvServiceError('invalid', `federation read answered ${JSON.stringify(result)}`);
  }

  /** Orders a command through PBFT and decodes the result f + 1 replicas agreed on. */
  async #order(operation: Uint8Array, readOnly: boolean, timeoutMs: number): Promise<KvResult> {
    let bytes: Uint8Array;
    try {
      bytes = await this.seat.client.invoke(operation, readOnly, timeoutMs);
    } catch (err) {
      if (!(err instanceof PbftClientError)) throw err;
      // Said once, here, which log failed (and, for a read, what still works); the code and retryability stay PBFT's own.
      const hint = readOnly && err.retryable ? '; retry, or read this member\'s replica with --consistency serializable' : '';
      throw new PbftClientError(err.code, `federation scope (PBFT): ${err.message}${hint}`, { cause: err });
    }
    // f + 1 replicas, at least one honest, sent exactly these bytes: a decoding failure is a bug, not an attack.
    return KvResultSchema.decode(bytes);
  }
}
