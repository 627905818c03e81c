/**
 * The pricing catalog and the cost model on top of it: hourly prices per
 * (provider, region, instance type) for three pricing models — on-demand,
 * spot and 1-year reserved — read from the dated files in `config/pricing/`
 * (or a directory the config names), and the cost of running a type for some
 * hours or a month (730 h) under one model.
 *
 * Invariants:
 * - Every file is validated at load (daemon start) against one strict schema;
 *   a bad file fails the load with an error naming the file and the field.
 *   Prices are USD per instance-hour, positive, and neither spot nor reserved
 *   is above on-demand (AWS caps spot at on-demand; a reserved price above it
 *   is a transcription error).
 * - Several files may price one provider (say an old and a new snapshot):
 *   for each (region, type) the file with the latest `asOf` date wins; two
 *   files with the same date pricing the same (region, type) are refused, so
 *   which one counts never depends on file-name order.
 * - A question the catalog cannot answer (unknown provider, region, type, or
 *   a model the type has no price for) is a PricingError that lists what is
 *   known at that level, never a silent zero.
 * - Live spot prices (recordSpotPrices, from DescribeSpotPriceHistory) replace
 *   the file's typical spot level for types the catalog knows, and an
 *   estimate says which one it used.
 */
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { ConfigError, formatIssue, readConfigFile } from '../../config/load.ts';
import { DwcpError } from '../../errors.ts';

export const PRICED_PROVIDERS = ['aws', 'gcp', 'azure', 'oracle'] as const;
export type PricedProvider = (typeof PRICED_PROVIDERS)[number];

export const PRICING_MODELS = ['on-demand', 'spot', 'reserved'] as const;
export type PricingModel = (typeof PRICING_MODELS)[number];

/** The usual cloud billing month: 365 × 24 / 12. */
export const HOURS_PER_MONTH = 730;
/** Ten years: anything longer is a typo, not a plan. */
export const MAX_ESTIMATE_HOURS = 87_600;

/** The catalog shipped with dwcp. */
export const DEFAULT_PRICING_DIR = fileURLToPath(new URL('../../../config/pricing/', import.meta.url));

/** Prices above this per hour are a per-month or per-year value typed into the wrong field. */
const MAX_HOURLY_USD = 1_000;
const LISTED_AT_MOST = 40;

const hourly = z.number().positive().max(MAX_HOURLY_USD);

const TypePricesSchema = z
  .strictObject({ onDemand: hourly, spot: hourly.optional(), reserved: hourly.optional() })
  .superRefine((p, ctx) => {
    for (const field of ['spot', 'reserved'] as const) {
      const value = p[field];
      if (value !== undefined && value > p.onDemand) {
        ctx.addIssue({ code: 'custom', path: [field], input: value, params: { sentence: true }, message: `is above the on-demand price ${p.onDemand}` });
      }
    }
  });

const PricingFileSchema = z
  .strictObject({
    provider: z.enum(PRICED_PROVIDERS),
    currency: z.literal('USD'),
    /** The date the prices were published or read (YYYY-MM-DD). */
    asOf: z.iso.date({ message: 'a date as YYYY-MM-DD' }),
    source: z.string().min(10),
    /** What each price column means for this provider (which OS, which commitment). */
    models: z.strictObject({ onDemand: z.string().min(1), spot: z.string().min(1).optional(), reserved: z.string().min(1).optional() }),
    regions: z.record(
      z.string().regex(/^[a-z0-9-]{2,40}$/, 'a region name (lowercase letters, digits, "-")'),
      z.record(z.string().regex(/^[A-Za-z0-9._:-]{1,80}$/, 'an instance type name'), TypePricesSchema),
    ),
  })
  .superRefine((file, ctx) => {
    if (Object.keys(file.regions).length === 0) {
      ctx.addIssue({ code: 'custom', path: ['regions'], input: file.regions, params: { sentence: true }, message: 'prices no region' });
    }
    for (const field of ['spot', 'reserved'] as const) {
      if (file.models[field] !== undefined) continue;
      for (const [region, types] of Object.entries(file.regions)) {
        const priced = Object.keys(types).find((t) => types[t]?.[field] !== undefined);
        if (priced !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['models', field],
            input: undefined,
            params: { sentence: true },
            message: `(required: regions.${region}.${priced}.${field} is given, so say what the ${field} prices mean)`,
          });
          return;
        }
      }
    }
  });

export type PricingFile = z.infer<typeof PricingFileSchema>;

/** Where a price came from, for the operator to judge how far to trust it. */
interface PriceOrigin {
  file: string;
  asOf: string;
  source: string;
  models: PricingFile['models'];
}

interface TypePrices {
  onDemand: number;
  spot?: number;
  reserved?: number;
  origin: PriceOrigin;
}

interface LiveSpot {
  pricePerHour: number;
  observedAt: Date;
  source: string;
}

export interface PriceQuery {
  provider: string;
  region: string;
  type: string;
  model: PricingModel;
}

export interface PriceQuote extends PriceQuery {
  currency: 'USD';
  hourly: number;
  /** The date of the file's prices, or the time a live spot price was observed (ISO 8601). */
  asOf: string;
  /** File name and its stated source, or the live API the price came from. */
  source: string;
  /** What the price means (OS, commitment), from the file. */
  basis: string;
  live: boolean;
}

export interface CostEstimate extends PriceQuote {
  hours: number;
  /** hourly × hours */
  total: number;
  /** hourly × 730 */
  monthly: number;
}

export interface LiveSpotPrice {
  type: string;
  pricePerHour: number;
  observedAt: Date;
}

/** A question the catalog cannot answer (`unknown`: the message lists what it does know there) or a malformed one (`invalid`). */
export class PricingError extends DwcpError<'not_found' | 'invalid'> {
  readonly reason: 'unknown' | 'invalid';
  constructor(reason: 'unknown' | 'invalid', message: string) {
    super(reason === 'unknown' ? 'not_found' : 'invalid', message);
    this.reason = reason;
  }
}

const MODEL_FIELD: Readonly<Record<PricingModel, 'onDemand' | 'spot' | 'reserved'>> = { 'on-demand': 'onDemand', spot: 'spot', reserved: 'reserved' };

export class PricingCatalog {
  /** The files loaded, in load order, with what each states about itself. */
  readonly files: readonly { path: string; provider: PricedProvider; asOf: string; source: string }[];
  readonly #prices = new Map<string, Map<string, Map<string, TypePrices>>>();
  readonly #liveSpot = new Map<string, LiveSpot>();

  private constructor(files: { path: string; data: PricingFile }[]) {
    this.files = files.map(({ path, data }) => ({ path, provider: data.provider, asOf: data.asOf, source: data.source }));
    for (const { path, data } of files) this.#add(path, data);
  }

  /** Reads and validates every .yaml/.yml/.json file in `dir`; throws ConfigError naming the file and field. */
  static load(dir: string = DEFAULT_PRICING_DIR): PricingCatalog {
    let names: string[];
    try {
      names = readdirSync(dir).filter((n) => /\.(ya?ml|json)$/.test(n)).sort();
    } catch (err) {
      throw new ConfigError(dir, [`cannot read the pricing directory: ${(err as Error).message}`]);
    }
    if (names.length === 0) throw new ConfigError(dir, ['the pricing directory holds no .yaml, .yml or .json file']);
    return new PricingCatalog(names.map((n) => parsePricingFile(join(dir, n))));
  }

  #add(path: string, data: PricingFile): void {
    const origin: PriceOrigin = { file: basename(path), asOf: data.asOf, source: data.source, models: data.models };
    const regions = this.#prices.get(data.provider) ?? new Map<string, Map<string, TypePrices>>();
    this.#prices.set(data.provider, regions);
    for (const [region, types] of Object.entries(data.regions)) {
      const known = regions.get(region) ?? new Map<string, TypePrices>();
      regions.set(region, known);
      for (const [type, prices] of Object.entries(types)) {
        const seen = known.get(type);
        if (seen && seen.origin.asOf === data.asOf) {
          throw new ConfigError(path, [`regions.${region}.${type}: also priced in ${seen.origin.file} with the same asOf ${data.asOf}; keep one`]);
        }
        if (!seen || seen.origin.asOf < data.asOf) known.set(type, { ...prices, origin });
      }
    }
  }

  providers(): string[] {
    return [...this.#prices.keys()];
  }

  regions(provider: string): string[] {
    return [...(this.#prices.get(provider)?.keys() ?? [])];
  }

  types(provider: string, region: string): string[] {
    return [...(this.#prices.get(provider)?.get(region)?.keys() ?? [])];
  }

  /**
   * Current spot prices observed through a provider's API. Only types the
   * catalog prices in that region are taken (the rest are returned), so a
   * live feed cannot grow the catalog without bound.
   */
  recordSpotPrices(provider: string, region: string, prices: readonly LiveSpotPrice[], source: string): { recorded: number; ignored: string[] } {
    const known = this.#prices.get(provider)?.get(region);
    let recorded = 0;
    const ignored: string[] = [];
    for (const p of prices) {
      const entry = known?.get(p.type);
      if (!entry || !(p.pricePerHour > 0) || !Number.isFinite(p.pricePerHour)) {
        ignored.push(p.type);
        continue;
      }
      this.#liveSpot.set(liveKey(provider, region, p.type), { pricePerHour: p.pricePerHour, observedAt: p.observedAt, source });
      recorded++;
    }
    return { recorded, ignored };
  }

  quote(query: PriceQuery): PriceQuote {
    const { provider, region, type, model } = query;
    if (!(PRICING_MODELS as readonly string[]).includes(model)) throw new PricingError('invalid', `model: ${JSON.stringify(model)} is not one of ${PRICING_MODELS.join('|')}`);
    const regions = this.#prices.get(provider);
    if (!regions) throw new PricingError('unknown', `no prices for provider ${JSON.stringify(provider)}; the catalog prices ${listOf(this.providers())}`);
    const types = regions.get(region);
    if (!types) throw new PricingError('unknown', `no ${provider} prices for region ${JSON.stringify(region)}; the catalog prices ${provider} in ${listOf([...regions.keys()])}`);
    const entry = types.get(type);
    if (!entry) throw new PricingError('unknown', `no ${provider} price for type ${JSON.stringify(type)} in ${region}; the catalog prices there ${listOf([...types.keys()])}`);
    const base = { provider, region, type, model, currency: 'USD' as const };
    const live = model === 'spot' ? this.#liveSpot.get(liveKey(provider, region, type)) : undefined;
    if (live) {
      return { ...base, hourly: live.pricePerHour, asOf: live.observedAt.toISOString(), source: live.source, basis: entry.origin.models.spot ?? 'spot price', live: true };
    }
    const price = entry[MODEL_FIELD[model]];
    if (price === undefined) {
      const offered = PRICING_MODELS.filter((m) => entry[MODEL_FIELD[m]] !== undefined);
      throw new PricingError('unknown', `no ${model} price for ${provider} ${type} in ${region} (${entry.origin.file}); priced models: ${offered.join(', ')}`);
    }
    const origin = entry.origin;
    return { ...base, hourly: price, asOf: origin.asOf, source: `${origin.file}: ${origin.source}`, basis: origin.models[MODEL_FIELD[model]] ?? model, live: false };
  }

  estimate(query: PriceQuery & { hours?: number }): CostEstimate {
    const hours = query.hours ?? HOURS_PER_MONTH;
    if (!Number.isFinite(hours) || hours <= 0 || hours > MAX_ESTIMATE_HOURS) {
      throw new PricingError('invalid', `hours: ${hours} is not a number of hours above 0 and at most ${MAX_ESTIMATE_HOURS}`);
    }
    const quote = this.quote(query);
    return { ...quote, hours, total: roundCents(quote.hourly * hours), monthly: roundCents(quote.hourly * HOURS_PER_MONTH) };
  }
}

/** Money totals to a hundredth of a cent: enough for hourly rates like 0.0104, and no float noise in JSON. */
function roundCents(value: number): number {
  return Math.round(value * 10_000) / 10_000;
}

function liveKey(provider: string, region: string, type: string): string {
  return `${provider}\u0000${region}\u0000${type}`;
}

function listOf(items: readonly string[]): string {
  if (items.length === 0) return 'nothing';
  const sorted = [...items].sort();
  const shown = sorted.slice(0, LISTED_AT_MOST).join(', ');
  return sorted.length > LISTED_AT_MOST ? `${shown}, … (${sorted.length - LISTED_AT_MOST} more)` : shown;
}

export function parsePricingFile(path: string): { path: string; data: PricingFile } {
  const raw = readConfigFile(path);
  const result = PricingFileSchema.safeParse(raw, { reportInput: true });
  if (!result.success) throw new ConfigError(path, result.error.issues.map((i) => formatIssue(i)));
  return { path, data: result.data };
}
