/**
 * How dwcpctl prints admin responses: aligned plain-text tables for people,
 * pretty JSON for scripts. Pure functions of the response, so the output is
 * tested without a daemon.
 *
 * Invariants: JSON keys are exactly the .proto field names (snake_case), with
 * null for unknown values; tables have no trailing whitespace and show an
 * unknown value as "-" rather than a misleading 0.
 */
import type { MemberInfo, ScopeInfo, StatusResponse } from '../admin/schema.ts';

const COLUMN_GAP = '  ';
const UNKNOWN = '-';

export function formatJson(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** Left-aligned columns as wide as their widest cell; the last column is not padded. */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    widths
      .map((w, i) => (cells[i] ?? '').padEnd(w))
      .join(COLUMN_GAP)
      .trimEnd();
  return [line(headers), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

/** "Label:  value" lines, values aligned; a multi-line value continues under its first line. */
export function renderFields(fields: readonly (readonly [string, string])[]): string {
  const width = Math.max(...fields.map(([label]) => label.length + 1));
  const indent = ' '.repeat(width + COLUMN_GAP.length);
  return fields
    .map(([label, value]) => `${`${label}:`.padEnd(width)}${COLUMN_GAP}${value.split('\n').join(`\n${indent}`)}`.trimEnd())
    .map((l) => `${l}\n`)
    .join('');
}

/**
 * Ed25519 peer IDs all start "12D3KooW", so a prefix alone does not tell two
 * apart: keep a little more than the prefix and the tail.
 */
export function shortPeerId(peerId: string): string {
  return peerId.length <= 21 ? peerId : `${peerId.slice(0, 12)}...${peerId.slice(-6)}`;
}

export function formatRtt(rttMs: number | null): string {
  if (rttMs === null) return UNKNOWN;
  const digits = rttMs < 10 ? 2 : rttMs < 100 ? 1 : 0;
  return `${rttMs.toFixed(digits)} ms`;
}

/** "3d 4h 5m 6s", dropping leading zero units; whole seconds. */
export function formatDuration(totalSeconds: number): string {
  let rest = Math.max(0, Math.floor(totalSeconds));
  const parts: string[] = [];
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60]] as const) {
    const n = Math.floor(rest / size);
    rest -= n * size;
    if (n > 0 || parts.length > 0) parts.push(`${n}${unit}`);
  }
  parts.push(`${rest}s`);
  return parts.join(' ');
}

export const MEMBER_COLUMNS = ['NAME', 'PEER', 'REGION', 'TRUST', 'CONNECTED', 'RTT', 'LINK', 'HEALTH', 'PHI'] as const;

/** Suspicion with one decimal, "-" before the first heartbeat. */
export function formatPhi(phi: number | null): string {
  return phi === null ? UNKNOWN : phi.toFixed(1);
}

export function formatMembers(members: readonly MemberInfo[]): string {
  if (members.length === 0) return '(no members configured)\n';
  return renderTable(
    MEMBER_COLUMNS,
    members.map((m) => [m.name, shortPeerId(m.peer_id), m.region, m.trust, m.connected ? 'yes' : 'no', formatRtt(m.rtt_ms), m.link_mode, m.health, formatPhi(m.phi)]),
  );
}

export function formatStatus(s: StatusResponse): string {
  const header = renderFields([
    ['Node', s.name],
    ['Peer ID', s.peer_id],
    ['Region', s.region],
    ['Provider', s.provider],
    ['Trust', s.trust],
    ['Federation', s.federation],
    ['Version', s.version],
    ['Listen', s.listen_addrs.length > 0 ? s.listen_addrs.join('\n') : UNKNOWN],
    ['Uptime', `${formatDuration(s.uptime_seconds)} (since ${s.started_at})`],
  ]);
  const scopes = s.scopes.length === 0 ? '' : `\n${formatScopes(s.scopes)}`;
  return `${header}${scopes}\n${formatMembers(s.members)}`;
}

/** Which log serves each write scope here, e.g. "federation  pbft  5 replicas". */
export function formatScopes(scopes: readonly ScopeInfo[]): string {
  return renderTable(
    ['SCOPE', 'PROTOCOL', 'REPLICAS'],
    scopes.map((x) => [x.scope, x.protocol, x.protocol === 'none' ? UNKNOWN : String(x.replicas)]),
  );
}

/**
 * Word-wraps `text` to `width` columns: the first line after `firstIndent`,
 * the rest after `restIndent`. A word longer than a line (a socket path) gets
 * a line of its own rather than being cut.
 */
export function wrapText(text: string, width: number, firstIndent: string, restIndent: string): string[] {
  const lines: string[] = [];
  let line = firstIndent;
  let empty = true;
  for (const word of text.split(/ +/)) {
    if (!empty && line.length + 1 + word.length > width) {
      lines.push(line);
      line = restIndent;
      empty = true;
    }
    line += empty ? word : ` ${word}`;
    empty = false;
  }
  lines.push(line);
  return lines;
}
