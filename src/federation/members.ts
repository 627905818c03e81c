/**
 * The configured member list, indexed by peer ID: the single source of truth
 * for "who may talk to us". The connection gater, the hello protocol and the
 * mesh all ask it, so a SIGHUP reload (`replace`) takes effect everywhere at
 * once.
 *
 * Invariant: this node itself is never in the directory, and peer IDs and
 * names are unique (the config schema guarantees both).
 */
import type { MemberConfig } from '../config/schema.ts';

export interface MemberChanges {
  added: MemberConfig[];
  removed: MemberConfig[];
  /** Same peer ID, different name, region, trust, provider or addresses. */
  changed: MemberConfig[];
}

export class MemberDirectory {
  #byPeerId = new Map<string, MemberConfig>();

  constructor(members: readonly MemberConfig[]) {
    this.replace(members);
  }

  get(peerId: string): MemberConfig | undefined {
    return this.#byPeerId.get(peerId);
  }

  has(peerId: string): boolean {
    return this.#byPeerId.has(peerId);
  }

  list(): MemberConfig[] {
    return [...this.#byPeerId.values()];
  }

  get size(): number {
    return this.#byPeerId.size;
  }

  /** Swaps in a new member list and says what changed, so callers can dial or hang up. */
  replace(members: readonly MemberConfig[]): MemberChanges {
    const next = new Map(members.map((m) => [m.peerId, m] as const));
    const changes: MemberChanges = { added: [], removed: [], changed: [] };
    for (const [id, m] of next) {
      const old = this.#byPeerId.get(id);
      if (!old) changes.added.push(m);
      else if (JSON.stringify(old) !== JSON.stringify(m)) changes.changed.push(m);
    }
    for (const [id, m] of this.#byPeerId) if (!next.has(id)) changes.removed.push(m);
    this.#byPeerId = next;
    return changes;
  }
}
