/** The VM spec: validation names the field, normalisation, parseSize. */
import { describe, expect, it } from 'vitest';
import { FleetSpecError, checkFleetVmSpec, formatSize, parseFleetVmSpec, parseSize } from '../../src/fleet/spec.ts';
import { GIB } from './fleet-fixtures.ts';

const base = { name: 'web1', vcpus: 2, memoryBytes: 4 * GIB, image: 'base' };

function problems(input: unknown): readonly string[] {
  const checked = checkFleetVmSpec(input);
  return checked.ok ? [] : checked.problems;
}

describe('fleet spec validation', () => {
  it('fills defaults and accepts a minimal spec', () => {
    expect(parseFleetVmSpec(base)).toEqual({ ...base, diskBytes: 0, labels: {}, spot: false, priority: 0, constraints: {} });
  });

  it.each([
    [{ ...base, vcpus: 0 }, 'spec.vcpus: 0 is too small: expected at least 1'],
    [{ ...base, vcpus: 1.5 }, 'spec.vcpus: 1.5 is not an integer'],
    [{ ...base, name: 'Web_1' }, 'spec.name: "Web_1" is not a lowercase DNS label'],
    [{ ...base, memoryBytes: undefined }, 'spec.memoryBytes: missing, expected a number'],
    [{ ...base, image: 'has space' }, 'spec.image: "has space" is not an image name'],
    [{ ...base, constraints: { maxHourlyUsd: 5000 } }, 'spec.constraints.maxHourlyUsd: 5000 is too large: expected at most 1000'],
    [{ ...base, constraints: { maxHourlyUsd: -1 } }, 'spec.constraints.maxHourlyUsd: -1 is too small'],
    [{ ...base, constraints: { regions: ['eu-west', 'eu-west'] } }, 'spec.constraints.regions[1]: "eu-west" is listed twice'],
    [{ ...base, constraints: { regions: [] } }, 'spec.constraints.regions: [] is too short: expected at least 1 item'],
    [{ ...base, constraints: { maxRtt: { region: 'eu-west' } } }, 'spec.constraints.maxRtt.ms: missing, expected a number'],
    [{ ...base, constraints: { antiAffinityGroup: 'A' } }, 'spec.constraints.antiAffinityGroup: "A" is not a lowercase DNS label'],
    [{ ...base, constraints: { colour: 'red' } }, 'spec.constraints.colour: unknown key'],
    [{ ...base, labels: { 'Bad Key': 'x' } }, 'spec.labels'],
    [{ ...base, priority: 1001 }, 'spec.priority: 1001 is too large: expected at most 1000'],
  ])('names the field: %j', (input, expected) => {
    const found = problems(input);
    expect(found.some((p) => p.startsWith(expected)), `${JSON.stringify(found)} lacks ${expected}`).toBe(true);
  });

  it('reports every bad field at once, under the root it is given', () => {
    const checked = checkFleetVmSpec({ name: 'x', vcpus: 0, memoryBytes: 1, image: '' }, 'command.spec');
    expect(checked.ok).toBe(false);
    if (!checked.ok) expect(checked.problems.map((p) => p.split(':')[0])).toEqual(['command.spec.vcpus', 'command.spec.memoryBytes', 'command.spec.image']);
  });

  it('throws FleetSpecError carrying the problems', () => {
    expect(() => parseFleetVmSpec({ ...base, vcpus: -1 })).toThrow(FleetSpecError);
    try {
      parseFleetVmSpec({ ...base, vcpus: -1 });
    } catch (err) {
      expect((err as FleetSpecError).problems).toEqual(['spec.vcpus: -1 is too small: expected at least 1']);
    }
  });

  it('normalises order: constraint lists sorted, label maps by key', () => {
    const a = parseFleetVmSpec({ ...base, labels: { b: '2', a: '1' }, constraints: { regions: ['us-east', 'eu-west'], compliance: ['soc2', 'gdpr'] } });
    expect(a.constraints.regions).toEqual(['eu-west', 'us-east']);
    expect(a.constraints.compliance).toEqual(['gdpr', 'soc2']);
    expect(Object.keys(a.labels)).toEqual(['a', 'b']);
  });
});

describe('parseSize', () => {
  it.each([
    ['4GiB', 4 * GIB],
    ['512MiB', 512 * 1024 ** 2],
    ['1.5GiB', 1.5 * GIB],
    ['1TiB', 1024 ** 4],
    ['10GB', 10e9],
    ['4G', 4 * GIB],
    ['4gib', 4 * GIB],
    ['1024', 1024],
    [' 2 MiB ', 2 * 1024 ** 2],
  ])('%s is %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each([
    ['', 'is not a size'],
    ['GiB', 'is not a size'],
    ['-1GiB', 'is not a size'],
    ['4 gigs', 'has an unknown unit "gigs"'],
    ['4XB', 'has an unknown unit "XB"'],
    ['1.3B', 'is not a whole number of bytes'],
    ['99999999999PiB', 'is too large'],
  ])('refuses %j: %s', (text, message) => {
    expect(() => parseSize(text)).toThrow(message);
  });

  it('formats sizes back', () => {
    expect(formatSize(4 * GIB)).toBe('4 GiB');
    expect(formatSize(1536 * 1024 ** 2)).toBe('1536 MiB');
    expect(formatSize(100)).toBe('100 B');
  });
});
