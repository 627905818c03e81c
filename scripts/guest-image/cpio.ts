/**
 * A writer of the "newc" cpio format (the one the Linux kernel unpacks as an
 * initramfs), just enough for the test guest: directories, regular files,
 * symbolic links and device nodes.
 *
 * Invariants:
 * - Deterministic: the archive depends only on the entries given, not on the
 *   clock, the user or the order they were added (entries are sorted by
 *   path, parents before children); mtimes, uids and gids are 0 and inode
 *   numbers are assigned in that order.
 * - Every header and every name and body is padded to 4 bytes, and the
 *   archive ends with the `TRAILER!!!` entry, as the kernel's unpacker wants.
 */

export type CpioEntry =
  | { readonly type: 'dir'; readonly path: string; readonly mode?: number }
  | { readonly type: 'file'; readonly path: string; readonly data: Uint8Array; readonly mode?: number }
  | { readonly type: 'symlink'; readonly path: string; readonly target: string }
  | { readonly type: 'char'; readonly path: string; readonly major: number; readonly minor: number; readonly mode?: number };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const MAGIC = '070701';

function hex8(n: number): string {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`cpio: ${n} does not fit a newc header field`);
  return n.toString(16).padStart(8, '0');
}

function pad4(length: number): number {
  return (4 - (length % 4)) % 4;
}

function checkPath(path: string): void {
  if (path === '' || path.startsWith('/') || path.split('/').some((p) => p === '' || p === '.' || p === '..')) {
    throw new Error(`cpio: ${JSON.stringify(path)} is not a relative path without empty, "." or ".." parts`);
  }
}

/** The archive of `entries`, in path order; paths are relative (`bin/busybox`, not `/bin/busybox`). */
export function newcArchive(entries: readonly CpioEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const parts: Buffer[] = [];
  let ino = 1;
  let previous: string | null = null;
  for (const e of sorted) {
    checkPath(e.path);
    if (e.path === previous) throw new Error(`cpio: ${e.path} is given twice`);
    previous = e.path;
    let mode: number;
    let body: Uint8Array = new Uint8Array(0);
    let major = 0;
    let minor = 0;
    switch (e.type) {
      case 'dir':
        mode = S_IFDIR | (e.mode ?? 0o755);
        break;
      case 'file':
        mode = S_IFREG | (e.mode ?? 0o644);
        body = e.data;
        break;
      case 'symlink':
        mode = S_IFLNK | 0o777;
        body = Buffer.from(e.target, 'utf8');
        break;
      case 'char':
        mode = S_IFCHR | (e.mode ?? 0o600);
        major = e.major;
        minor = e.minor;
        break;
    }
    // A device node's numbers go in rdevmajor/rdevminor; devmajor/devminor (the archive's own device) stay 0.
    parts.push(header({ ino: ino++, mode, nlink: e.type === 'dir' ? 2 : 1, size: body.length, rdevMajor: major, rdevMinor: minor, name: e.path }));
    parts.push(Buffer.from(body.buffer, body.byteOffset, body.byteLength), Buffer.alloc(pad4(body.length)));
  }
  parts.push(header({ ino: 0, mode: 0, nlink: 1, size: 0, rdevMajor: 0, rdevMinor: 0, name: 'TRAILER!!!' }));
  return Buffer.concat(parts);
}

/** A newc header and name: ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check. */
function header(f: { ino: number; mode: number; nlink: number; size: number; rdevMajor: number; rdevMinor: number; name: string }): Buffer {
  const nameBytes = Buffer.from(`${f.name}\0`, 'utf8');
  const text = MAGIC + [f.ino, f.mode, 0, 0, f.nlink, 0, f.size, 0, 0, f.rdevMajor, f.rdevMinor, nameBytes.length, 0].map(hex8).join('');
  const head = Buffer.concat([Buffer.from(text, 'ascii'), nameBytes]);
  return Buffer.concat([head, Buffer.alloc(pad4(head.length))]);
}
