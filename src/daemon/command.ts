/**
 * The `dwcpd` command line (entered through main.ts): `run` (the default) starts the daemon; `id` prints this
 * node's peer ID; `init` writes a node key and a starter config.
 *
 * Exit codes: 0 after a clean stop, 1 on a runtime failure, 2 on bad usage,
 * 78 (EX_CONFIG) on an invalid configuration, which the systemd unit lists in
 * RestartPreventExitStatus so a bad file does not cause a restart loop.
 */
import { parseArgs } from 'node:util';
import { writeFile, mkdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { ConfigError, defaultConfigFile, defaultDataDir, resolveConfig, DEFAULT_LISTEN, type ConfigOverrides } from '../config/load.ts';
import { createLogger } from '../log.ts';
import { Daemon, STOP_BUDGET_MS } from './daemon.ts';
import { startHeapBudget } from './heap-budget.ts';
import { loadOrCreateIdentity } from './identity.ts';
import { VERSION } from './version.ts';

const EXIT_USAGE = 2;
const EXIT_CONFIG = 78;

const USAGE = `usage: dwcpd [run] [--config FILE] [--data-dir DIR] [--listen MULTIADDR]... [--admin-socket PATH]
             [--metrics-listen HOST:PORT] [--log-level LEVEL]
       dwcpd id [--data-dir DIR]            print this node's peer ID (creates the key if absent)
       dwcpd init [--data-dir DIR] [--config FILE] [--federation ID] [--name NAME] [--region REGION]
                  [--provider onprem|private|aws|gcp|azure|oracle] [--listen MULTIADDR]
       dwcpd version | help

Every flag has an environment equivalent: DWCP_CONFIG, DWCP_DATA_DIR, DWCP_LISTEN (comma-separated),
DWCP_ADMIN_SOCKET, DWCP_METRICS_LISTEN, DWCP_LOG_LEVEL. Flags override the environment, which
overrides the config file, which overrides the embedded defaults.`;

const OPTIONS = {
  config: { type: 'string' },
  'data-dir': { type: 'string' },
  listen: { type: 'string', multiple: true },
  'admin-socket': { type: 'string' },
  'metrics-listen': { type: 'string' },
  'log-level': { type: 'string' },
  federation: { type: 'string' },
  name: { type: 'string' },
  region: { type: 'string' },
  provider: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

class UsageError extends Error {}

function overrides(flags: Flags): ConfigOverrides {
  const o: ConfigOverrides = {};
  if (flags['data-dir'] !== undefined) o.dataDir = flags['data-dir'];
  if (flags.listen !== undefined) o.listen = flags.listen;
  if (flags['admin-socket'] !== undefined) o.adminSocket = flags['admin-socket'];
  if (flags['metrics-listen'] !== undefined) o.metricsListen = flags['metrics-listen'];
  if (flags['log-level'] !== undefined) o.logLevel = flags['log-level'];
  return o;
}

function onlyFor(command: string, flags: Flags, allowed: (keyof Flags)[]): void {
  for (const key of Object.keys(flags) as (keyof Flags)[]) {
    if (!allowed.includes(key) && key !== 'help') throw new UsageError(`--${key} is not an option of "dwcpd ${command}"`);
  }
}

/** sysexits EX_SOFTWARE: an internal failure, not a config problem; systemd restarts it. */
const EXIT_SOFTWARE = 70;

async function run(flags: Flags): Promise<number> {
  onlyFor('run', flags, ['config', 'data-dir', 'listen', 'admin-socket', 'metrics-listen', 'log-level']);
  const resolveInput = { configPath: flags.config, flags: overrides(flags), env: process.env };
  const config = resolveConfig(resolveInput);
  const log = createLogger(config.logLevel);
  process.on('unhandledRejection', (err) => {
    // A stray rejection from a peer's misbehaviour must not take the region down; it is logged loudly.
    log.error({ err: err instanceof Error ? err.stack : String(err) }, 'unhandled promise rejection');
  });
  process.on('uncaughtException', (err) => {
    log.fatal({ err: err.stack }, 'uncaught exception; exiting');
    process.exit(1);
  });

  // Signal handlers go in before start-up: systemd may send SIGTERM the moment READY=1 is out,
  // and a stop requested mid-start must still be graceful once start-up finishes.
  let daemon: Daemon | undefined;
  const stopped = Promise.withResolvers<number>();
  let stopSignal: string | undefined;
  const stop = (signal: string) => {
    if (stopSignal) {
      log.warn({ signal }, 'second stop signal; exiting now');
      process.exit(1);
    }
    stopSignal = signal;
    log.info({ signal }, 'stopping');
    const hard = setTimeout(() => {
      log.error({ budgetMs: STOP_BUDGET_MS + 1_000 }, 'graceful stop took too long; exiting');
      process.exit(1);
    }, STOP_BUDGET_MS + 1_000);
    hard.unref();
    if (daemon) void daemon.stop().then(() => stopped.resolve(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    if (!daemon) return log.warn('SIGHUP during start-up ignored');
    try {
      void daemon.reload(resolveConfig(resolveInput)).catch((err: Error) => log.error({ err: err.message }, 'reload failed'));
    } catch (err) {
      log.error({ err: (err as Error).message }, 'reload refused: the configuration is invalid; keeping the running one');
    }
  });

  // Per process, not per Daemon (tests host several daemons in one process): see heap-budget.ts. Off unless configured.
  const heapBudget = config.gcBudgetMiB === 0 ? null : startHeapBudget(log, config.gcBudgetMiB * 1024 * 1024);
  void stopped.promise.then(() => heapBudget?.stop());

  try {
    daemon = await Daemon.start(config, log);
  } catch (err) {
    log.fatal({ err: (err as Error).message }, 'dwcpd failed to start');
    process.stderr.write(`dwcpd: ${(err as Error).message}\n`);
    // A bad file found while starting (the pricing catalog, say) is a config problem too: systemd must not restart into it.
    return err instanceof ConfigError ? EXIT_CONFIG : 1;
  }
  if (stopSignal) void daemon.stop().then(() => stopped.resolve(0));
  void daemon.fatal.then((err) => {
    log.fatal({ err: err.message }, 'a component failed; stopping so the supervisor restarts dwcpd from its data');
    void daemon.stop().then(() => stopped.resolve(EXIT_SOFTWARE));
  });
  return stopped.promise;
}

async function printId(flags: Flags): Promise<number> {
  onlyFor('id', flags, ['data-dir', 'config']);
  const dataDir = flags['data-dir'] ?? (flags.config ? resolveConfig({ configPath: flags.config }).dataDir : (process.env.DWCP_DATA_DIR ?? defaultDataDir()));
  const identity = await loadOrCreateIdentity(dataDir);
  process.stdout.write(`${identity.peerId.toString()}\n`);
  return 0;
}

async function init(flags: Flags): Promise<number> {
  onlyFor('init', flags, ['data-dir', 'config', 'federation', 'name', 'region', 'provider', 'listen']);
  const dataDir = resolve(flags['data-dir'] ?? process.env.DWCP_DATA_DIR ?? defaultDataDir());
  const configPath = resolve(flags.config ?? join(dataDir, 'dwcpd.yaml'));
  const defaults = defaultConfigFile() as { federation: string; node: { name: string; region: string; provider: string } };
  const file = {
    federation: flags.federation ?? defaults.federation,
    node: {
      name: flags.name ?? defaults.node.name,
      region: flags.region ?? defaults.node.region,
      provider: flags.provider ?? defaults.node.provider,
    },
    listen: flags.listen ?? [DEFAULT_LISTEN],
    dataDir,
    members: [],
  };
  const text = `# dwcpd starter configuration, written by "dwcpd init". Add the other members under "members:",
# each with name, peerId (from "dwcpd id" on that node), region, provider and addrs.
${stringify(file)}`;
  await mkdir(dirname(configPath), { recursive: true, mode: 0o700 });
  try {
    await writeFile(configPath, text, { flag: 'wx', mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') throw new UsageError(`${configPath} already exists; not overwriting it`);
    throw err;
  }
  const config = resolveConfig({ configPath, env: {} });
  const identity = await loadOrCreateIdentity(config.dataDir);
  process.stdout.write(`${JSON.stringify({ peerId: identity.peerId.toString(), config: configPath, key: identity.keyPath, created: identity.created })}\n`);
  return 0;
}

async function main(argv: string[]): Promise<number> {
  const { values: flags, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  const command = positionals[0] ?? 'run';
  if (positionals.length > 1) throw new UsageError(`unexpected argument "${positionals[1]}"`);
  if (flags.help || command === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  switch (command) {
    case 'run':
      return run(flags);
    case 'id':
      return printId(flags);
    case 'init':
      return init(flags);
    case 'version':
      process.stdout.write(`dwcpd ${VERSION}\n`);
      return 0;
    default:
      throw new UsageError(`unknown command "${command}"`);
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`dwcpd: ${err.message}\n`);
      process.exit(EXIT_CONFIG);
    }
    const usage = err instanceof UsageError || (err as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
    process.stderr.write(`dwcpd: ${(err as Error).message}\n${usage ? 'run "dwcpd help" for usage\n' : ''}`);
    process.exit(usage ? EXIT_USAGE : 1);
  },
);
