/**
 * The client side of a server-streaming admin call (Blob Put and Get, Vm
 * Console): each message handed to the caller in order, with the caller's
 * back-pressure, and every failure turned into the client's one-line error.
 *
 * Invariant: a stream has no overall deadline (a large value, or a console
 * being followed, takes as long as it takes); `idleMs` bounds the wait
 * between two messages, so a stuck daemon is reported rather than waited
 * for, unless the caller expects silence (null: a followed console).
 */
import * as grpc from '@grpc/grpc-js';
import type { MethodDefinition } from '@grpc/proto-loader';

export interface StreamTransport {
  client: grpc.Client;
  /** The method's definition in its service, or undefined. */
  method(name: string): MethodDefinition<unknown, unknown> | undefined;
  /** Turns a failed call into the client's one-line error. */
  explain(err: unknown, method: string, timeoutMs: number): Promise<Error>;
  timeoutMs: number;
}

/** Runs one server-streaming call; `onMessage` may return a promise to slow the stream down. */
export async function serverStream<Res>(t: StreamTransport, name: string, request: unknown, onMessage: (msg: Res) => Promise<void> | void, idleMs: number | null = t.timeoutMs): Promise<void> {
  const method = t.method(name);
  if (method === undefined) throw new Error(`${name} is not a method of the service`);
  const call = t.client.makeServerStreamRequest(method.path, method.requestSerialize, method.responseDeserialize as (b: Buffer) => Res, request, new grpc.Metadata(), {});
  let idle: NodeJS.Timeout | undefined;
  let silent = false;
  const arm = () => {
    clearTimeout(idle);
    if (idleMs === null) return;
    idle = setTimeout(() => {
      silent = true;
      call.cancel();
    }, idleMs);
  };
  try {
    arm();
    for await (const msg of call as AsyncIterable<Res>) {
      clearTimeout(idle);
      await onMessage(msg);
      arm();
    }
  } catch (err) {
    if (silent) throw await t.explain(Object.assign(new Error('silent'), { code: grpc.status.DEADLINE_EXCEEDED, details: 'no message', metadata: new grpc.Metadata() }), name, idleMs ?? t.timeoutMs);
    call.cancel();
    throw await t.explain(err, name, t.timeoutMs);
  } finally {
    clearTimeout(idle);
  }
}
