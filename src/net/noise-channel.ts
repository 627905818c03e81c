/**
 * The daemon's connection encrypter, `connectionEncrypters: [noiseChannel()]`:
 * libp2p Noise (`/noise`, XX, X25519, ChaCha20-Poly1305, SHA-256) whose
 * handshake is `@chainsafe/libp2p-noise`'s own, with this project's AEAD
 * (src/net/noise-crypto.ts) and transport-phase stream
 * (src/net/noise-stream.ts), both wire-identical to the library's.
 *
 * Invariants:
 * - The handshake, identity checks and cipher states (keys, nonces) are the
 *   library's code, untouched: the library's `secureInbound/Outbound` minus
 *   its transport-phase stream, which its API does not let us replace. So
 *   this reaches two methods the library's types mark private
 *   (`performHandshakeInitiator/Responder`, `getStreamMuxer`), checked at
 *   start-up against the pinned version (package.json), so an upgrade that
 *   moves them fails at once and loudly rather than at the first dial.
 * - A graceful close of the connection sends what the stream has batched
 *   first: libp2p closes the raw connection (not the secured stream it gave
 *   the muxer) right after the muxer's last frames (stream FINs, GoAway), so
 *   the raw connection's close is wrapped to seal the batch, and from then
 *   on every send goes down at once. An abort drops the batch, as it drops
 *   everything else unsent.
 */
import { noise, type NoiseComponents, type NoiseExtensions } from '@chainsafe/libp2p-noise';
import { publicKeyFromProtobuf } from '@libp2p/crypto/keys';
import type {
  AbortOptions,
  ConnectionEncrypter,
  Logger,
  MessageStream,
  PrivateKey,
  PublicKey,
  SecuredConnection,
  SecureConnectionOptions,
  StreamMuxerFactory,
} from '@libp2p/interface';
import { peerIdFromPublicKey } from '@libp2p/peer-id';
import { lpStream, type LengthPrefixedStream } from '@libp2p/utils';
import type { Uint8ArrayList } from 'uint8arraylist';
import { noiseCrypto } from './noise-crypto.ts';
import { MAX_NOISE_MESSAGE_BYTES, NoiseTransportStream, type NoiseCipher } from './noise-stream.ts';

/** What the handshake returns: the remote's payload and the cipher states. */
interface Handshake extends NoiseCipher {
  payload: { identityKey: Uint8Array; extensions?: NoiseExtensions & { streamMuxers?: string[] } };
}

type PerformHandshake = (
  connection: LengthPrefixedStream,
  privateKey: PrivateKey,
  log: Logger,
  remoteIdentityKey: PublicKey | undefined,
  options: AbortOptions | undefined,
) => Promise<Handshake>;

/** The library's Noise as this module uses it (see the invariants for why the private parts). */
interface NoiseInternals {
  protocol: string;
  performHandshakeInitiator: PerformHandshake;
  performHandshakeResponder: PerformHandshake;
  getStreamMuxer(protocols: string[] | undefined): StreamMuxerFactory | undefined;
}

function internalsOf(encrypter: ConnectionEncrypter<NoiseExtensions>): NoiseInternals {
  const candidate = encrypter as unknown as Partial<NoiseInternals>;
  for (const method of ['performHandshakeInitiator', 'performHandshakeResponder', 'getStreamMuxer'] as const) {
    if (typeof candidate[method] !== 'function') {
      throw new Error(`@chainsafe/libp2p-noise has no ${method}(): src/net/noise-channel.ts relies on its 17.0.0 internals; check it against the installed version`);
    }
  }
  return candidate as NoiseInternals;
}

/** Noise's 2-byte big-endian length, for the handshake messages (lpStream's contract: a RangeError while incomplete). */
function encodeLength(length: number): Uint8Array {
  return Uint8Array.of(length >>> 8, length & 0xff);
}
encodeLength.bytes = 2;

function decodeLength(data: Uint8Array | Uint8ArrayList): number {
  if (data.byteLength < 2) throw new RangeError('incomplete Noise length prefix');
  const at = (i: number): number => (data instanceof Uint8Array ? (data[i] ?? 0) : data.get(i));
  return (at(0) << 8) | at(1);
}
decodeLength.bytes = 2;

/** Wraps `raw.close` so that a graceful close seals `secured`'s batch before the raw connection stops taking bytes. */
function sealBeforeClose(raw: MessageStream, secured: NoiseTransportStream): void {
  const close = raw.close.bind(raw);
  raw.close = async (options?: AbortOptions): Promise<void> => {
    secured.flushAndStopBatching();
    await close(options);
  };
}

export function noiseChannel(): (components: NoiseComponents) => ConnectionEncrypter<NoiseExtensions> {
  const library = noise({ crypto: noiseCrypto });
  return (components) => {
    const inner = internalsOf(library(components));
    const secure = async (
      raw: MessageStream,
      options: SecureConnectionOptions | undefined,
      handshake: PerformHandshake,
    ): Promise<SecuredConnection<NoiseExtensions>> => {
      const framed = lpStream(raw, { lengthEncoder: encodeLength, lengthDecoder: decodeLength, maxDataLength: MAX_NOISE_MESSAGE_BYTES });
      const log = raw.log.newScope('noise');
      const result = await handshake.call(inner, framed, components.privateKey, log, options?.remotePeer?.publicKey, options);
      const connection = new NoiseTransportStream(framed.unwrap(), result);
      sealBeforeClose(raw, connection);
      return {
        connection,
        remoteExtensions: result.payload.extensions,
        remotePeer: peerIdFromPublicKey(publicKeyFromProtobuf(result.payload.identityKey)),
        streamMuxer: options?.skipStreamMuxerNegotiation === true ? undefined : inner.getStreamMuxer(result.payload.extensions?.streamMuxers),
      };
    };
    return {
      protocol: inner.protocol,
      secureOutbound: (raw, options) => secure(raw, options, inner.performHandshakeInitiator),
      secureInbound: (raw, options) => secure(raw, options, inner.performHandshakeResponder),
    };
  };
}
