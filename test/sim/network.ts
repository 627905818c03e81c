/**
 * The simulated network: every message independently may be dropped,
 * duplicated, or delayed (random delays reorder messages; occasional spikes
 * reorder them a lot). Partitions split nodes into groups that cannot talk;
 * one-way cuts block a single direction (a leader that can send but not hear
 * back). Reachability is checked both when a message is sent and when it
 * would arrive, so a partition also swallows messages already in flight.
 */
import type { NodeId } from '../../src/consensus/raft/types.ts';
import type { Prng } from './prng.ts';

export interface LinkFaults {
  readonly dropRate: number;
  readonly duplicateRate: number;
  readonly minDelayMs: number;
  readonly maxDelayMs: number;
  /** Probability of a long extra delay (strong reordering). */
  readonly spikeRate: number;
  readonly spikeMs: number;
}

export const CALM: LinkFaults = {
  dropRate: 0,
  duplicateRate: 0,
  minDelayMs: 1,
  maxDelayMs: 3,
  spikeRate: 0,
  spikeMs: 0,
};

/** A link-fault regime drawn from `rng`: what both simulators use for their stormy phases. */
export function randomLinkFaults(rng: Prng): LinkFaults {
  return {
    dropRate: rng.pick([0, 0.01, 0.05, 0.1, 0.2]),
    duplicateRate: rng.pick([0, 0.01, 0.05]),
    minDelayMs: 1,
    maxDelayMs: rng.between(2, 20),
    spikeRate: rng.pick([0, 0.01, 0.05]),
    spikeMs: 300,
  };
}

export class SimNetwork {
  readonly #rng: Prng;
  #faults: LinkFaults;
  #group = new Map<NodeId, number>();
  #cuts = new Set<string>();

  constructor(rng: Prng, faults: LinkFaults) {
    this.#rng = rng;
    this.#faults = faults;
  }

  set faults(faults: LinkFaults) {
    this.#faults = faults;
  }

  reachable(from: NodeId, to: NodeId): boolean {
    return (this.#group.get(from) ?? 0) === (this.#group.get(to) ?? 0) && !this.#cuts.has(`${from}>${to}`);
  }

  partition(groups: readonly (readonly NodeId[])[]): void {
    this.#group.clear();
    groups.forEach((ids, g) => {
      for (const id of ids) this.#group.set(id, g);
    });
  }

  cut(from: NodeId, to: NodeId): void {
    this.#cuts.add(`${from}>${to}`);
  }

  heal(): void {
    this.#group.clear();
    this.#cuts.clear();
  }

  get partitioned(): boolean {
    return this.#group.size > 0 || this.#cuts.size > 0;
  }

  /** Delays after which copies of one message arrive; empty when it is lost. */
  deliveries(from: NodeId, to: NodeId): number[] {
    if (!this.reachable(from, to)) return [];
    const f = this.#faults;
    if (this.#rng.chance(f.dropRate)) return [];
    const copies = this.#rng.chance(f.duplicateRate) ? 2 : 1;
    const delays: number[] = [];
    for (let i = 0; i < copies; i++) {
      let delay = this.#rng.between(f.minDelayMs, f.maxDelayMs);
      if (this.#rng.chance(f.spikeRate)) delay += this.#rng.between(1, f.spikeMs);
      delays.push(delay);
    }
    return delays;
  }
}
