/**
 * dwcpctl pbft status: the text and JSON forms of a replica's state, through
 * the real admin client and a real admin gRPC server on a temp socket, with
 * the real Pbft service over a stand-in group (its status is what a replica
 * would report). The same command against real daemons is in
 * test/integration/pbft-federation.test.ts.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAdminServer, type AdminServer } from '../../src/admin/server.ts';
import { pbftServiceRegistration } from '../../src/admin/pbft-service.ts';
import type { PbftGroup } from '../../src/consensus/pbft/group.ts';
import type { PbftStatus } from '../../src/consensus/pbft/core.ts';
import type { DropKind } from '../../src/consensus/pbft/types.ts';
import { main } from '../../src/cli/main.ts';
import { createLogger } from '../../src/log.ts';
import { createMetrics } from '../../src/metrics/metrics.ts';
import { NODE_STATUS } from '../support/status-fixture.ts';

const STATUS: PbftStatus = {
  id: 'n2',
  view: 3,
  active: true,
  primary: 'n4',
  lastExecuted: 130,
  stableCheckpoint: 128,
  highWatermark: 256,
  pendingRequests: 2,
  slots: 2,
  viewChangeAttempts: 0,
  viewChangesStarted: 3,
  signatureVerifications: 1000,
};

/** Only what the service reads of a group. */
const group = {
  node: {
    f: 1,
    members: ['n1', 'n2', 'n3', 'n4'],
    status: () => STATUS,
    drops: () => new Map<DropKind, number>([['duplicate', 5], ['equivocation', 2], ['bad_signature', 0]]),
  },
  client: { inFlight: 1 },
} as unknown as PbftGroup;

let dir = '';
let server: AdminServer;
const ctl = async (...args: string[]) => {
  let stdout = '';
  let stderr = '';
  const code = await main(['--socket', join(dir, 'admin.sock'), ...args], {}, { stdout: (s) => (stdout += s), stderr: (s) => (stderr += s) });
  return { code, stdout, stderr };
};

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dwcp-cli-pbft-'));
  const log = createLogger('silent');
  server = await startAdminServer({
    socketPath: join(dir, 'admin.sock'),
    status: () => NODE_STATUS,
    logger: log,
    metrics: createMetrics({ defaultMetrics: false }),
    services: [pbftServiceRegistration({ group, log })],
  });
});

afterAll(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

describe('dwcpctl pbft status', () => {
  it('prints view, primary, executed, the stable checkpoint and the Byzantine drops', async () => {
    const { code, stdout, stderr } = await ctl('pbft', 'status');
    expect(stderr).toBe('');
    expect(code).toBe(0);
    expect(stdout).toContain('View:          3\n');
    expect(stdout).toContain('Primary:       n4\n');
    expect(stdout).toContain('Replicas:      n1, n2, n3, n4 (n = 4, tolerates f = 1 Byzantine)\n');
    expect(stdout).toContain('Checkpoint:    128 (stable; accepting up to 256)\n');
    expect(stdout).toMatch(/equivocation\s+2\s+yes/);
    expect(stdout).toMatch(/duplicate\s+5\n/);
    expect(stdout).not.toContain('bad_signature');
  });

  it('prints the proto fields with --json', async () => {
    const { code, stdout } = await ctl('pbft', 'status', '--json');
    expect(code).toBe(0);
    const s = JSON.parse(stdout) as Record<string, unknown>;
    expect(s).toMatchObject({ id: 'n2', view: 3, primary: 'n4', f: 1, last_executed: 130, stable_checkpoint: 128, client_in_flight: 1 });
  });

  it('refuses an unknown subcommand with a usage error', async () => {
    const { code, stderr } = await ctl('pbft', 'views');
    expect(code).toBe(2);
    expect(stderr).toContain('pbft needs a subcommand: status (got "views")');
  });
});
