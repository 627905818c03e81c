/**
 * `/dwcp/hello/1.0.0`: the first exchange on every member connection, checking
 * both ways that the two daemons belong to the same federation and that each
 * is the member the other's configuration says it is.
 *
 * The exchange is symmetric, so one function serves both ends: each side sends
 * its Hello, reads the other's, judges it and sends a verdict, then reads the
 * other's verdict. The connection counts as a member link only when both
 * verdicts accept. Noise has already authenticated the remote peer ID; the
 * hello adds what the peer ID alone cannot: federation, name, region, provider
 * and trust must match this node's member list, so configuration drift between
 * regions is caught at connect time, with the differing field named.
 */
import type { Connection, Stream } from '@libp2p/interface';
import type { DwcpConfig } from '../config/schema.ts';
import type { MemberDirectory } from '../federation/members.ts';
import type { RefusalReason } from '../metrics/metrics.ts';
import { FrameError, FramedStream, type FrameEvents } from './framing.ts';
import { HELLO_MAX_FRAME_BYTES, HELLO_VERSION, HelloFrameSchema, type Hello, type HelloFrame } from './hello-schema.ts';

export const HELLO_PROTOCOL = '/dwcp/hello/1.0.0';

export type HelloOutcome =
  | { accepted: true }
  | { accepted: false; reason: RefusalReason; message: string; by: 'local' | 'remote' };

export interface HelloContext {
  config: Pick<DwcpConfig, 'federation' | 'node'>;
  peerId: string;
  listenAddrs: () => string[];
  members: MemberDirectory;
  events?: FrameEvents;
}

export function localHello(ctx: HelloContext): Hello {
  const { node, federation } = ctx.config;
  return {
    version: HELLO_VERSION,
    federation,
    name: node.name,
    region: node.region,
    provider: node.provider,
    trust: node.trust,
    peerId: ctx.peerId,
    listenAddrs: ctx.listenAddrs().slice(0, 16),
  };
}

/** Judges a remote Hello against the member list; null means accepted. */
export function judgeHello(hello: Hello, remotePeer: string, ctx: HelloContext): { reason: RefusalReason; message: string } | null {
  if (hello.version !== HELLO_VERSION) {
    return { reason: 'hello_failed', message: `hello version ${hello.version} is not supported (this node speaks ${HELLO_VERSION})` };
  }
  if (hello.peerId !== remotePeer) {
    return { reason: 'identity_mismatch', message: `hello claims peer ID ${hello.peerId} but the connection is authenticated as ${remotePeer}` };
  }
  if (hello.federation !== ctx.config.federation) {
    return {
      reason: 'federation_mismatch',
      message: `peer ${remotePeer} is in federation "${hello.federation}", this node is in "${ctx.config.federation}"`,
    };
  }
  const member = ctx.members.get(remotePeer);
  if (!member) return { reason: 'not_member', message: `peer ${remotePeer} is not in the member list` };
  for (const field of ['name', 'region', 'provider', 'trust'] as const) {
    if (hello[field] !== member[field]) {
      return {
        reason: 'identity_mismatch',
        message: `peer ${remotePeer} says its ${field} is "${hello[field]}" but the member list has "${member[field]}" (member ${member.name})`,
      };
    }
  }
  return null;
}

/**
 * Runs the exchange on an open hello stream; never throws, always closes or
 * resets the stream. `onRefused` hears this node's own refusal the moment it
 * is judged, before anything more is sent: the refused peer may close the
 * connection as soon as it reads the verdict, and a caller that also listens
 * for the connection closing must already know the real reason by then.
 */
export async function exchangeHello(
  stream: Stream,
  connection: Connection,
  ctx: HelloContext,
  signal: AbortSignal,
  onRefused?: (outcome: HelloOutcome) => void,
): Promise<HelloOutcome> {
  const framed = new FramedStream<HelloFrame, HelloFrame>(stream, {
    protocol: HELLO_PROTOCOL,
    maxFrameBytes: HELLO_MAX_FRAME_BYTES,
    inbound: HelloFrameSchema,
    outbound: HelloFrameSchema,
    events: ctx.events,
  });
  const remotePeer = connection.remotePeer.toString();
  // This node's own judgement, once made, is the outcome whatever the peer
  // does next: a peer we refused may close before its verdict reaches us, and
  // reporting that as a failed read would hide the real reason.
  let verdict: { reason: RefusalReason; message: string } | null | undefined;
  try {
    await framed.write({ kind: 'hello', hello: localHello(ctx) }, { signal });
    const theirs = await framed.read({ signal });
    if (theirs?.kind !== 'hello') throw new HelloProtocolError(`expected a hello from ${remotePeer}, got ${theirs ? theirs.kind : 'end of stream'}`);
    verdict = judgeHello(theirs.hello, remotePeer, ctx);
    if (verdict) onRefused?.({ accepted: false, ...verdict, by: 'local' });
    await framed.write({ kind: 'result', result: { accepted: verdict === null, reason: verdict?.message ?? '' } }, { signal });
    if (verdict) {
      // Our refusal stands; the peer's verdict no longer matters, so do not wait on it.
      await framed.close().catch(() => {});
      return { accepted: false, ...verdict, by: 'local' };
    }
    const answer = await framed.read({ signal });
    if (answer?.kind !== 'result') throw new HelloProtocolError(`expected a hello verdict from ${remotePeer}, got ${answer ? answer.kind : 'end of stream'}`);
    await framed.close().catch(() => {});
    if (!answer.result.accepted) {
      return { accepted: false, reason: 'hello_failed', message: `peer ${remotePeer} refused this node: ${answer.result.reason}`, by: 'remote' };
    }
    return { accepted: true };
  } catch (err) {
    const message = err instanceof FrameError || err instanceof HelloProtocolError ? err.message : `hello with ${remotePeer} failed: ${(err as Error).message}`;
    framed.reset(err instanceof Error ? err : new Error(String(err)));
    if (verdict) return { accepted: false, ...verdict, by: 'local' };
    return { accepted: false, reason: 'hello_failed', message, by: 'local' };
  }
}

class HelloProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'HelloProtocolError';
  }
}
