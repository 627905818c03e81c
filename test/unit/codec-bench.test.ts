/**
 * Keeps bench/codec.ts from rotting: runs it through the bench CLI with tiny
 * sizes and checks the JSON document. Needs the `lz4` and `zstd` commands
 * (Debian packages); without them the test is skipped with a warning, except
 * under CI=true, where their absence is a failure. Says nothing about speed.
 */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { positive, runBench } from '../support/bench-cli.ts';

function hasTool(tool: string): boolean {
  try {
    execFileSync(tool, ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const missing = ['lz4', 'zstd'].filter((t) => !hasTool(t));
const skip = missing.length > 0 && process.env.CI !== 'true';
if (skip) console.warn(`codec bench smoke test SKIPPED: ${missing.join(', ')} not installed (apt-get install lz4 zstd)`);

describe('bench codec', () => {
  it.skipIf(skip)('prints one JSON document with ours vs CLI for lz4 and each zstd level', async () => {
    const { code, stdout, stderr } = await runBench(['codec', '--size-mb', '0.5', '--block-mb', '0.125', '--zstd-levels', '1,9', '--repeat', '1']);
    expect(code, stderr).toBe(0);
    const result = JSON.parse(stdout) as { cases: { speed_ratio_compress: number; ours_compress_mib_s: number; cli_compress_mib_s: number }[] };
    const oneCase = {
      ours_compress_mib_s: positive,
      cli_compress_mib_s: positive,
      ours_decompress_mib_s: positive,
      cli_decompress_mib_s: positive,
      speed_ratio_compress: positive,
      speed_ratio_decompress: positive,
      ours_compression_ratio: expect.toSatisfy((v: unknown) => typeof v === 'number' && v > 1.5),
      cli_compression_ratio: expect.toSatisfy((v: unknown) => typeof v === 'number' && v > 1.5),
      meets_floor: expect.any(Boolean),
    };
    expect(result).toMatchObject({
      bench: 'codec',
      options: { size_bytes: 524288, block_bytes: 131072, zstd_levels: [1, 9], repeat: 1, seed: 1 },
      tools: { lz4: expect.stringContaining('LZ4'), zstd: expect.stringContaining('Zstandard') },
      cli_startup_ms: { lz4: positive, zstd: positive },
      cases: [
        { codec: 'lz4', level: 1, ...oneCase },
        { codec: 'zstd', level: 1, ...oneCase },
        { codec: 'zstd', level: 9, ...oneCase },
      ],
    });
    for (const c of result.cases) expect(Math.abs(c.speed_ratio_compress / (c.ours_compress_mib_s / c.cli_compress_mib_s) - 1)).toBeLessThan(0.01);
  });

  it('refuses a bad zstd level by flag name', async () => {
    const { code, stderr } = await runBench(['codec', '--zstd-levels', '1,30']);
    expect(code).toBe(2);
    expect(stderr).toContain('--zstd-levels');
  });
});
