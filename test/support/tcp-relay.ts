/**
 * A TCP relay on loopback between a dialler and `target`, for tests that put
 * something between two real connections (stalls, cuts, a flipped bit):
 * `forward` wires each accepted connection to its own connection to the
 * target; the two are destroyed together when either ends. `cut()` destroys
 * every connection made so far, `close()` that and the listener.
 */
import { once } from 'node:events';
import net, { type AddressInfo, type Socket } from 'node:net';

export interface TcpRelay {
  readonly port: number;
  cut(): void;
  close(): Promise<void>;
}

export async function tcpRelay(target: { host: string; port: number }, forward: (inbound: Socket, outbound: Socket) => void): Promise<TcpRelay> {
  const sockets = new Set<Socket>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(target);
    sockets.add(inbound).add(outbound);
    forward(inbound, outbound);
    const end = (): void => {
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('close', end).on('error', end);
    outbound.on('close', end).on('error', end);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const cut = (): void => {
    for (const s of sockets) s.destroy();
  };
  return {
    port: (server.address() as AddressInfo).port,
    cut,
    close: async () => {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
