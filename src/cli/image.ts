/**
 * dwcpctl's `image` command: the federation's guest images (docs/images.md).
 *
 *   dwcpctl image add FILE --name N [--format qcow2|raw] [--replace]
 *   dwcpctl image add --kernel K --initrd I [--cmdline '...'] --name N [--replace]
 *   dwcpctl image list
 *   dwcpctl image show NAME
 *   dwcpctl image pull NAME
 *   dwcpctl image remove NAME
 *
 * `add` passes absolute paths to the daemon, which reads the files itself,
 * after checking that this caller can read them (as `blob put` does); on a
 * terminal it draws ingest progress on stderr. `pull` materialises the image
 * on the daemon's node and waits up to 10 minutes unless --timeout says
 * otherwise. Every subcommand prints JSON with --json.
 */
import type { ParseArgsOptionsConfig } from 'node:util';
import type { ImageInfo } from '../admin/schema.ts';
import { formatBytes, progressLine, readableFile, renderProgress } from './blob.ts';
import type { Command, CommandContext } from './command.ts';
import { notForThis, positional, requiredFlag, singleFlag, subcommandError, UsageError } from './command.ts';
import { formatJson, renderFields, renderTable } from './format.ts';

const IMAGE_OPTIONS = {
  name: { type: 'string' },
  format: { type: 'string' },
  kernel: { type: 'string' },
  initrd: { type: 'string' },
  cmdline: { type: 'string' },
  replace: { type: 'boolean' },
} as const satisfies ParseArgsOptionsConfig;

const ADD_ONLY = ['name', 'format', 'kernel', 'initrd', 'cmdline', 'replace'] as const;

function kindOf(i: ImageInfo): string {
  return i.kind === 'disk' ? `disk/${i.format}` : i.kind;
}

/** Where this node has the image: its files materialised, its blobs only, some of it, or nothing. */
function here(i: ImageInfo): string {
  if (i.parts.every((p) => p.path !== null)) return 'files';
  if (i.parts.every((p) => p.local)) return 'blobs';
  return i.parts.some((p) => p.local) ? 'partial' : '-';
}

/** `2025-06-01 14:03` from an ISO time: the minute is what a list needs. */
function minute(iso: string): string {
  return iso.slice(0, 16).replace('T', ' ');
}

export function formatImageList(images: readonly ImageInfo[], problems: readonly string[] = []): string {
  const notes = problems.map((p) => `not listed: ${p}\n`).join('');
  if (images.length === 0) return `(no images; dwcpctl image add stores one)\n${notes}`;
  return renderTable(
    ['NAME', 'KIND', 'SIZE', 'SHA256', 'ADDED', 'BY', 'HOLDERS', 'HERE'],
    images.map((i) => [i.name, kindOf(i), formatBytes(i.size), i.sha256.slice(0, 12), minute(i.added_at), i.added_by, i.holders.join(',') || '-', here(i)]),
  ) + notes;
}

export function formatImage(i: ImageInfo): string {
  return renderFields([
    ['Name', i.name],
    ['Kind', kindOf(i)],
    ['Size', i.kind === 'disk' ? `${formatBytes(i.size)} (the guest sees ${formatBytes(i.virtual_size)})` : formatBytes(i.size)],
    ['SHA-256', i.sha256],
    ...(i.kind === 'kernel' ? [['Cmdline', i.cmdline === '' ? '(empty)' : i.cmdline] as const] : []),
    ['Added', `${i.added_at} by ${i.added_by}`],
    ['Holders', i.holders.join(', ') || '(none recorded)'],
    ['Parts', i.parts.map((p) => `${p.role}: ${formatBytes(p.size)}, sha256 ${p.sha256.slice(0, 16)}…, ${p.path ?? (p.local ? 'in the blob store here' : 'not on this node')}`).join('\n')],
  ]);
}

async function add(ctx: CommandContext): Promise<void> {
  const given = ctx.args.slice(1);
  const name = requiredFlag(ctx.flags, 'name', 'the image name');
  const kernel = singleFlag(ctx.flags, 'kernel');
  const initrd = singleFlag(ctx.flags, 'initrd');
  const cmdline = singleFlag(ctx.flags, 'cmdline');
  const format = singleFlag(ctx.flags, 'format');
  const pair = kernel !== undefined || initrd !== undefined;
  if (pair && given.length > 0) throw new UsageError('image add takes a FILE or --kernel and --initrd, not both');
  if (!pair && given.length !== 1) throw new UsageError(`image add takes one FILE (a disk image), or --kernel K --initrd I (got ${given.length} arguments)`);
  if (pair && (kernel === undefined || initrd === undefined)) throw new UsageError('image add needs both --kernel and --initrd for direct boot');
  if (pair && format !== undefined) throw new UsageError('--format applies to a disk image, not to --kernel and --initrd');
  if (!pair && cmdline !== undefined) throw new UsageError('--cmdline applies to --kernel and --initrd, not to a disk image');
  if (format !== undefined && format !== 'qcow2' && format !== 'raw') throw new UsageError(`--format: ${JSON.stringify(format)} is not qcow2 or raw`);
  const request = {
    name,
    path: pair ? '' : await readableFile(given[0] ?? ''),
    format: format ?? '',
    kernel: kernel === undefined ? '' : await readableFile(kernel),
    initrd: initrd === undefined ? '' : await readableFile(initrd),
    cmdline: cmdline ?? '',
    replace: ctx.flags.replace === true,
  };
  const bar = progressLine(ctx);
  let image: ImageInfo;
  try {
    image = await (await ctx.admin()).image.add(request, (p) => bar.show(renderProgress(p), p.bytes_done === p.bytes_total));
  } finally {
    bar.end();
  }
  ctx.io.stdout(ctx.json ? formatJson(image) : `added ${image.name}: ${kindOf(image)}, ${formatBytes(image.size)}, sha256 ${image.sha256}\n`);
}

async function image(ctx: CommandContext): Promise<void> {
  const sub = ctx.args[0];
  if (sub === 'add') return add(ctx);
  notForThis(ctx, `image ${sub ?? ''}`.trim(), ADD_ONLY);
  const admin = async () => (await ctx.admin()).image;
  switch (sub) {
    case 'list': {
      positional(ctx, 'image list', []);
      const listed = await (await admin()).list();
      ctx.io.stdout(ctx.json ? formatJson(listed) : formatImageList(listed.images, listed.problems));
      return;
    }
    case 'show': {
      const [name = ''] = positional(ctx, 'image show', ['NAME']);
      const i = await (await admin()).show(name);
      ctx.io.stdout(ctx.json ? formatJson(i) : formatImage(i));
      return;
    }
    case 'pull': {
      const [name = ''] = positional(ctx, 'image pull', ['NAME']);
      const out = await (await admin()).pull(name, ctx.flags.timeout === undefined ? 0 : ctx.timeoutMs);
      const files = out.image.parts.map((p) => `  ${p.role}: ${p.path ?? '-'}`).join('\n');
      ctx.io.stdout(ctx.json ? formatJson(out) : `pulled ${out.image.name} (${kindOf(out.image)}, ${formatBytes(out.image.size)}) in ${out.seconds.toFixed(2)} s\n${files}\n`);
      return;
    }
    case 'remove': {
      const [name = ''] = positional(ctx, 'image remove', ['NAME']);
      const i = await (await admin()).remove(name);
      ctx.io.stdout(
        ctx.json ? formatJson(i) : `removed ${i.name} (sha256 ${i.sha256.slice(0, 16)}…) from the catalog; this node's blobs of it are dropped, materialised files stay\n`,
      );
      return;
    }
    default:
      throw subcommandError('image', 'add, list, show, pull or remove', sub);
  }
}

export const IMAGE_COMMAND: Command = {
  name: 'image',
  args: "add FILE --name N [--format qcow2|raw] [--replace] | add --kernel K --initrd I [--cmdline '...'] --name N | list | show NAME | pull NAME | remove NAME",
  summary: 'guest images of the federation: store a disk or kernel+initrd under a name every node resolves, list them and their holders, materialise one here',
  options: IMAGE_OPTIONS,
  run: image,
};
