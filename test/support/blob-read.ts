import type { BlobStore } from '../../src/blob/store.ts';

/** The current value under `key`, read back whole through the store's own reader. */
export async function readBack(store: BlobStore, key: string): Promise<Buffer> {
  const m = store.currentManifest(key);
  if (m === undefined) throw new Error(`no ${key}`);
  const parts: Uint8Array[] = [];
  for await (const p of store.readValue(m)) parts.push(p);
  return Buffer.concat(parts);
}
