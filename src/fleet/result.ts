/**
 * The wire form of a FleetResult: what the fleet state machine answered to
 * one fleet command, carried inside the KV result of the log entry (kv.proto
 * FleetOutcome.result) back to the node that proposed it, and kept in the
 * proposer's session so a retried command gets the same answer.
 *
 * Canonical JSON, so every replica stores the same bytes for the same result;
 * decoding validates the shape (a result from a peer is input like any other).
 */
import { DwcpError } from '../errors.ts';
import { z } from 'zod';
import { FLEET_COMMAND_KINDS, FLEET_MAX_GENERATION, FLEET_MAX_MESSAGE, FLEET_REJECT_CODES, canonicalJson, type FleetResult } from './commands.ts';

/** Bound of an encoded result: a refusal's sentence plus the JSON around it. */
export const FLEET_MAX_RESULT_BYTES = FLEET_MAX_MESSAGE * 4 + 256;

const FleetResultSchema = z.union([
  z.strictObject({
    ok: z.literal(true),
    kind: z.enum(FLEET_COMMAND_KINDS),
    vm: z.string().max(256).optional(),
    region: z.string().max(256).optional(),
    generation: z.number().int().min(0).max(FLEET_MAX_GENERATION).optional(),
    policyVersion: z.number().int().min(1).max(Number.MAX_SAFE_INTEGER).optional(),
    migration: z.string().max(32).optional(),
  }),
  z.strictObject({ ok: z.literal(false), code: z.enum(FLEET_REJECT_CODES), message: z.string().max(FLEET_MAX_MESSAGE * 2) }),
]);

export class FleetResultError extends DwcpError<'corrupt'> {
  constructor(problem: string) {
    super('corrupt', `fleet result ${problem}`);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function encodeFleetResult(result: FleetResult): Uint8Array {
  return encoder.encode(canonicalJson(result));
}

/** Throws FleetResultError saying what is wrong with `bytes`. */
export function decodeFleetResult(bytes: Uint8Array): FleetResult {
  if (bytes.byteLength > FLEET_MAX_RESULT_BYTES) throw new FleetResultError(`is ${bytes.byteLength} bytes, above the ${FLEET_MAX_RESULT_BYTES}-byte limit`);
  let raw: unknown;
  try {
    raw = JSON.parse(decoder.decode(bytes));
  } catch (err) {
    throw new FleetResultError(`is not UTF-8 JSON (${err instanceof Error ? err.message : String(err)})`);
  }
  const parsed = FleetResultSchema.safeParse(raw);
  if (!parsed.success) throw new FleetResultError(`is malformed: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ')}`);
  return parsed.data as FleetResult;
}
