/** What a region declares to the fleet log: the node's facts that policies see (trust among them) and its providers. */
import { describe, expect, it } from 'vitest';
import { CloudsSchema } from '../../src/cloud/config.ts';
import { parseFleetCommand } from '../../src/fleet/commands.ts';
import { regionDeclaration } from '../../src/fleet/region-declaration.ts';

const providers = CloudsSchema.parse({ providers: [{ kind: 'local', capacity: { vcpus: 4, memoryGiB: 8, diskGiB: 100 } }] }).providers;
const catalog = { types: () => [], quote: () => ({ hourly: 0 }) } as unknown as Parameters<typeof regionDeclaration>[1];

describe('regionDeclaration', () => {
  it('declares the node\'s trust, jurisdiction, compliance and labels: what policies see as region.*', () => {
    const cmd = regionDeclaration({ node: { name: 'dc1', trust: 'untrusted', jurisdiction: 'eu', compliance: ['gdpr'], labels: { tier: 'gold' } }, providers }, catalog);
    expect(cmd).toMatchObject({ kind: 'register-region', region: 'dc1', trust: 'untrusted', jurisdiction: 'eu', compliance: ['gdpr'], labels: { tier: 'gold' } });
    expect(parseFleetCommand(cmd)).toMatchObject({ trust: 'untrusted' });
  });

  it('leaves trust out when the node does not say (a hand-built config), as declarations from before it did', () => {
    expect(regionDeclaration({ node: { name: 'dc1' }, providers }, catalog)).not.toHaveProperty('trust');
  });
});
