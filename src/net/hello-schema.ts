/**
 * Typed, validated messages of the hello exchange (proto/hello.proto). A Hello
 * that decodes is well-formed and bounded: a non-zero version, non-empty
 * identity fields of at most HELLO_MAX_STRING characters, a known provider and
 * trust level, at most HELLO_MAX_LISTEN_ADDRS addresses. Whether its claims
 * are true (member list, federation, peer ID) is the hello handler's job, not
 * the schema's.
 */
import type { Provider, Trust } from '../config/schema.ts';
import { PROVIDERS, TRUST_LEVELS } from '../config/schema.ts';
import type { MessageSchema } from './schema.ts';
import { loadProto, protoSchema, requireBool, requireEnum, requireMessage, requireString, requireStrings, requireUint } from './schema.ts';

/** The hello wire version this code speaks. */
export const HELLO_VERSION = 1;

export interface Hello {
  version: number;
  federation: string;
  name: string;
  region: string;
  provider: Provider;
  trust: Trust;
  peerId: string;
  listenAddrs: string[];
}

export interface HelloResult {
  accepted: boolean;
  /** Why the hello was refused; '' when accepted. */
  reason: string;
}

export type HelloFrame = { kind: 'hello'; hello: Hello } | { kind: 'result'; result: HelloResult };

export const HELLO_MAX_STRING = 256;
export const HELLO_MAX_LISTEN_ADDRS = 16;
export const HELLO_MAX_REASON = 1024;
/**
 * Fits the largest valid HelloFrame: 20 strings of 256 UTF-16 units (at most
 * 768 UTF-8 bytes plus 3 bytes of tag and length each), the short provider and
 * trust names, the version and the frame's own tag and length: about 15.1 KiB.
 */
export const HELLO_MAX_FRAME_BYTES = 16 * 1024;

const proto = loadProto(new URL('./proto/hello.proto', import.meta.url));
const text = { max: HELLO_MAX_STRING };

function validateHello(o: Record<string, unknown>): Hello {
  return {
    version: requireUint(o, 'version', { min: 1 }),
    federation: requireString(o, 'federation', text),
    name: requireString(o, 'name', text),
    region: requireString(o, 'region', text),
    provider: requireEnum(o, 'provider', PROVIDERS),
    trust: requireEnum(o, 'trust', TRUST_LEVELS),
    peerId: requireString(o, 'peerId', text),
    listenAddrs: requireStrings(o, 'listenAddrs', { ...text, maxItems: HELLO_MAX_LISTEN_ADDRS }),
  };
}

function validateHelloResult(o: Record<string, unknown>): HelloResult {
  return {
    accepted: requireBool(o, 'accepted'),
    reason: requireString(o, 'reason', { max: HELLO_MAX_REASON, optional: true }),
  };
}

export const HelloSchema: MessageSchema<Hello> = protoSchema(proto.lookupType('dwcp.net.v1.Hello'), validateHello);

export const HelloResultSchema: MessageSchema<HelloResult> = protoSchema(proto.lookupType('dwcp.net.v1.HelloResult'), validateHelloResult);

export const HelloFrameSchema: MessageSchema<HelloFrame> = protoSchema(proto.lookupType('dwcp.net.v1.HelloFrame'), (o): HelloFrame =>
  requireEnum(o, 'kind', ['hello', 'result']) === 'hello'
    ? { kind: 'hello', hello: requireMessage(o, 'hello', validateHello) }
    : { kind: 'result', result: requireMessage(o, 'result', validateHelloResult) },
);
