/**
 * The small HTTP plumbing the fake cloud servers share: listen on loopback,
 * read a bounded request body, close promptly.
 *
 * Invariants: the servers bind 127.0.0.1 only (they are test and development
 * backends, never reachable from the network); a body larger than the limit is
 * refused instead of buffered; `close` ends idle keep-alive sockets so a test
 * does not wait for the SDKs' connection pools to time out.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

/** Bodies of the calls the fakes serve are small; anything larger is a client bug. */
export const MAX_BODY_BYTES = 1024 * 1024;

export class BodyTooLargeError extends Error {}

export function readBody(req: http.IncomingMessage, limit = MAX_BODY_BYTES): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        reject(new BodyTooLargeError(`request body over ${limit} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export interface LoopbackServer {
  readonly server: http.Server;
  /** http://127.0.0.1:PORT, no trailing slash. */
  readonly url: string;
  close(): Promise<void>;
}

export async function listenLoopback(handler: http.RequestListener, port = 0): Promise<LoopbackServer> {
  const server = http.createServer(handler);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  return {
    server,
    url: `http://127.0.0.1:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
