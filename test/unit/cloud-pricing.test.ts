/**
 * The pricing catalog and cost model: the shipped files load and answer for
 * every provider; hourly, total and monthly (730 h) costs under each model;
 * unknown combinations fail listing what is known; live spot prices replace
 * the files' typical ones; and a bad file fails the load naming the file and
 * the field.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/config/load.ts';
import { HOURS_PER_MONTH, PricingCatalog, PricingError } from '../../src/cloud/pricing/catalog.ts';

const dirs: string[] = [];
afterEach(() => dirs.splice(0).forEach((d) => rmSync(d, { recursive: true, force: true })));

/** A catalog directory holding exactly these files. */
function catalogDir(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'dwcp-pricing-'));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const HEADER = `provider: aws
currency: USD
asOf: "2025-01-01"
source: a test price list, made up
models: { onDemand: on-demand, spot: spot, reserved: 1-year reserved }
`;

function loadError(files: Record<string, string>): string {
  try {
    PricingCatalog.load(catalogDir(files));
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as Error).message;
  }
  throw new Error('the catalog loaded');
}

describe('shipped pricing catalog', () => {
  const catalog = PricingCatalog.load();

  it('prices AWS, GCP, Azure and Oracle in several regions, each file dated and sourced', () => {
    expect(catalog.providers().sort()).toEqual(['aws', 'azure', 'gcp', 'oracle']);
    expect(catalog.regions('aws')).toEqual(expect.arrayContaining(['us-east-1', 'us-west-2', 'eu-west-1']));
    expect(catalog.regions('gcp')).toEqual(expect.arrayContaining(['us-central1', 'europe-west1']));
    expect(catalog.types('aws', 'us-east-1').length).toBeGreaterThanOrEqual(15);
    for (const file of catalog.files) {
      expect(file.asOf).toMatch(/^\d{4}-\d{2}-\d{2}$/);
      expect(file.source.length).toBeGreaterThan(10);
    }
  });

  it('gives hourly, total and monthly cost per pricing model', () => {
    const onDemand = catalog.estimate({ provider: 'aws', region: 'us-east-1', type: 't3.medium', model: 'on-demand', hours: 720 });
    expect(onDemand).toMatchObject({ hourly: 0.0416, hours: 720, total: 29.952, monthly: 30.368, currency: 'USD', asOf: '2025-01-01', live: false });
    expect(onDemand.source).toMatch(/^aws-2025-01\.yaml: /);
    expect(onDemand.basis).toContain('On-Demand');
    const reserved = catalog.estimate({ provider: 'aws', region: 'us-east-1', type: 't3.medium', model: 'reserved' });
    expect(reserved).toMatchObject({ hourly: 0.026, hours: HOURS_PER_MONTH, total: 18.98, monthly: 18.98 });
    const spot = catalog.estimate({ provider: 'gcp', region: 'us-central1', type: 'e2-medium', model: 'spot', hours: 10 });
    expect(spot.hourly).toBeLessThan(catalog.quote({ provider: 'gcp', region: 'us-central1', type: 'e2-medium', model: 'on-demand' }).hourly);
    expect(spot.total).toBe(Math.round(spot.hourly * 10 * 10_000) / 10_000);
  });

  it('fails unknown combinations listing what it knows at that level', () => {
    const fail = (query: Parameters<PricingCatalog['quote']>[0]) => {
      try {
        catalog.quote(query);
      } catch (err) {
        expect(err).toBeInstanceOf(PricingError);
        return err as PricingError;
      }
      throw new Error('quoted');
    };
    expect(fail({ provider: 'ibm', region: 'x', type: 'y', model: 'on-demand' }).message).toBe('no prices for provider "ibm"; the catalog prices aws, azure, gcp, oracle');
    expect(fail({ provider: 'aws', region: 'mars-1', type: 't3.medium', model: 'on-demand' }).message).toMatch(/^no aws prices for region "mars-1"; the catalog prices aws in .*us-east-1/);
    const type = fail({ provider: 'aws', region: 'us-east-1', type: 't9.huge', model: 'on-demand' });
    expect(type.reason).toBe('unknown');
    expect(type.message).toMatch(/^no aws price for type "t9.huge" in us-east-1; the catalog prices there c5\.large, .*t3\.medium/);
    expect(fail({ provider: 'oracle', region: 'us-ashburn-1', type: 'VM.Standard.E4.Flex.1x16', model: 'reserved' }).message).toBe(
      'no reserved price for oracle VM.Standard.E4.Flex.1x16 in us-ashburn-1 (oracle-2025-01.yaml); priced models: on-demand, spot',
    );
    expect(fail({ provider: 'aws', region: 'us-east-1', type: 't3.medium', model: 'lease' as 'spot' }).reason).toBe('invalid');
    expect(() => catalog.estimate({ provider: 'aws', region: 'us-east-1', type: 't3.medium', model: 'spot', hours: 0 })).toThrow(/^hours: 0 is not a number of hours above 0/);
    expect(() => catalog.estimate({ provider: 'aws', region: 'us-east-1', type: 't3.medium', model: 'spot', hours: 1e6 })).toThrow(/at most 87600/);
  });
});

describe('live spot prices', () => {
  it('replace the file price for known types and say where they came from; unknown types are ignored', () => {
    const catalog = PricingCatalog.load(catalogDir({ 'aws.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: 0.0104, spot: 0.004 }\n` }));
    const observedAt = new Date('2025-06-01T12:00:00Z');
    const { recorded, ignored } = catalog.recordSpotPrices('aws', 'us-east-1', [
      { type: 't3.micro', pricePerHour: 0.0031, observedAt },
      { type: 'x1.32xlarge', pricePerHour: 4, observedAt },
    ], 'live: test feed');
    expect({ recorded, ignored }).toEqual({ recorded: 1, ignored: ['x1.32xlarge'] });
    expect(catalog.quote({ provider: 'aws', region: 'us-east-1', type: 't3.micro', model: 'spot' })).toMatchObject({
      hourly: 0.0031,
      live: true,
      asOf: '2025-06-01T12:00:00.000Z',
      source: 'live: test feed',
    });
    expect(catalog.quote({ provider: 'aws', region: 'us-east-1', type: 't3.micro', model: 'on-demand' }).hourly).toBe(0.0104);
    expect(catalog.types('aws', 'us-east-1')).toEqual(['t3.micro']);
  });
});

describe('pricing file validation', () => {
  it('names the file and the field of a bad price', () => {
    const message = loadError({ 'aws-bad.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: -0.01 }\n` });
    expect(message).toMatch(/^invalid configuration \(.*\/aws-bad\.yaml\):\n {2}regions\.us-east-1\.t3\.micro\.onDemand: -0\.01 is too small: expected more than 0$/);
  });

  it('refuses spot or reserved above on-demand, unknown keys, a wrong currency and undated files', () => {
    expect(loadError({ 'a.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: 0.01, reserved: 0.02 }\n` })).toContain(
      'regions.us-east-1.t3.micro.reserved: 0.02 is above the on-demand price 0.01',
    );
    expect(loadError({ 'a.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: 0.01, preemptible: 0.001 }\n` })).toContain(
      'regions.us-east-1.t3.micro.preemptible: unknown key',
    );
    expect(loadError({ 'a.yaml': `${HEADER.replace('USD', 'EUR')}regions:\n  r1:\n    t: { onDemand: 1 }\n` })).toContain('currency: "EUR" is not one of USD');
    expect(loadError({ 'a.yaml': `${HEADER.replace('"2025-01-01"', 'last spring')}regions:\n  r1:\n    t: { onDemand: 1 }\n` })).toContain(
      'asOf: "last spring" is not a date as YYYY-MM-DD',
    );
  });

  it('wants a meaning for every price column it uses', () => {
    const header = HEADER.replace('models: { onDemand: on-demand, spot: spot, reserved: 1-year reserved }', 'models: { onDemand: on-demand }');
    expect(loadError({ 'a.yaml': `${header}regions:\n  r1:\n    t: { onDemand: 1, spot: 0.5 }\n` })).toContain(
      'models.spot: missing (required: regions.r1.t.spot is given, so say what the spot prices mean)',
    );
  });

  it('reports YAML syntax errors, an empty directory and a missing one', () => {
    expect(loadError({ 'a.yaml': 'provider: [aws\n' })).toMatch(/a\.yaml\):\n {2}not valid YAML/);
    expect(loadError({ 'README.txt': 'not a price file' })).toContain('the pricing directory holds no .yaml, .yml or .json file');
    expect(() => PricingCatalog.load('/nonexistent/dwcp-pricing')).toThrow(/cannot read the pricing directory/);
  });

  it('lets the newest file win per type, and refuses two files of the same date pricing the same type', () => {
    const catalog = PricingCatalog.load(
      catalogDir({
        'z-old.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: 0.0104 }\n    t3.small: { onDemand: 0.0208 }\n`,
        'a-new.json': JSON.stringify({
          provider: 'aws',
          currency: 'USD',
          asOf: '2025-07-01',
          source: 'a newer test price list',
          models: { onDemand: 'on-demand' },
          regions: { 'us-east-1': { 't3.micro': { onDemand: 0.011 } } },
        }),
      }),
    );
    expect(catalog.quote({ provider: 'aws', region: 'us-east-1', type: 't3.micro', model: 'on-demand' })).toMatchObject({ hourly: 0.011, asOf: '2025-07-01' });
    expect(catalog.quote({ provider: 'aws', region: 'us-east-1', type: 't3.small', model: 'on-demand' })).toMatchObject({ hourly: 0.0208, asOf: '2025-01-01' });
    expect(
      loadError({
        'one.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: 0.0104 }\n`,
        'two.yaml': `${HEADER}regions:\n  us-east-1:\n    t3.micro: { onDemand: 0.0105 }\n`,
      }),
    ).toMatch(/two\.yaml\):\n {2}regions\.us-east-1\.t3\.micro: also priced in one\.yaml with the same asOf 2025-01-01; keep one/);
  });
});
