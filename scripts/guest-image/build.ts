/**
 * Builds the dwcp test guest from Debian packages already on the host: the
 * kernel of `linux-image-amd64` (/boot/vmlinuz-V) and an
 * initramfs made of `busybox-static`, the few kernel modules the guest needs
 * from /lib/modules/V (virtio PCI, disk and balloon; the ACPI power button
 * and its input events), and init.sh (ticks on the serial console, memory
 * dirtied at the rate the kernel command line gives).
 *
 * Invariants:
 * - Deterministic: the same kernel, modules, busybox and scripts give the
 *   same bytes (the cpio has fixed times and owners, gzip no name or time),
 *   so a cache keyed by their hashes is sound and `image.json` is stable.
 * - Nothing is downloaded and nothing outside `out` is written; a missing
 *   package is an error naming the path and the package to install.
 * - The output directory holds the kernel (`vmlinux`, unpacked from the
 *   bzImage when it has a PVH entry, else `vmlinuz` as it is), `initrd.img`
 *   and `image.json`
 *   (src/cloud/qemu/directory-images.ts reads it), written through temporary
 *   names and renamed, so a reader never sees half a file.
 */
import { createHash } from 'node:crypto';
import { copyFile, mkdir, open, readdir, readFile, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { gunzipSync, gzipSync, zstdDecompressSync } from 'node:zlib';
import { IMAGE_MANIFEST, manifestDigest, sha256File, type KernelImageManifest } from '../../src/cloud/qemu/directory-images.ts';
import { newcArchive, type CpioEntry } from './cpio.ts';

/** Modules the guest loads, by name; their dependencies come from modules.dep. */
export const GUEST_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_balloon', 'button', 'evdev'] as const;
/** The command line recorded with the image; a VM's user data is appended to it (dwcp.dirty_mib_s=…). */
export const GUEST_CMDLINE = 'console=ttyS0 quiet';

export interface GuestSources {
  /** The kernel version whose /boot/vmlinuz-V and /lib/modules/V are used. */
  kernelVersion: string;
  kernel: string;
  modulesDir: string;
  busybox: string;
}

export interface GuestImageResult {
  dir: string;
  kernel: string;
  initrd: string;
  manifest: KernelImageManifest;
  /** The image's hash (manifestDigest). */
  sha256: string;
}

const HERE = new URL('.', import.meta.url).pathname;

export class GuestImageError extends Error {}

/** Whether `path` exists (any kind of file). */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Kernel versions with both a /boot/vmlinuz-V and a /lib/modules/V, newest first. */
export async function installedKernels(boot = '/boot', modules = '/lib/modules'): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(boot);
  } catch {
    return [];
  }
  const versions: string[] = [];
  for (const n of names) {
    if (!n.startsWith('vmlinuz-')) continue;
    const v = n.slice('vmlinuz-'.length);
    if (await exists(join(modules, v, 'modules.dep'))) versions.push(v);
  }
  return versions.sort((a, b) => b.localeCompare(a, 'en', { numeric: true }));
}

/** The sources on this host: the newest installed kernel (or `kernelVersion`) and /bin/busybox. */
export async function guestSources(options: { kernelVersion?: string; busybox?: string } = {}): Promise<GuestSources> {
  const kernels = await installedKernels();
  const kernelVersion = options.kernelVersion ?? kernels[0];
  if (kernelVersion === undefined) throw new GuestImageError('no kernel found: /boot/vmlinuz-V with /lib/modules/V (install linux-image-amd64)');
  const kernel = join('/boot', `vmlinuz-${kernelVersion}`);
  const modulesDir = join('/lib/modules', kernelVersion);
  if (!(await exists(kernel))) throw new GuestImageError(`${kernel} is missing (install linux-image-${kernelVersion} or linux-image-amd64)`);
  if (!(await exists(join(modulesDir, 'modules.dep')))) throw new GuestImageError(`${modulesDir}/modules.dep is missing (the modules of kernel ${kernelVersion})`);
  const busybox = options.busybox ?? '/bin/busybox';
  if (!(await exists(busybox))) throw new GuestImageError(`${busybox} is missing (install busybox-static)`);
  return { kernelVersion, kernel, modulesDir, busybox };
}

interface ProgramHeader {
  type: number;
  offset: number;
  size: number;
}

/** The program headers of a 64-bit little-endian ELF file. */
function programHeaders(elf: Buffer): ProgramHeader[] {
  if (elf.length < 64 || elf.readUInt32BE(0) !== 0x7f454c46) throw new GuestImageError('not an ELF file');
  if (elf[4] !== 2 || elf[5] !== 1) throw new GuestImageError('not a 64-bit little-endian ELF file');
  const phoff = Number(elf.readBigUInt64LE(32));
  const phentsize = elf.readUInt16LE(54);
  const phnum = elf.readUInt16LE(56);
  const out: ProgramHeader[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > elf.length) break;
    out.push({ type: elf.readUInt32LE(at), offset: Number(elf.readBigUInt64LE(at + 8)), size: Number(elf.readBigUInt64LE(at + 32)) });
  }
  return out;
}

const PT_INTERP = 3;
const PT_NOTE = 4;
/** XEN_ELFNOTE_PHYS32_ENTRY: the kernel has a PVH entry point, so QEMU can boot the ELF directly. */
const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** Whether an ELF executable asks for a program interpreter (is dynamically linked). */
export function hasInterpreter(elf: Buffer): boolean {
  return programHeaders(elf).some((h) => h.type === PT_INTERP);
}

/** Whether an ELF kernel carries the PVH entry note. */
export function hasPvhEntry(elf: Buffer): boolean {
  for (const h of programHeaders(elf)) {
    if (h.type !== PT_NOTE) continue;
    let at = h.offset;
    const end = Math.min(h.offset + h.size, elf.length);
    while (at + 12 <= end) {
      const namesz = elf.readUInt32LE(at);
      const descsz = elf.readUInt32LE(at + 4);
      const type = elf.readUInt32LE(at + 8);
      const name = elf.toString('latin1', at + 12, at + 12 + Math.max(0, namesz - 1));
      if (name === 'Xen' && type === XEN_ELFNOTE_PHYS32_ENTRY) return true;
      at += 12 + align4(namesz) + align4(descsz);
    }
  }
  return false;
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/**
 * The uncompressed kernel (vmlinux) inside a bzImage, when it has a PVH
 * entry: QEMU then boots it directly, skipping the real-mode setup and the
 * decompressor, which under TCG take most of the boot (about 17 s to the
 * first tick at load 8 here, against 4 s). Null when the bzImage is not one
 * this can unpack (an unknown compression, no PVH note): the bzImage is used.
 */
export function extractPvhKernel(bzImage: Buffer): Buffer | null {
  if (bzImage.length < 0x250 || bzImage.toString('latin1', 0x202, 0x206) !== 'HdrS') return null;
  const setupSectors = bzImage[0x1f1] || 4;
  const payloadOffset = (setupSectors + 1) * 512 + bzImage.readUInt32LE(0x248);
  const payload = bzImage.subarray(payloadOffset, payloadOffset + bzImage.readUInt32LE(0x24c));
  let elf: Buffer;
  if (payload.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    // Node has no xz; the xz tool (xz-utils) does. --single-stream: the payload's length is exact.
    const run = spawnSync('xz', ['-dc', '--single-stream'], { input: payload, maxBuffer: 1 << 30 });
    if (run.error !== undefined || run.status !== 0) return null;
    elf = run.stdout;
  } else if (payload.readUInt32LE(0) === 0xfd2fb528) {
    elf = zstdDecompressSync(payload);
  } else if (payload[0] === 0x1f && payload[1] === 0x8b) {
    elf = gunzipSync(payload);
  } else {
    return null;
  }
  try {
    return hasPvhEntry(elf) ? elf : null;
  } catch {
    return null;
  }
}

/** Module paths (relative to the modules dir) in load order: each after its dependencies. */
export function moduleLoadOrder(modulesDep: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of modulesDep.split('\n')) {
    const colon = line.indexOf(':');
    if (colon < 0) continue;
    deps.set(line.slice(0, colon), line.slice(colon + 1).trim().split(/\s+/).filter((s) => s !== ''));
  }
  const byName = new Map<string, string>();
  for (const path of deps.keys()) byName.set(moduleName(path), path);
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (path: string): void => {
    if (seen.has(path)) return;
    seen.add(path);
    for (const d of deps.get(path) ?? []) visit(d);
    order.push(path);
  };
  for (const name of wanted) {
    const path = byName.get(name);
    if (path === undefined) throw new GuestImageError(`kernel module ${name} is not in modules.dep (is it built in, or missing from this kernel?)`);
    visit(path);
  }
  return order;
}

function moduleName(path: string): string {
  const file = path.slice(path.lastIndexOf('/') + 1);
  return file.replace(/\.ko(\.(xz|zst|gz))?$/, '').replace(/-/g, '_');
}

/** A module's bytes, uncompressed (busybox insmod takes plain .ko files). */
async function moduleBytes(path: string): Promise<Buffer> {
  const data = await readFile(path);
  if (path.endsWith('.ko')) return data;
  if (path.endsWith('.ko.gz')) return gunzipSync(data);
  if (path.endsWith('.ko.zst')) return zstdDecompressSync(data);
  throw new GuestImageError(`${path}: compressed as the guest image builder cannot read (only .ko, .ko.gz and .ko.zst)`);
}

/** The initramfs (gzipped newc cpio) and a description of what went in it. */
export async function buildInitramfs(sources: GuestSources): Promise<{ bytes: Buffer; modules: string[] }> {
  const busybox = await readFile(sources.busybox);
  if (hasInterpreter(busybox)) throw new GuestImageError(`${sources.busybox} is dynamically linked; the guest needs busybox-static`);
  const order = moduleLoadOrder(await readFile(join(sources.modulesDir, 'modules.dep'), 'utf8'), GUEST_MODULES);
  const entries: CpioEntry[] = [
    { type: 'dir', path: 'bin' },
    { type: 'file', path: 'bin/busybox', data: busybox, mode: 0o755 },
    { type: 'symlink', path: 'bin/sh', target: 'busybox' },
    { type: 'dir', path: 'dev' },
    // The kernel opens /dev/console for init before devtmpfs is mounted: it must be in the archive.
    { type: 'char', path: 'dev/console', major: 5, minor: 1 },
    { type: 'dir', path: 'etc' },
    { type: 'dir', path: 'etc/acpi' },
    { type: 'dir', path: 'etc/acpi/PWRF' },
    { type: 'file', path: 'etc/acpi/PWRF/00000080', data: await readFile(join(HERE, 'power-button.sh')), mode: 0o755 },
    { type: 'file', path: 'init', data: await readFile(join(HERE, 'init.sh')), mode: 0o755 },
    { type: 'dir', path: 'lib' },
    { type: 'dir', path: 'lib/modules' },
    { type: 'dir', path: 'proc' },
    { type: 'dir', path: 'sys' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
  ];
  const names: string[] = [];
  for (const path of order) {
    const name = `${moduleName(path)}.ko`;
    names.push(name);
    entries.push({ type: 'file', path: `lib/modules/${name}`, data: await moduleBytes(join(sources.modulesDir, path)) });
  }
  entries.push({ type: 'file', path: 'lib/modules/load-order', data: Buffer.from(`${names.join('\n')}\n`) });
  // gzip without a file name or time (zlib writes neither): the same archive always compresses to the same bytes.
  return { bytes: gzipSync(newcArchive(entries), { level: 9 }), modules: names };
}

async function writeBytes(path: string, bytes: Uint8Array): Promise<void> {
  const file = await open(path, 'w', 0o644);
  try {
    await file.writeFile(bytes);
  } finally {
    await file.close();
  }
}

async function writeAtomically(path: string, write: (temporary: string) => Promise<void>): Promise<void> {
  const temporary = `${path}.tmp-${process.pid}`;
  await write(temporary);
  const file = await open(temporary, 'r');
  try {
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
}

/** Writes the kernel, initrd.img and image.json into `out` (created if missing). */
export async function buildGuestImage(out: string, sources?: GuestSources): Promise<GuestImageResult> {
  const src = sources ?? (await guestSources());
  const { bytes, modules } = await buildInitramfs(src);
  await mkdir(out, { recursive: true });
  const pvh = extractPvhKernel(await readFile(src.kernel));
  const kernelFile = pvh === null ? 'vmlinuz' : 'vmlinux';
  const kernel = join(out, kernelFile);
  const initrd = join(out, 'initrd.img');
  await writeAtomically(kernel, (t) => (pvh === null ? copyFile(src.kernel, t) : writeBytes(t, pvh)));
  await writeAtomically(initrd, (t) => writeBytes(t, bytes));
  const busyboxVersion = /BusyBox v[^\s]+/.exec((await readFile(src.busybox)).toString('latin1'))?.[0] ?? 'unknown';
  const manifest: KernelImageManifest = {
    kind: 'kernel',
    kernel: kernelFile,
    initrd: 'initrd.img',
    cmdline: GUEST_CMDLINE,
    files: { [kernelFile]: await sha256File(kernel), 'initrd.img': createHash('sha256').update(bytes).digest('hex') },
    source: { kernel: `${src.kernelVersion}${pvh === null ? ' (bzImage)' : ' (vmlinux, PVH entry)'}`, busybox: busyboxVersion, modules: modules.join(' '), builder: 'scripts/guest-image' },
  };
  await writeAtomically(join(out, IMAGE_MANIFEST), (t) => writeBytes(t, Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`)));
  return { dir: out, kernel, initrd, manifest, sha256: manifestDigest(manifest) };
}

/** What the image is built from, as one hash: a cache of built images is keyed by it (the scripts by content, the packages' files by size and time). */
export async function sourcesKey(sources: GuestSources): Promise<string> {
  const hash = createHash('sha256').update(`${sources.kernelVersion}\n`);
  for (const path of [sources.kernel, sources.busybox]) {
    const s = await stat(path);
    hash.update(`${path}:${s.size}:${s.mtimeMs}\n`);
  }
  for (const file of ['init.sh', 'power-button.sh', 'build.ts', 'cpio.ts']) hash.update(await readFile(join(HERE, file)));
  return hash.digest('hex').slice(0, 16);
}
