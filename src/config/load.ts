/**
 * Resolves the daemon's configuration from, in rising precedence: embedded
 * defaults, the YAML file, DWCP_* environment variables, command-line flags.
 *
 * Everything is validated by one schema pass after merging, so a bad value is
 * reported the same way wherever it came from; the message names the field
 * path, the value and what was expected, and says which flag or variable set it.
 */
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { hostname } from 'node:os';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import type { z } from 'zod';
import { ConfigFileSchema, defaultTrust, type DwcpConfig } from './schema.ts';
import { defaultAdminSocket, defaultDataDir } from './paths.ts';
import { DwcpError } from '../errors.ts';
import { formatIssue, pathString } from './issues.ts';
import { readPolicyFiles, type PolicyFileSet } from '../policy/files.ts';
import { PolicyDocumentError } from '../policy/document.ts';

export { formatIssue, pathString };

export { defaultAdminSocket, defaultDataDir };

/** Settings that flags and environment variables may override. */
export interface ConfigOverrides {
  dataDir?: string;
  listen?: string[];
  adminSocket?: string;
  metricsListen?: string;
  logLevel?: string;
}

/** Where each override lives on the command line and in the environment. */
export const OVERRIDE_SOURCES: Record<keyof ConfigOverrides, { flag: string; env: string }> = {
  dataDir: { flag: '--data-dir', env: 'DWCP_DATA_DIR' },
  listen: { flag: '--listen', env: 'DWCP_LISTEN' },
  adminSocket: { flag: '--admin-socket', env: 'DWCP_ADMIN_SOCKET' },
  metricsListen: { flag: '--metrics-listen', env: 'DWCP_METRICS_LISTEN' },
  logLevel: { flag: '--log-level', env: 'DWCP_LOG_LEVEL' },
};

export class ConfigError extends DwcpError<'invalid'> {
  readonly problems: string[];
  constructor(source: string, problems: string[]) {
    super('invalid', `invalid configuration (${source}):\n  ${problems.join('\n  ')}`);
    this.problems = problems;
  }
}

export const DEFAULT_LISTEN = '/ip4/0.0.0.0/tcp/4777';
export const DEFAULT_METRICS_LISTEN = '127.0.0.1:9477';

/** The file a lone first node runs with when given none. */
export function defaultConfigFile(): Record<string, unknown> {
  const host = hostname().toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+|-+$/g, '').slice(0, 63);
  return { federation: 'local', node: { name: host || 'dwcp', region: 'local', provider: 'onprem' } };
}

/** Reads DWCP_* variables; DWCP_LISTEN takes a comma-separated list. */
export function overridesFromEnv(env: NodeJS.ProcessEnv): ConfigOverrides {
  const o: ConfigOverrides = {};
  for (const [key, { env: name }] of Object.entries(OVERRIDE_SOURCES) as [keyof ConfigOverrides, { env: string }][]) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    if (key === 'listen') o.listen = v.split(',').map((s) => s.trim()).filter(Boolean);
    else o[key] = v;
  }
  return o;
}

export interface ResolveInput {
  configPath?: string | undefined;
  flags?: ConfigOverrides;
  env?: NodeJS.ProcessEnv;
}

/** Reads and parses the YAML file, or throws ConfigError naming the file and line. */
export function readConfigFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    // "ENOENT: no such file or directory, open '/x'" -> "no such file or directory (ENOENT)"; the path is in the header.
    const why = e.code ? `${e.message.replace(/^[A-Z]+: /, '').replace(/, \w+( '.*')?$/, '')} (${e.code})` : String(err);
    throw new ConfigError(path, [`cannot read: ${why}`]);
  }
  try {
    return parseYaml(text, { uniqueKeys: true }) ?? {};
  } catch (err) {
    // The parser's first line ends with ':' before a source excerpt that is left out.
    const msg = err instanceof YAMLParseError ? err.message.split('\n')[0]!.replace(/:$/, '') : String(err);
    throw new ConfigError(path, [`not valid YAML: ${msg}`]);
  }
}

export function resolveConfig(input: ResolveInput = {}): DwcpConfig {
  const env = input.env ?? process.env;
  const configPath = input.configPath ?? (env.DWCP_CONFIG || undefined);
  const raw = configPath === undefined ? defaultConfigFile() : readConfigFile(configPath);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigError(configPath ?? 'defaults', ['(top level): expected a mapping of settings']);
  }
  const fromEnv = overridesFromEnv(env);
  const fromFlags = input.flags ?? {};
  const merged: Record<string, unknown> = { ...raw };
  const origin = new Map<string, string>();
  for (const [key, src] of Object.entries(OVERRIDE_SOURCES) as [keyof ConfigOverrides, { flag: string; env: string }][]) {
    if (fromEnv[key] !== undefined) {
      merged[key] = fromEnv[key];
      origin.set(key, src.env);
    }
    if (fromFlags[key] !== undefined) {
      merged[key] = fromFlags[key];
      origin.set(key, src.flag);
    }
  }
  const result = ConfigFileSchema.safeParse(merged, { reportInput: true });
  if (!result.success) {
    const label = (path: PropertyKey[]) => {
      const head = typeof path[0] === 'string' ? origin.get(path[0]) : undefined;
      return head ? `${head} (${pathString(path)})` : pathString(path);
    };
    throw new ConfigError(configPath ?? 'defaults', result.error.issues.map((i) => formatIssue(i, label)));
  }
  const f = result.data;
  const policies = policyFiles(f.policies, configPath);
  return {
    federation: f.federation,
    node: { ...f.node, trust: f.node.trust ?? defaultTrust(f.node.provider) },
    listen: f.listen ?? [DEFAULT_LISTEN],
    dataDir: f.dataDir ?? defaultDataDir(env),
    adminSocket: f.adminSocket ?? defaultAdminSocket(env),
    metricsListen: f.metricsListen ?? DEFAULT_METRICS_LISTEN,
    logLevel: f.logLevel ?? 'info',
    gcBudgetMiB: f.gcBudgetMiB,
    members: f.members.map((m) => ({ ...m, trust: m.trust ?? defaultTrust(m.provider) })),
    network: f.network,
    raft: f.raft,
    pbft: f.pbft,
    clouds: f.clouds,
    blob: f.blob,
    state: f.state,
    fleet: f.fleet,
    policies,
    dr: f.dr,
    cost: f.cost,
    budgets: f.budgets,
    burst: f.burst,
    configPath,
  };
}

/** The config's policy files, read and compiled; a problem is a ConfigError naming the file, policy, rule and position. */
function policyFiles(paths: readonly string[], configPath: string | undefined): PolicyFileSet {
  try {
    return readPolicyFiles(paths, configPath === undefined ? process.cwd() : dirname(configPath));
  } catch (err) {
    if (err instanceof PolicyDocumentError) throw new ConfigError(configPath ?? 'defaults', err.problems.map((p) => `policies: ${p}`));
    throw err;
  }
}
