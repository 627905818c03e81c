/**
 * The command lines of one guest: QEMU's own, the small shell that starts it
 * and records how it ended, and the test that a running process is this
 * guest's QEMU. Pure: names and paths in, argv out.
 *
 * Invariants:
 * - Nothing listens on the network: no VNC, no SPICE, no display
 *   (`-display none`), no default devices (`-nodefaults`), no user config
 *   files (`-no-user-config`). The only control channel is the QMP socket,
 *   a Unix socket in the VM's directory.
 * - `-sandbox on` (seccomp) with every restriction QEMU offers, when the
 *   build has it: the guest's QEMU may not spawn, gain privileges or call
 *   obsolete system calls.
 * - `-name guest=<id>` and the QMP socket path make the command line unique
 *   to the VM, so `isGuestCommandLine` can tell this VM's QEMU from any
 *   other process, another VM's QEMU included.
 * - The shell runs QEMU as its child (not exec), so it outlives it and writes
 *   QEMU's exit status (128+N when killed by signal N) to the exit file,
 *   even when dwcpd is not running; dwcpd reads how a guest ended from there.
 */

export type Accel = 'kvm' | 'tcg';

export interface GuestPaths {
  readonly qmp: string;
  readonly serial: string;
  readonly pid: string;
  readonly disk: string;
  /** Where the shell records QEMU's exit status. */
  readonly exit: string;
}

export type GuestBoot = { readonly kind: 'kernel'; readonly kernel: string; readonly initrd: string; readonly cmdline: string } | { readonly kind: 'disk' };

export interface GuestCommand {
  readonly id: string;
  readonly vcpus: number;
  readonly memoryMiB: number;
  readonly accel: Accel;
  readonly sandbox: boolean;
  readonly paths: GuestPaths;
  readonly boot: GuestBoot;
  /**
   * A migration's destination: `-incoming defer` (QEMU waits for a
   * `migrate-incoming` over QMP and never boots the guest itself) and `-S`
   * (it does not run the guest when the stream completes either: the
   * provider continues it, once the disk export the stream needed is gone).
   */
  readonly incoming?: boolean;
}

/** The seccomp sandbox with every restriction on (QEMU 2.11+). */
export const SANDBOX = 'on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny';

/** A value inside a QEMU option list, where "," separates options: commas are doubled. */
export function optionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

/** QEMU's arguments (without the binary) for one guest. */
export function qemuArgs(g: GuestCommand): string[] {
  const args = [
    '-name', `guest=${g.id},process=dwcp-${g.id}`,
    '-machine', 'pc',
    '-accel', g.accel,
    ...(g.accel === 'kvm' ? ['-cpu', 'host'] : []),
    '-smp', String(g.vcpus),
    '-m', `${g.memoryMiB}M`,
    '-nodefaults',
    '-no-user-config',
    '-display', 'none',
    ...(g.sandbox ? ['-sandbox', SANDBOX] : []),
    '-chardev', `socket,id=qmp,path=${optionValue(g.paths.qmp)},server=on,wait=off`,
    '-mon', 'chardev=qmp,mode=control',
    '-chardev', `file,id=serial0,path=${optionValue(g.paths.serial)},append=on`,
    '-serial', 'chardev:serial0',
    '-pidfile', g.paths.pid,
    '-blockdev', `driver=file,filename=${optionValue(g.paths.disk)},node-name=disk0-file`,
    '-blockdev', 'driver=qcow2,file=disk0-file,node-name=disk0',
    '-device', `virtio-blk-pci,drive=disk0,id=disk0-dev${g.boot.kind === 'disk' ? ',bootindex=0' : ''}`,
    // A balloon device lets the guest report its memory use (query through qom-get guest-stats).
    '-device', 'virtio-balloon-pci,id=balloon0',
  ];
  if (g.boot.kind === 'kernel') args.push('-kernel', g.boot.kernel, '-initrd', g.boot.initrd, '-append', g.boot.cmdline);
  if (g.incoming === true) args.push('-S', '-incoming', 'defer');
  return args;
}

/**
 * The shell that runs QEMU, watches its lease, and writes "STATUS" to the
 * exit file when it ends. Argument order: sh -c SCRIPT dwcp-qemu EXITFILE
 * LEASEFILE POLLSECONDS BINARY ARGS...
 *
 * The watchdog is a subshell of it (a forked dash: a few hundred KiB, no
 * process per poll but `sleep`): every POLLSECONDS, while QEMU lives, it
 * reads LEASEFILE's first word (a deadline on the boot clock, centiseconds)
 * and /proc/uptime with shell builtins; past the deadline (or on a deadline
 * that is not a number) it notes why in LEASEFILE.lapsed and SIGKILLs QEMU.
 * No lease file (or an empty one, or one gone
 * between the test and the read): not leased, nothing happens (guest-lease.ts leaseState is
 * the same rule). It kills rather than pauses because pausing needs QMP, and
 * QEMU's monitor serves one client: the wedged dwcpd the lease is for may
 * still hold it.
 */
export function shimArgs(binary: string, args: readonly string[], exitFile: string, lease: { readonly file: string; readonly pollMs: number }): string[] {
  const watchdog = [
    'while kill -0 $q 2>/dev/null; do',
    ' if [ -e "$l" ]; then',
    '  d=; read d r < "$l" 2>/dev/null',
    '  if [ -n "$d" ]; then read u i < /proc/uptime; n=${u%.*}${u#*.}',
    '   case $d in *[!0-9]*) d=-1;; esac',
    '   if [ "$n" -gt "$d" ]; then printf "lease lapsed: deadline %s, boot clock %s (centiseconds)\\n" "$d" "$n" > "$l.lapsed"; kill -KILL $q; exit 0; fi',
    '  fi',
    ' fi',
    ' sleep $p',
    'done',
  ].join('\n');
  const script = `f=$1; l=$2; p=$3; shift 3; "$@" & q=$!; ( ${watchdog} ) </dev/null >/dev/null 2>&1 & w=$!; wait $q; s=$?; kill $w 2>/dev/null; printf "%s\\n" "$s" > "$f.tmp" && mv "$f.tmp" "$f"`;
  return ['-c', script, 'dwcp-qemu', exitFile, lease.file, (lease.pollMs / 1000).toFixed(3), binary, ...args];
}

/** Whether `argv` (a live process's command line) is the QEMU of guest `id` with QMP socket `qmp`. */
export function isGuestCommandLine(argv: readonly string[], id: string, qmp: string): boolean {
  const name = argv.indexOf('-name');
  if (name < 0 || argv[name + 1] !== `guest=${id},process=dwcp-${id}`) return false;
  return argv.some((a, i) => argv[i - 1] === '-chardev' && a.startsWith('socket,id=qmp,') && a.includes(`path=${optionValue(qmp)},`));
}

/** How a process ended, from the shell's exit status: "exited with status 1", "killed by SIGKILL (signal 9)". */
export function describeExitStatus(status: number): string {
  if (status > 128 && status < 128 + 65) {
    const n = status - 128;
    return `killed by ${SIGNAL_NAMES[n] ?? 'signal'} (signal ${n})`;
  }
  return status === 0 ? 'exited normally (status 0)' : `exited with status ${status}`;
}

const SIGNAL_NAMES: Readonly<Record<number, string>> = { 1: 'SIGHUP', 2: 'SIGINT', 6: 'SIGABRT', 9: 'SIGKILL', 11: 'SIGSEGV', 15: 'SIGTERM' };
