/**
 * The Burst admin service (burst.proto) as the admin client exposes it: the
 * `.burst` sub-client; JSON payloads checked against src/burst/status.ts.
 */
import { BurstStatusListSchema, type BurstGroupStatus } from '../burst/status.ts';
import { parseReply } from './json-reply.ts';
import type { BurstGroupRef, BurstGroupSetRequest, BurstStatusResponse, ServiceCall } from './schema.ts';

export interface BurstClient {
  status(): Promise<BurstGroupStatus[]>;
  setGroup(request: BurstGroupSetRequest): Promise<BurstGroupStatus[]>;
  deleteGroup(request: BurstGroupRef): Promise<void>;
}

export function burstClient(call: ServiceCall): BurstClient {
  return {
    status: async () => parseReply(BurstStatusListSchema, (await call<Record<string, never>, Partial<BurstStatusResponse>>('Status', {})).groups_json, 'burst status'),
    setGroup: async (request) => parseReply(BurstStatusListSchema, (await call<BurstGroupSetRequest, Partial<BurstStatusResponse>>('SetGroup', request)).groups_json, 'burst status'),
    deleteGroup: async (request) => {
      await call<BurstGroupRef, unknown>('DeleteGroup', request);
    },
  };
}
