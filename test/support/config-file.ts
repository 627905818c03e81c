/**
 * Config-file fixtures for tests that resolve a configuration the way the
 * daemon does (resolveConfig on a YAML file): a scratch directory of numbered
 * files, a member line in the flow style the examples use, and the
 * ConfigError a bad file must produce. The same shapes as the local helpers
 * of test/unit/config.test.ts, which may move here.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError } from '../../src/config/load.ts';

export interface ConfigScratch {
  /** Writes `text` to a new file in the scratch directory and returns its path. */
  file(text: string): string;
  remove(): void;
}

export function configScratch(prefix = 'dwcp-config-'): ConfigScratch {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  let files = 0;
  return {
    file(text) {
      const path = join(dir, `config-${++files}.yaml`);
      writeFileSync(path, text);
      return path;
    },
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** One `members:` list entry; `extra` adds fields, e.g. `, trust: untrusted`. */
export function memberLine(name: string, peerId: string, provider: string, extra = ''): string {
  return `  - {name: ${name}, peerId: ${peerId}, region: r-${name}, provider: ${provider}${extra}}\n`;
}

/** The ConfigError `run` throws, or a failure if it throws none. */
export function configError(run: () => unknown): ConfigError {
  try {
    run();
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError, but the configuration resolved');
}
