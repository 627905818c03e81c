/**
 * The shipped systemd unit: systemd's own parser (systemd-analyze verify) must
 * find nothing wrong beyond /usr/bin/dwcpd not being installed on the test
 * machine, and the settings the daemon relies on (readiness protocol, state
 * and runtime directories, reload, hardening) must be present as intended.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it, type TestContext } from 'vitest';

const UNIT = new URL('../../config/systemd/dwcpd.service', import.meta.url).pathname;
const MISSING_BINARY = /^dwcpd\.service: Command \/usr\/bin\/dwcpd is not executable: No such file or directory$/;

const scratch = mkdtempSync(join(tmpdir(), 'dwcp-systemd-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Lines systemd-analyze verify prints for a unit file, or skips when systemd-analyze is absent. */
function verify(ctx: TestContext, unitPath: string): string[] {
  const run = spawnSync('systemd-analyze', ['verify', unitPath], { encoding: 'utf8' });
  if ((run.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
    return ctx.skip('systemd-analyze not installed; the unit is not checked by systemd');
  }
  if (run.error) throw run.error;
  return (run.stdout + run.stderr).split('\n').filter((l) => l.trim() !== '');
}

/** Settings by section, each key with all its values in order (keys may repeat). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      current = new Map();
      sections.set(header[1]!, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (!current || eq < 0) throw new Error(`unit line outside a section or without "=": ${line}`);
    const key = line.slice(0, eq).trim();
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

describe('config/systemd/dwcpd.service', () => {
  it('passes systemd-analyze verify except for the binary not installed here', (ctx) => {
    const lines = verify(ctx, UNIT);
    expect(lines.filter((l) => !MISSING_BINARY.test(l))).toEqual([]);
  });

  it('the verify check does catch a broken unit', (ctx) => {
    const broken = join(scratch, 'dwcpd.service');
    writeFileSync(broken, readFileSync(UNIT, 'utf8').replace(/^ProtectSystem=strict$/m, 'ProtectSystem=strictly\nTyp=notify'));
    const lines = verify(ctx, broken).filter((l) => !MISSING_BINARY.test(l));
    expect(lines.join('\n')).toMatch(/Unknown key.*'Typ'/);
    expect(lines.join('\n')).toMatch(/protect system value.*strictly/i);
  });

  const unit = parseUnit(readFileSync(UNIT, 'utf8'));
  const service = unit.get('Service') ?? new Map<string, string[]>();

  it.each([
    ['Type', 'notify'],
    ['NotifyAccess', 'all'],
    ['User', 'dwcp'],
    ['Group', 'dwcp'],
    ['StateDirectory', 'dwcp'],
    ['StateDirectoryMode', '0700'],
    ['RuntimeDirectory', 'dwcp'],
    ['RuntimeDirectoryMode', '0750'],
    [
      'ExecStart',
      '/usr/bin/dwcpd --config /etc/dwcp/dwcpd.yaml --data-dir ${STATE_DIRECTORY} --admin-socket ${RUNTIME_DIRECTORY}/admin.sock',
    ],
    ['ExecReload', '/bin/kill -HUP $MAINPID'],
    ['Restart', 'on-failure'],
    ['RestartPreventExitStatus', '78'],
    ['TimeoutStopSec', '15'],
    ['LimitNOFILE', '65536'],
    ['NoNewPrivileges', 'yes'],
    ['CapabilityBoundingSet', ''],
    ['ProtectSystem', 'strict'],
    ['ProtectHome', 'yes'],
    ['PrivateTmp', 'yes'],
    ['PrivateDevices', 'yes'],
    ['ProtectKernelTunables', 'yes'],
    ['ProtectKernelModules', 'yes'],
    ['ProtectKernelLogs', 'yes'],
    ['ProtectControlGroups', 'yes'],
    ['ProtectClock', 'yes'],
    ['ProtectHostname', 'yes'],
    ['RestrictAddressFamilies', 'AF_UNIX AF_INET AF_INET6 AF_NETLINK'],
    ['RestrictNamespaces', 'yes'],
    ['RestrictRealtime', 'yes'],
    ['RestrictSUIDSGID', 'yes'],
    ['LockPersonality', 'yes'],
    ['SystemCallArchitectures', 'native'],
    ['UMask', '0077'],
  ])('[Service] %s=%s', (key, value) => {
    expect(service.get(key)).toEqual([value]);
  });

  it('sets a restart delay', () => {
    expect(service.get('RestartSec')).toHaveLength(1);
  });

  it.each(['MemoryDenyWriteExecute', 'DynamicUser'])('does not set %s', (key) => {
    // MemoryDenyWriteExecute breaks V8's JIT; DynamicUser would orphan the node key.
    expect(service.has(key)).toBe(false);
  });

  it('is enabled into multi-user.target', () => {
    expect(unit.get('Install')?.get('WantedBy')).toEqual(['multi-user.target']);
  });
});
