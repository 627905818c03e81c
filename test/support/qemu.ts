/**
 * What the qemu tests share: the test guest built once per machine (cached
 * under the temp directory, keyed by what it is built from, so every test
 * file and worker reuses one build), an image directory holding it for the
 * DirectoryImageSource, waits on files QEMU creates, the QEMUs running under
 * a directory, and a guest's serial ticks.
 *
 * Two workers may build at once: each builds into its own directory and
 * renames it into place; the loser's rename fails and it uses the winner's.
 */
import { mkdir, readdir, readFile, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readProcess } from '../../src/cloud/qemu/procfs.ts';
import { buildGuestImage, exists, guestSources, sourcesKey } from '../../scripts/guest-image/build.ts';

/** The image name the tests register the guest under. */
export const GUEST_IMAGE = 'tiny';

let built: Promise<string> | undefined;

/** A directory for DirectoryImageSource holding the test guest as `tiny` (read-only to tests: copy before changing). */
export function guestImagesDir(): Promise<string> {
  built ??= (async () => {
    const sources = await guestSources();
    const root = join(tmpdir(), 'dwcp-guest-image', await sourcesKey(sources));
    const ready = join(root, GUEST_IMAGE, 'image.json');
    if (await exists(ready)) return root;
    await mkdir(join(tmpdir(), 'dwcp-guest-image'), { recursive: true });
    const staging = `${root}.tmp-${process.pid}-${Math.random().toString(16).slice(2, 8)}`;
    await buildGuestImage(join(staging, GUEST_IMAGE), sources);
    try {
      await rename(staging, root);
    } catch (err) {
      if (!(await exists(ready))) throw err;
      await rm(staging, { recursive: true, force: true });
    }
    return root;
  })();
  return built;
}

/** Resolves once `path` exists (QEMU creates its sockets and pid file a moment after it starts). */
export async function waitForPath(path: string, ms: number): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await exists(path))) {
    if (performance.now() > deadline) throw new Error(`${path} did not appear within ${ms} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The QEMU processes running under `dir` (a node's data directory, or the whole test's): guest id and pid. */
export async function qemuProcesses(dir: string): Promise<{ id: string; pid: number }[]> {
  const found: { id: string; pid: number }[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const info = await readProcess(Number(entry)).catch(() => null);
    if (info === null || !(info.argv[0] ?? '').includes('qemu-system')) continue;
    const qmp = info.argv.find((a) => a.startsWith('socket,id=qmp,path='));
    if (qmp?.includes(`${dir}/`) === true) found.push({ id: /guest=(qemu-[0-9a-f]{12})/.exec(info.argv.join(' '))?.[1] ?? '?', pid: Number(entry) });
  }
  return found;
}

/** The tick lines of a test guest's serial log: [n, guest ms]; none while the file does not exist. */
export async function serialTicks(serialLog: string): Promise<[number, number][]> {
  const text = await readFile(serialLog, 'utf8').catch(() => '');
  return [...text.matchAll(/^tick (\d+) (\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
}

/** Stops a test's daemons, then kills every QEMU under their data directories: guests outlive their daemons by design. */
export async function destroyWithGuests(cluster: { readonly nodes: readonly { readonly dir: string }[]; destroy(): Promise<void> } | undefined): Promise<void> {
  const dirs = cluster?.nodes.map((n) => n.dir) ?? [];
  await cluster?.destroy();
  for (const dir of dirs) for (const q of await qemuProcesses(dir)) process.kill(q.pid, 'SIGKILL');
}
