import { describe, expect, it } from 'vitest';
import { DwcpError } from '../../src/errors.ts';
import { LateImageSource } from '../../src/cloud/qemu/late-image-source.ts';
import type { GuestImage } from '../../src/cloud/qemu/image-source.ts';

describe('LateImageSource', () => {
  it('fails unavailable naming the image until bound, then forwards every call; binds once', async () => {
    const late = new LateImageSource();
    const early = await late.materialise('tiny').catch((err: unknown) => err);
    expect(early).toBeInstanceOf(DwcpError);
    expect(early).toMatchObject({ code: 'unavailable', retryable: true });
    expect(String((early as Error).message)).toContain('image tiny');
    const image: GuestImage = { kind: 'kernel', name: 'tiny', sha256: 'ab'.repeat(32), kernel: '/k', initrd: '/i', cmdline: 'console=ttyS0' };
    const asked: string[] = [];
    late.bind({ materialise: async (name) => (asked.push(name), image) });
    await expect(late.materialise('tiny')).resolves.toBe(image);
    expect(asked).toEqual(['tiny']);
    expect(() => late.bind({ materialise: async () => image })).toThrow(/already bound/);
  });
});
