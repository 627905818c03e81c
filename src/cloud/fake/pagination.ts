/**
 * Pagination and addressing shared by the fake cloud servers.
 *
 * Page tokens are opaque to clients and bound to the listing they came from
 * (a token from another listing, or a forged one, is refused, as the clouds
 * refuse them); a page is a slice of a listing in a stable order. Addresses are
 * handed out in sequence from a prefix, never reused within a server's life.
 */

export function encodePageToken(scope: string, offset: number): string {
  return Buffer.from(JSON.stringify([scope, offset])).toString('base64url');
}

export function decodePageToken(scope: string, token: string): number | undefined {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(token, 'base64url').toString('utf8'));
    if (Array.isArray(parsed) && parsed[0] === scope && Number.isInteger(parsed[1]) && Number(parsed[1]) >= 0) return Number(parsed[1]);
  } catch {
    // fall through: not one of ours
  }
  return undefined;
}

/** The page of `items` starting at `token` (or the start); undefined for a token that is not this listing's. */
export function slicePage<T>(scope: string, items: readonly T[], size: number, token: string | undefined): { page: T[]; nextToken: string | undefined } | undefined {
  const offset = token ? decodePageToken(scope, token) : 0;
  if (offset === undefined) return undefined;
  const next = offset + size;
  return { page: items.slice(offset, next), nextToken: next < items.length ? encodePageToken(scope, next) : undefined };
}

export class AddressPool {
  #next = 10;

  /** The next address under a two-octet prefix, e.g. "172.31" -> 172.31.0.12. */
  take(prefix: string): string {
    const n = this.#next++;
    return `${prefix}.${Math.floor(n / 250) % 250}.${(n % 250) + 2}`;
  }
}
