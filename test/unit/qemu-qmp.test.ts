/**
 * The QMP client against a real QEMU (`-M none`: a QMP monitor with no guest,
 * up in a fraction of a second) for the protocol as QEMU speaks it, and
 * against a scripted Unix-socket server for what QEMU does not do on demand:
 * a silent socket, a wrong greeting, a line past the limit, a command left
 * unanswered, a connection dropped mid-call.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { QmpClient, QmpError, type QmpEvent } from '../../src/cloud/qemu/qmp.ts';
import { waitForPath } from '../support/qemu.ts';

let dir: string;
let qemu: ChildProcess;
const socketPath = () => join(dir, 'qmp.sock');

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-qmp-'));
  qemu = spawn('qemu-system-x86_64', ['-M', 'none', '-nodefaults', '-display', 'none', '-S', '-chardev', `socket,id=qmp,path=${socketPath()},server=on,wait=off`, '-mon', 'chardev=qmp,mode=control'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  await waitForPath(socketPath(), 20_000);
});

afterAll(async () => {
  if (qemu.exitCode === null && qemu.signalCode === null) {
    qemu.kill('SIGKILL');
    await once(qemu, 'exit');
  }
  await rm(dir, { recursive: true, force: true });
});

/** A Unix socket server that runs `script` on each connection. */
async function fakeQemu(script: (socket: Socket) => void): Promise<{ path: string; server: Server }> {
  const path = join(dir, `fake-${Math.random().toString(16).slice(2, 8)}.sock`);
  const server = createServer(script);
  server.listen(path);
  await once(server, 'listening');
  return { path, server };
}

const GREETING = `${JSON.stringify({ QMP: { version: { qemu: { major: 7, minor: 2, micro: 0 }, package: 'fake' }, capabilities: [] } })}\r\n`;

/** Greets, accepts capabilities, then hands each later command to `onCommand`. */
function greeter(onCommand: (socket: Socket, message: { execute: string; id?: string }) => void) {
  return (socket: Socket) => {
    socket.write(GREETING);
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk.toString();
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const message = JSON.parse(buffered.slice(0, nl)) as { execute: string; id?: string };
        buffered = buffered.slice(nl + 1);
        if (message.execute === 'qmp_capabilities') socket.write(`${JSON.stringify({ return: {}, id: message.id })}\r\n`);
        else onCommand(socket, message);
      }
    });
  };
}

describe('QMP client against QEMU', () => {
  it('negotiates, runs commands by id, reports errors with their class, and delivers events', async () => {
    const calls: { command: string; ok: boolean }[] = [];
    const qmp = await QmpClient.connect({ path: socketPath(), onCall: (command, seconds, ok) => calls.push({ command, ok }) && expect(seconds).toBeGreaterThanOrEqual(0) });
    try {
      expect(qmp.version.qemu.major).toBeGreaterThanOrEqual(7);
      expect(await qmp.execute('query-status')).toMatchObject({ status: 'prelaunch', running: false });
      // Several in flight at once each get their own answer.
      const [name, version] = await Promise.all([qmp.execute('query-name'), qmp.execute('query-version')]);
      expect(name).toEqual({});
      expect(version).toMatchObject({ qemu: { major: qmp.version.qemu.major } });

      const refused = await qmp.execute('no-such-command').catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(QmpError);
      expect(refused).toMatchObject({ code: 'rejected', errorClass: 'CommandNotFound' });
      expect((refused as Error).message).toMatch(/^QMP no-such-command on .*qmp\.sock: CommandNotFound: /);

      const events: QmpEvent[] = [];
      let unsubscribe: () => void = () => undefined;
      const stopped = new Promise<void>((resolve) => {
        unsubscribe = qmp.subscribe((e) => {
          events.push(e);
          if (e.event === 'STOP') resolve();
        });
      });
      await qmp.execute('cont');
      await qmp.execute('stop');
      await stopped;
      unsubscribe();
      expect(events.map((e) => e.event)).toEqual(expect.arrayContaining(['RESUME', 'STOP']));
      expect(events[0]?.atMs).toBeGreaterThan(Date.parse('2020-01-01'));
      expect(calls).toContainEqual({ command: 'no-such-command', ok: false });
      expect(calls).toContainEqual({ command: 'query-status', ok: true });
    } finally {
      qmp.close();
    }
  });

  it('refuses a socket path too long for a Unix socket, naming it', async () => {
    const path = join(dir, 'x'.repeat(120), 'qmp.sock');
    await expect(QmpClient.connect({ path })).rejects.toMatchObject({ code: 'invalid', message: expect.stringContaining('above the 107 a Unix socket allows') });
  });

  it('reports a socket nobody listens on as unavailable', async () => {
    await expect(QmpClient.connect({ path: join(dir, 'absent.sock') })).rejects.toMatchObject({ code: 'unavailable', message: expect.stringMatching(/absent\.sock: cannot connect: ENOENT/) });
  });
});

describe('QMP client against a misbehaving server', () => {
  it('gives up on a silent socket at the connect deadline', async () => {
    const { path, server } = await fakeQemu(() => undefined);
    try {
      await expect(QmpClient.connect({ path, connectTimeoutMs: 200 })).rejects.toMatchObject({ code: 'timeout', message: expect.stringContaining('no greeting within 200 ms') });
    } finally {
      server.close();
    }
  });

  it('refuses a first message that is not a QMP greeting', async () => {
    const { path, server } = await fakeQemu((s) => s.write('{"hello": "world"}\n'));
    try {
      await expect(QmpClient.connect({ path })).rejects.toMatchObject({ code: 'corrupt', message: expect.stringContaining('not a QMP greeting') });
    } finally {
      server.close();
    }
  });

  it('closes on a line above the limit and fails the waiting command', async () => {
    const { path, server } = await fakeQemu(greeter((socket) => socket.write('x'.repeat(5_000))));
    try {
      const qmp = await QmpClient.connect({ path, maxLineBytes: 1_000 });
      await expect(qmp.execute('query-status')).rejects.toMatchObject({ code: 'corrupt', message: expect.stringContaining('longer than 1000 bytes') });
      expect(qmp.isClosed).toBe(true);
    } finally {
      server.close();
    }
  });

  it('times a command out at its deadline and drops the late answer', async () => {
    let late: (() => void) | undefined;
    const { path, server } = await fakeQemu(
      greeter((socket, m) => {
        if (m.execute === 'slow') late = () => socket.write(`${JSON.stringify({ return: { late: true }, id: m.id })}\n`);
        else socket.write(`${JSON.stringify({ return: { ok: m.execute }, id: m.id })}\n`);
      }),
    );
    try {
      const qmp = await QmpClient.connect({ path });
      await expect(qmp.execute('slow', undefined, { timeoutMs: 100 })).rejects.toMatchObject({ code: 'timeout', message: expect.stringContaining('QMP slow on') });
      late?.();
      expect(await qmp.execute('next')).toEqual({ ok: 'next' });
      const aborted = new AbortController();
      const pending = qmp.execute('slow', undefined, { signal: aborted.signal });
      aborted.abort();
      await expect(pending).rejects.toMatchObject({ code: 'cancelled' });
      qmp.close();
    } finally {
      server.close();
    }
  });

  it('fails every waiting command when the connection drops, and resolves closed with the reason', async () => {
    const { path, server } = await fakeQemu(greeter((socket) => socket.destroy()));
    try {
      const qmp = await QmpClient.connect({ path });
      await expect(qmp.execute('quit')).rejects.toMatchObject({ code: 'unavailable', message: expect.stringContaining('connection closed by QEMU before it answered') });
      expect(await qmp.closed).toContain('connection closed by QEMU');
      await expect(qmp.execute('query-status')).rejects.toMatchObject({ code: 'unavailable' });
    } finally {
      server.close();
    }
  });
});
