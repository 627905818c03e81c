/**
 * The libp2p host operations a protocol module may use, so that its
 * constructor says it registers a handler or opens streams and nothing more
 * (js-libp2p's components style: a module names the capabilities it needs,
 * not the node). Only the mesh holds the whole host (src/net/mesh.ts); the
 * daemon hands that same host to the others as these.
 */
import type { Libp2p } from 'libp2p';

/** Opens an outbound stream on a protocol to a peer. */
export type StreamDialer = Pick<Libp2p, 'dialProtocol'>;

/** Registers, and removes, the handler of a protocol's inbound streams. */
export type ProtocolRegistrar = Pick<Libp2p, 'handle' | 'unhandle'>;

/** A protocol that both answers and dials. */
export type ProtocolHost = ProtocolRegistrar & StreamDialer;
