/**
 * The admin socket's file on disk: what is at the path, and making the path
 * ready to bind.
 *
 * A daemon that crashed leaves its socket file behind; the next one must
 * replace it, but must never take the path from a daemon that is still
 * running, and must never delete something that is not a socket (a typo in
 * --admin-socket pointing at a real file). So the only evidence for "stale" is
 * a connection attempt that the kernel refuses: nobody is listening.
 *
 * The same probe tells dwcpctl why it could not reach the daemon.
 */
import { connect } from 'node:net';
import { lstat, mkdir, unlink } from 'node:fs/promises';
import type { Stats } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from '../log.ts';

export type SocketProbe =
  | { state: 'missing' }
  | { state: 'not-socket'; kind: string }
  | { state: 'live' }
  /** A socket file nobody listens on: left behind by a daemon that stopped without cleaning up. */
  | { state: 'stale' }
  | { state: 'denied' }
  | { state: 'unknown'; code: string };

/** sun_path is 108 bytes on Linux and 104 on the BSDs and macOS, both including the NUL. */
export const MAX_SOCKET_PATH_BYTES = process.platform === 'linux' ? 107 : 103;

const PROBE_TIMEOUT_MS = 1000;

export function describeFileKind(st: Stats): string {
  if (st.isFile()) return 'a regular file';
  if (st.isDirectory()) return 'a directory';
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isCharacterDevice() || st.isBlockDevice()) return 'a device';
  return 'not a socket';
}

function errnoCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/** Looks at the path and, if it is a socket, tries to connect to it. Never modifies anything. */
export async function probeSocket(path: string, timeoutMs = PROBE_TIMEOUT_MS): Promise<SocketProbe> {
  let st: Stats;
  try {
    st = await lstat(path);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR') return { state: 'missing' };
    if (code === 'EACCES') return { state: 'denied' };
    return { state: 'unknown', code };
  }
  if (!st.isSocket()) return { state: 'not-socket', kind: describeFileKind(st) };
  return new Promise<SocketProbe>((resolve) => {
    const sock = connect({ path });
    const done = (result: SocketProbe) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(result);
    };
    // A listener that accepts slowly (full backlog) is still a listener: never call it stale.
    const timer = setTimeout(() => done({ state: 'live' }), timeoutMs);
    sock.once('connect', () => done({ state: 'live' }));
    sock.once('error', (err) => {
      const code = errnoCode(err);
      if (code === 'ECONNREFUSED') done({ state: 'stale' });
      else if (code === 'ENOENT') done({ state: 'missing' });
      else if (code === 'EACCES' || code === 'EPERM') done({ state: 'denied' });
      else done({ state: 'unknown', code });
    });
  });
}

/** Throws unless `path` fits in a sockaddr_un; bind would otherwise fail with an opaque error. */
export function checkSocketPathLength(path: string): void {
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new Error(
      `admin socket path ${path} is ${bytes} bytes; Unix sockets allow at most ${MAX_SOCKET_PATH_BYTES}: choose a shorter --admin-socket`,
    );
  }
}

/**
 * Makes `path` (absolute) ready for bind: its directory exists (created 0700,
 * so nobody else can reach the socket before it is chmodded), and a stale
 * socket from a crashed daemon is removed. Throws a clear error, leaving the
 * path untouched, if a daemon answers there or it is not a socket.
 */
export async function claimSocketPath(path: string, logger: Logger): Promise<void> {
  checkSocketPathLength(path);
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new Error(`cannot create admin socket directory ${dirname(path)}: ${errnoCode(err)}`);
  }
  const probe = await probeSocket(path);
  switch (probe.state) {
    case 'missing':
      return;
    case 'live':
      throw new Error(`admin socket ${path} is in use by a running daemon; stop it or choose another --admin-socket`);
    case 'not-socket':
      throw new Error(`admin socket path ${path} exists and is ${probe.kind}, not a socket; refusing to replace it: remove it or choose another --admin-socket`);
    case 'denied':
      throw new Error(`admin socket ${path} exists but cannot be checked: permission denied`);
    case 'unknown':
      throw new Error(`admin socket ${path} exists but cannot be checked: ${probe.code}`);
    case 'stale':
      try {
        await unlink(path);
      } catch (err) {
        if (errnoCode(err) !== 'ENOENT') throw new Error(`cannot remove stale admin socket ${path}: ${errnoCode(err)}`);
      }
      logger.warn({ socketPath: path }, 'replaced stale admin socket left by a daemon that is no longer running');
      return;
  }
}
