/**
 * Codec choice by link mode: datacenter → LZ4, internet → zstd at the
 * configured level, hybrid → the cheapest `compress time + wire / bandwidth`
 * from EWMA estimates; small or incompressible payloads → none.
 */
import { describe, expect, it } from 'vitest';
import { chooseCodec, CodecMeasurements, DEFAULT_CODEC_CHOICE, Ewma, LinkEstimate, transferCost } from '../../src/codec/choice.ts';
import type { LinkMode } from '../../src/federation/link-mode.ts';

const MIB = 1024 ** 2;

function choose(mode: LinkMode, payloadBytes: number, bandwidth: number | null, codecs = new CodecMeasurements(), options = DEFAULT_CODEC_CHOICE) {
  return chooseCodec({ mode, payloadBytes, link: { bandwidth }, codecs, options });
}

describe('Ewma and LinkEstimate', () => {
  it('takes the first sample outright, then moves by alpha', () => {
    const e = new Ewma(0.5);
    expect(e.value).toBeNull();
    e.observe(10);
    e.observe(20);
    expect(e.value).toBe(15);
    expect(() => new Ewma(0)).toThrow(/alpha .* got 0/);
  });

  it('estimates bandwidth from transfers and ignores empty ones', () => {
    const link = new LinkEstimate(0.5);
    link.observeTransfer(0, 1);
    expect(link.bandwidth).toBeNull();
    link.observeTransfer(100 * MIB, 1);
    link.observeTransfer(50 * MIB, 1);
    expect(link.bandwidth).toBe(75 * MIB);
    link.observeRtt(20);
    expect(link.rttMs).toBe(20);
  });
});

describe('chooseCodec', () => {
  it('datacenter → lz4, internet → zstd 9 by default or the configured level', () => {
    expect(choose('datacenter', MIB, null)).toEqual({ name: 'lz4' });
    expect(choose('internet', MIB, null)).toEqual({ name: 'zstd', level: 9 });
    expect(choose('internet', MIB, null, undefined, { ...DEFAULT_CODEC_CHOICE, internetZstdLevel: 15 })).toEqual({ name: 'zstd', level: 15 });
  });

  it('small payloads go uncompressed in every mode', () => {
    for (const mode of ['datacenter', 'internet', 'hybrid'] as const) expect(choose(mode, 100, 1e6)).toEqual({ name: 'none' });
    expect(choose('internet', 100, 1e6, undefined, { ...DEFAULT_CODEC_CHOICE, minCompressBytes: 64 })).toEqual({ name: 'zstd', level: 9 });
  });

  it('a measured ratio near 1 (incompressible) means none', () => {
    const codecs = new CodecMeasurements();
    codecs.observe({ name: 'lz4' }, MIB, MIB + 100, 0.001);
    expect(choose('datacenter', MIB, null, codecs)).toEqual({ name: 'none' });
    codecs.observe({ name: 'zstd', level: 9 }, MIB, MIB / 3, 0.01);
    expect(choose('internet', MIB, null, codecs)).toEqual({ name: 'zstd', level: 9 });
  });

  it('hybrid: a slow link picks the strongest codec, a fast link a fast one, a very fast link none', () => {
    const codecs = new CodecMeasurements();
    codecs.observe({ name: 'lz4' }, MIB, MIB / 2, MIB / 800e6);
    codecs.observe({ name: 'zstd', level: 1 }, MIB, MIB * 0.4, MIB / 400e6);
    codecs.observe({ name: 'zstd', level: 3 }, MIB, MIB * 0.38, MIB / 250e6);
    codecs.observe({ name: 'zstd', level: 9 }, MIB, MIB * 0.3, MIB / 50e6);
    expect(choose('hybrid', 64 * MIB, 1e6, codecs)).toEqual({ name: 'zstd', level: 9 });
    expect(choose('hybrid', 64 * MIB, 200e6, codecs)).toEqual({ name: 'lz4' });
    expect(choose('hybrid', 64 * MIB, 50e9, codecs)).toEqual({ name: 'none' });
  });

  it('hybrid: the choice minimises transferCost over the candidates', () => {
    const codecs = new CodecMeasurements();
    const bandwidth = 30e6;
    const chosen = choose('hybrid', 8 * MIB, bandwidth, codecs);
    const costs = DEFAULT_CODEC_CHOICE.hybridCandidates.map((c) => transferCost(8 * MIB, codecs.performance(c), bandwidth));
    expect(transferCost(8 * MIB, codecs.performance(chosen), bandwidth)).toBe(Math.min(...costs));
  });

  it('hybrid without a bandwidth estimate falls back to lz4', () => {
    expect(choose('hybrid', MIB, null)).toEqual({ name: 'lz4' });
  });

  it('hybrid re-decides as measurements change', () => {
    const codecs = new CodecMeasurements(1);
    const before = choose('hybrid', 64 * MIB, 2e6, codecs);
    codecs.observe({ name: 'zstd', level: 9 }, MIB, MIB * 0.99, 1); // suddenly slow and useless
    const after = choose('hybrid', 64 * MIB, 2e6, codecs);
    expect(before).toEqual({ name: 'zstd', level: 9 });
    expect(after).not.toEqual({ name: 'zstd', level: 9 });
  });
});
