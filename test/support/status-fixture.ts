/** A NodeStatus shared by the admin and CLI tests: one unreachable cloud member, one connected datacenter. */
import type { MemberStatus, NodeStatus } from '../../src/federation/status.ts';

export const BETA: MemberStatus = {
  name: 'beta',
  peerId: '12D3KooWZyXwVuTsRqPoNmLkJiHgFeDcBa9876543210zyxwvu',
  region: 'us-east-1',
  provider: 'aws',
  trust: 'untrusted',
  addrs: ['/dns4/beta.example/tcp/4777'],
  connected: false,
  rttMs: null,
  linkMode: 'internet',
  lastSeen: null,
  lastError: 'dial timeout',
};

export const GAMMA: MemberStatus = {
  name: 'gamma',
  peerId: '12D3KooWGammaGammaGammaGammaGammaGammaGammaGamma1',
  region: 'eu-central',
  provider: 'private',
  trust: 'trusted',
  addrs: [],
  connected: true,
  rttMs: 0,
  linkMode: 'datacenter',
  lastSeen: '2026-01-02T04:00:00.000Z',
  lastError: null,
};

export const NODE_STATUS: NodeStatus = {
  name: 'alpha',
  peerId: '12D3KooWAbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdef',
  region: 'eu-west',
  provider: 'onprem',
  trust: 'trusted',
  federation: 'acme',
  version: '0.1.0',
  listenAddrs: ['/ip4/127.0.0.1/tcp/4777'],
  startedAt: '2026-01-02T03:04:05.000Z',
  uptimeSeconds: 3725.5,
  members: [BETA, GAMMA],
  scopes: [
    { scope: 'datacenter', protocol: 'raft', replicas: 3 },
    { scope: 'federation', protocol: 'raft', replicas: 3 },
  ],
};
