#!/usr/bin/env node
/**
 * `npm run guest-image -- --out DIR [--kernel-version V] [--busybox PATH]`:
 * builds the dwcp test guest (a Debian kernel and a busybox initramfs whose
 * init prints `tick N MS` on the serial console every 100 ms and dirties
 * memory at `dwcp.dirty_mib_s=` MiB/s; see scripts/guest-image/init.sh) from
 * the packages linux-image-amd64 and busybox-static, into DIR: the kernel
 * (vmlinux, or vmlinuz when it cannot be unpacked for direct PVH boot),
 * initrd.img and image.json. Takes a few seconds; nothing is downloaded.
 *
 * Prints one JSON line (the directory, the files, the image's sha256 and
 * what it was built from) on stdout; errors go to stderr with exit code 1,
 * usage errors with 2.
 */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { buildGuestImage, guestSources, GuestImageError } from './guest-image/build.ts';

function usage(message: string): never {
  process.stderr.write(`guest-image: ${message}\nusage: npm run guest-image -- --out DIR [--kernel-version V] [--busybox PATH]\n`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    options: { out: { type: 'string' }, 'kernel-version': { type: 'string' }, busybox: { type: 'string' } },
    strict: true,
  }));
} catch (err) {
  usage((err as Error).message);
}
if (values.out === undefined) usage('--out DIR is required');

try {
  const sources = await guestSources({
    ...(values['kernel-version'] === undefined ? {} : { kernelVersion: values['kernel-version'] }),
    ...(values.busybox === undefined ? {} : { busybox: values.busybox }),
  });
  const started = performance.now();
  const image = await buildGuestImage(resolve(values.out), sources);
  process.stdout.write(
    `${JSON.stringify({ dir: image.dir, kernel: image.kernel, initrd: image.initrd, cmdline: image.manifest.cmdline, sha256: image.sha256, source: image.manifest.source, ms: Math.round(performance.now() - started) })}\n`,
  );
} catch (err) {
  if (!(err instanceof GuestImageError) && !(err instanceof Error && 'code' in err)) throw err;
  process.stderr.write(`guest-image: ${(err as Error).message}\n`);
  process.exit(1);
}
