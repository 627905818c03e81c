/**
 * bin/dwcpd and bin/dwcpctl, the launchers for a checkout: each runs its
 * program on the project's own Node.js with nothing of its own on stdout or
 * stderr (no npm warnings), passes arguments and the exit code through, and
 * finds the checkout through a chain of symlinks (relative and absolute) from
 * any working directory. Compared with the program run directly on the same
 * runtime, the output is byte for byte the same.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, symlink, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.ts';
import { VERSION } from '../../src/daemon/version.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DWCPD = join(ROOT, 'bin/dwcpd');
const DWCPCTL = join(ROOT, 'bin/dwcpctl');
const NODE = join(ROOT, 'node_modules/.bin/node');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

async function run(file: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  const child = spawn(file, args, { cwd: opts.cwd ?? tmp, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

/** The program itself, without the launcher: the reference output. */
const direct = (main: string, args: string[]) => run(NODE, [join(ROOT, main), ...args]);

let tmp: string;

beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'dwcp-launchers-'));
});

afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

describe('bin/dwcpctl', () => {
  it('prints only the version, on stdout, and exits 0', async () => {
    const r = await run(DWCPCTL, ['version']);
    expect(r).toEqual({ code: 0, stdout: `dwcpctl ${VERSION}\n`, stderr: '' });
  });

  it('passes a usage error through: exit 2, the program\'s own stderr', async () => {
    const r = await run(DWCPCTL, ['no-such-command']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^dwcpctl: /);
    expect(r).toEqual(await direct('src/cli/main.ts', ['no-such-command']));
  });

  it('passes a runtime failure through: exit 1, one line on stderr', async () => {
    const socket = join(tmp, 'nobody-listens.sock');
    const r = await run(DWCPCTL, ['--socket', socket, '--timeout', '2s', 'status']);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^dwcpctl: /);
  });

  it('keeps arguments with spaces and quotes intact', async () => {
    const odd = join(tmp, 'a dir "with" $pecial chars', 'admin.sock');
    const r = await run(DWCPCTL, ['--socket', odd, 'status']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(odd);
  });

  it('prints the same help as the program run directly', async () => {
    const r = await run(DWCPCTL, ['help']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r).toEqual(await direct('src/cli/main.ts', ['help']));
  });
});

describe('bin/dwcpd', () => {
  it('runs the daemon with the node flags every launcher passes (src/daemon/node-flags.ts), as the Dockerfile does', async () => {
    const script = await readFile(DWCPD, 'utf8');
    const exec = script.split('\n').find((line) => line.startsWith('exec '));
    expect(exec).toBe(`exec "$node" ${DAEMON_NODE_FLAGS.join(' ')} "$root/src/daemon/main.ts" "$@"`);
    const dockerfile = await readFile(join(ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toContain(`ENTRYPOINT ${JSON.stringify(['node', ...DAEMON_NODE_FLAGS, 'src/daemon/main.ts']).replaceAll(',', ', ')}`);
  });

  it('prints only its usage for --help and exits 0', async () => {
    const r = await run(DWCPD, ['--help']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^usage: dwcpd /);
    expect(r).toEqual(await direct('src/daemon/main.ts', ['--help']));
  });

  it('prints only the version', async () => {
    expect(await run(DWCPD, ['version'])).toEqual({ code: 0, stdout: `dwcpd ${VERSION}\n`, stderr: '' });
  });

  it('prints only the peer ID for `id`, the same one each time', async () => {
    const dataDir = join(tmp, 'data');
    const first = await run(DWCPD, ['id', '--data-dir', dataDir]);
    expect(first.code).toBe(0);
    expect(first.stderr).toBe('');
    expect(first.stdout).toMatch(/^12D3KooW[1-9A-HJ-NP-Za-km-z]+\n$/);
    expect(await direct('src/daemon/main.ts', ['id', '--data-dir', dataDir])).toEqual(first);
  });

  it('exits 2 on an unknown flag, with the program\'s own message', async () => {
    const r = await run(DWCPD, ['--no-such-flag']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r).toEqual(await direct('src/daemon/main.ts', ['--no-such-flag']));
  });

  it('exits 78 on a configuration file that does not exist', async () => {
    const r = await run(DWCPD, ['--config', join(tmp, 'missing.yaml'), '--data-dir', join(tmp, 'data')]);
    expect(r.code).toBe(78);
  });
});

describe('launched through symlinks', () => {
  it('finds the checkout through a relative and an absolute link, from any directory', async () => {
    const links = join(tmp, 'links');
    await mkdir(join(links, 'inner'), { recursive: true });
    // inner/dwcpctl -> (relative) the launcher; dwcpctl -> (absolute) inner/dwcpctl
    await symlink(relative(join(links, 'inner'), DWCPCTL), join(links, 'inner', 'dwcpctl'));
    await symlink(join(links, 'inner', 'dwcpctl'), join(links, 'dwcpctl'));
    await symlink(DWCPD, join(links, 'dwcpd'));
    expect(await run(join(links, 'dwcpctl'), ['version'], { cwd: '/' })).toEqual({ code: 0, stdout: `dwcpctl ${VERSION}\n`, stderr: '' });
    expect(await run(join(links, 'dwcpd'), ['version'], { cwd: '/' })).toEqual({ code: 0, stdout: `dwcpd ${VERSION}\n`, stderr: '' });
    // Found on PATH by its bare name, with a CDPATH that would make a careless `cd` print.
    const env = { ...process.env, PATH: `${links}:${process.env.PATH ?? ''}`, CDPATH: '/' };
    expect(await run('dwcpctl', ['version'], { cwd: tmp, env })).toEqual({ code: 0, stdout: `dwcpctl ${VERSION}\n`, stderr: '' });
  });

  it('runs on the project\'s Node.js even when PATH offers another node first', async () => {
    const fake = join(tmp, 'fake-node');
    await mkdir(fake, { recursive: true });
    await symlink('/bin/false', join(fake, 'node'));
    const env = { ...process.env, PATH: `${fake}:${process.env.PATH ?? ''}` };
    expect(await run(DWCPCTL, ['version'], { env })).toEqual({ code: 0, stdout: `dwcpctl ${VERSION}\n`, stderr: '' });
  });
});
