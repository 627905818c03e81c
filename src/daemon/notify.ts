/**
 * systemd readiness notification (sd_notify) for Type=notify units.
 *
 * Node cannot send on a Unix datagram socket, so the message goes through
 * `systemd-notify`, a child process; the unit therefore sets NotifyAccess=all.
 * systemd-notify waits on a barrier until the manager has read the message, so
 * the state is attributed to this unit before the child exits. Without
 * NOTIFY_SOCKET (not under systemd) every call is a no-op.
 */
import { execFile } from 'node:child_process';
import type { Logger } from '../log.ts';

export type NotifyState = { ready: true; status: string } | { stopping: true } | { status: string };

export function notifyArgs(state: NotifyState): string[] {
  if ('ready' in state) return ['--ready', `--status=${state.status}`];
  if ('stopping' in state) return ['STOPPING=1'];
  return [`--status=${state.status}`];
}

export function notifySystemd(state: NotifyState, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  if (!env.NOTIFY_SOCKET) return Promise.resolve();
  return new Promise((resolve) => {
    execFile('systemd-notify', notifyArgs(state), { env, timeout: 5_000 }, (err, _stdout, stderr) => {
      if (err) log.warn({ err: err.message, stderr: stderr.trim() }, 'systemd-notify failed; is systemd-notify installed?');
      resolve();
    });
  });
}
