/**
 * The node's Ed25519 identity: `<data-dir>/node.key`, the libp2p protobuf
 * encoding of the private key, mode 0600, created on first start.
 *
 * Invariants: an existing key is never overwritten; a key file readable by
 * group or others, of the wrong type or malformed stops the daemon with an
 * error naming the file (it is never silently regenerated, which would change
 * the peer ID every other member has configured). The key itself is never
 * logged or printed.
 */
import { link, mkdir, open, readFile, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import type { Ed25519PrivateKey, PeerId } from '@libp2p/interface';
import { DwcpError } from '../errors.ts';

export const KEY_FILE = 'node.key';

export interface Identity {
  privateKey: Ed25519PrivateKey;
  peerId: PeerId;
  keyPath: string;
  created: boolean;
}

export class IdentityError extends DwcpError<'invalid'> {
  constructor(message: string) {
    super('invalid', message);
  }
}

export async function loadIdentity(keyPath: string): Promise<Identity> {
  const st = await stat(keyPath);
  if ((st.mode & 0o077) !== 0) {
    throw new IdentityError(
      `${keyPath}: mode ${(st.mode & 0o777).toString(8)} lets other users read the node key; run chmod 600 ${keyPath}`,
    );
  }
  let key;
  try {
    key = privateKeyFromProtobuf(await readFile(keyPath));
  } catch (err) {
    throw new IdentityError(`${keyPath}: not a libp2p private key (${(err as Error).message})`);
  }
  if (key.type !== 'Ed25519') throw new IdentityError(`${keyPath}: key type ${key.type}, expected Ed25519`);
  return { privateKey: key, peerId: peerIdFromPrivateKey(key), keyPath, created: false };
}

/** Loads `<dataDir>/node.key`, creating it (and the data dir, 0700) if absent. */
export async function loadOrCreateIdentity(dataDir: string): Promise<Identity> {
  const keyPath = join(dataDir, KEY_FILE);
  try {
    return await loadIdentity(keyPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dirname(keyPath), { recursive: true, mode: 0o700 });
  const key = await generateKeyPair('Ed25519');
  // Write to a temporary file, fsync, then rename: a crash never leaves a torn key behind.
  const tmp = `${keyPath}.${process.pid}.tmp`;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(privateKeyToProtobuf(key));
    await fh.sync();
  } finally {
    await fh.close();
  }
  // link() fails if the key appeared meanwhile: a concurrent first start never swaps keys under the other.
  try {
    await link(tmp, keyPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return await loadIdentity(keyPath);
  } finally {
    await unlink(tmp);
  }
  const dir = await open(dirname(keyPath), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
  return { privateKey: key, peerId: peerIdFromPrivateKey(key), keyPath, created: true };
}
