/**
 * A libp2p host built like the mesh's transport stack (TCP + the daemon's
 * Noise channel + Yamux with MUXER_STREAM_OPTIONS) on loopback, without the
 * mesh's membership and gater: for benches and tests that measure or stress
 * the bytes' way between two daemons, not who may connect.
 */
import { yamux } from '@chainsafe/libp2p-yamux';
import { generateKeyPair } from '@libp2p/crypto/keys';
import { tcp } from '@libp2p/tcp';
import { createLibp2p, type Libp2p } from 'libp2p';
import { MUXER_STREAM_OPTIONS } from '../../src/net/framing.ts';
import { noiseChannel } from '../../src/net/noise-channel.ts';

export const LOOPBACK = '127.0.0.1';

export async function meshLikeHost(): Promise<Libp2p> {
  return createLibp2p({
    privateKey: await generateKeyPair('Ed25519'),
    addresses: { listen: [`/ip4/${LOOPBACK}/tcp/0`] },
    transports: [tcp()],
    connectionEncrypters: [noiseChannel()],
    streamMuxers: [yamux({ streamOptions: MUXER_STREAM_OPTIONS })],
  });
}
