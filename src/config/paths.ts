/**
 * Default filesystem locations shared by dwcpd and dwcpctl. Kept free of heavy
 * imports (no schema, no libp2p) because dwcpctl loads it on every call.
 *
 * Under systemd the unit's StateDirectory/RuntimeDirectory decide; as root the
 * FHS paths; otherwise per-user XDG locations, so a developer's `npm start`
 * needs no privileges and `dwcpctl` finds the same socket with no flags.
 */
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** The admin socket both dwcpd and dwcpctl use when none is given. */
export function defaultAdminSocket(env: NodeJS.ProcessEnv = process.env): string {
  if (env.DWCP_SOCKET) return env.DWCP_SOCKET;
  if (env.DWCP_ADMIN_SOCKET) return env.DWCP_ADMIN_SOCKET;
  if (isRoot()) return '/run/dwcp/admin.sock';
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'dwcp', 'admin.sock');
  return join(tmpdir(), `dwcp-${process.getuid?.() ?? 'user'}`, 'admin.sock');
}

export function defaultDataDir(env: NodeJS.ProcessEnv = process.env): string {
  // systemd's StateDirectory= sets STATE_DIRECTORY.
  if (env.STATE_DIRECTORY) return env.STATE_DIRECTORY.split(':')[0]!;
  if (isRoot()) return '/var/lib/dwcp';
  return join(env.XDG_STATE_HOME ?? join(homedir(), '.local', 'state'), 'dwcp');
}

