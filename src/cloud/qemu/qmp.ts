/**
 * A QMP (QEMU Machine Protocol) client over a QEMU's Unix socket: the
 * greeting, capabilities negotiation, commands matched to their answers by
 * id, and asynchronous events.
 *
 * Written here rather than taken from npm: the one QMP package there
 * (`qemu-qmp`) is a single 2013-era release with an unpinned dependency, no
 * types, no deadlines and no ids; the protocol is a page of JSON lines.
 *
 * Invariants:
 * - Every message from QEMU is checked against its zod schema at the edge
 *   (greeting, return, error, event); a line that is not one of them, or a
 *   line longer than `maxLineBytes`, closes the connection with a
 *   `QmpError` naming the socket: nothing unchecked travels further.
 * - `connect` resolves only after the greeting and `qmp_capabilities`, all
 *   within `connectTimeoutMs`; commands are never sent before that.
 * - Every command carries a fresh id and has a deadline (its own or the
 *   client's default) and may be cut short by an AbortSignal; an answer
 *   arriving after its caller gave up is dropped. When the connection ends,
 *   every waiting command fails at once with the reason.
 * - Failures are `QmpError`s (DwcpError) naming the socket path and the
 *   command: `timeout` (a deadline passed), `unavailable` (cannot connect,
 *   the connection closed), `rejected` (QEMU answered with an error; its
 *   class and description are kept), `corrupt` (not QMP), `cancelled`.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { z } from 'zod';
import { DwcpError, type DwcpErrorCode } from '../../errors.ts';

/** sun_path is 108 bytes on Linux, the last one the terminating NUL. */
export const MAX_SOCKET_PATH_BYTES = 107;

export class QmpError extends DwcpError {
  /** QEMU's error class for a `rejected` command (GenericError, CommandNotFound, …); empty otherwise. */
  readonly errorClass: string;
  constructor(code: DwcpErrorCode, message: string, options: { errorClass?: string; cause?: unknown } = {}) {
    super(code, message, { cause: options.cause });
    this.errorClass = options.errorClass ?? '';
  }
}

const VersionSchema = z.object({
  qemu: z.object({ major: z.number().int(), minor: z.number().int(), micro: z.number().int() }),
  package: z.string(),
});
const GreetingSchema = z.object({ QMP: z.object({ version: VersionSchema, capabilities: z.array(z.string()) }) });
const ReturnSchema = z.object({ return: z.unknown(), id: z.string().optional() });
const ErrorSchema = z.object({ error: z.object({ class: z.string(), desc: z.string() }), id: z.string().optional() });
const EventSchema = z.object({
  event: z.string(),
  data: z.record(z.string(), z.unknown()).optional(),
  timestamp: z.object({ seconds: z.number(), microseconds: z.number() }),
});

export type QmpVersion = z.infer<typeof VersionSchema>;

export interface QmpEvent {
  readonly event: string;
  readonly data: Readonly<Record<string, unknown>>;
  /** When QEMU emitted it, epoch milliseconds. */
  readonly atMs: number;
}

export interface QmpCallOptions {
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface QmpOptions {
  path: string;
  /** Connect, greeting and capabilities together; default 5 s. */
  connectTimeoutMs?: number;
  /** Default deadline of one command; default 10 s. */
  callTimeoutMs?: number;
  /** Longest line accepted from QEMU; default 16 MiB. */
  maxLineBytes?: number;
  /** Each command as it finished: name, seconds, ok (for the call-duration histogram). */
  onCall?: (command: string, seconds: number, ok: boolean) => void;
  signal?: AbortSignal;
}

interface Pending {
  readonly command: string;
  readonly started: number;
  resolve(value: unknown): void;
  reject(error: Error): void;
}

const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
const DEFAULT_CALL_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;

export class QmpClient {
  readonly path: string;
  readonly version: QmpVersion;
  /** Resolves with why the connection ended (never rejects). */
  readonly closed: Promise<string>;

  readonly #socket: Socket;
  readonly #callTimeoutMs: number;
  readonly #onCall: QmpOptions['onCall'];
  readonly #pending = new Map<string, Pending>();
  readonly #listeners = new Set<(event: QmpEvent) => void>();
  #nextId = 1;
  #closedReason: string | null = null;

  private constructor(parts: { path: string; socket: Socket; version: QmpVersion; closed: Promise<string>; options: QmpOptions }) {
    this.path = parts.path;
    this.#socket = parts.socket;
    this.version = parts.version;
    this.closed = parts.closed;
    this.#callTimeoutMs = parts.options.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.#onCall = parts.options.onCall;
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode, within the connect deadline. */
  static async connect(options: QmpOptions): Promise<QmpClient> {
    const { path } = options;
    if (Buffer.byteLength(path) > MAX_SOCKET_PATH_BYTES) {
      throw new QmpError('invalid', `QMP socket ${path}: the path is ${Buffer.byteLength(path)} bytes, above the ${MAX_SOCKET_PATH_BYTES} a Unix socket allows (use a shorter data directory)`);
    }
    const timeoutMs = options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    const socket = netConnect({ path });
    const lines = new LineReader(options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES);
    let client: QmpClient | null = null;
    let settle: { resolve(c: QmpClient): void; reject(e: Error): void } | null = null;
    const done = new Promise<QmpClient>((resolve, reject) => {
      settle = { resolve, reject };
    });
    let closedResolve: (reason: string) => void = () => undefined;
    const closed = new Promise<string>((resolve) => {
      closedResolve = resolve;
    });
    let stage: 'connect' | 'greeting' | 'capabilities' = 'connect';
    let pendingVersion: QmpVersion | null = null;
    const fail = (error: Error): void => {
      socket.destroy();
      settle?.reject(error);
      settle = null;
    };
    const timer = setTimeout(() => fail(new QmpError('timeout', `QMP socket ${path}: no ${stage === 'connect' ? 'connection' : stage === 'greeting' ? 'greeting' : 'answer to qmp_capabilities'} within ${timeoutMs} ms`)), timeoutMs);
    const onAbort = (): void => fail(new QmpError('cancelled', `QMP socket ${path}: connect cancelled`, { cause: options.signal?.reason }));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) onAbort();

    socket.on('connect', () => {
      stage = 'greeting';
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      const reason = `QMP socket ${path}: ${stage === 'connect' ? 'cannot connect' : 'connection failed'}: ${err.code ?? err.message}`;
      if (client) client.#end(reason);
      else fail(new QmpError('unavailable', reason, { cause: err }));
    });
    socket.on('close', () => {
      const reason = `QMP socket ${path}: connection closed by QEMU`;
      if (client) client.#end(reason);
      else fail(new QmpError('unavailable', `${reason} during ${stage}`));
      closedResolve(client === null ? reason : (client.#closedReason ?? reason));
    });
    socket.on('data', (chunk: Buffer) => {
      let parsed: unknown[];
      try {
        parsed = lines.push(chunk).map((line) => JSON.parse(line) as unknown);
      } catch (err) {
        const reason = `QMP socket ${path}: ${err instanceof LineTooLong ? err.message : 'a line from QEMU is not JSON'}`;
        if (client) client.#end(reason, 'corrupt');
        else fail(new QmpError('corrupt', reason));
        return;
      }
      for (const message of parsed) {
        if (client) {
          client.#receive(message);
          continue;
        }
        if (stage === 'greeting') {
          const greeting = GreetingSchema.safeParse(message);
          if (!greeting.success) {
            fail(new QmpError('corrupt', `QMP socket ${path}: the first message is not a QMP greeting (is this a QEMU monitor socket in control mode?)`));
            return;
          }
          stage = 'capabilities';
          pendingVersion = greeting.data.QMP.version;
          socket.write(`${JSON.stringify({ execute: 'qmp_capabilities', id: 'capabilities' })}\n`);
        } else if (stage === 'capabilities') {
          if (EventSchema.safeParse(message).success) continue;
          const error = ErrorSchema.safeParse(message);
          if (error.success) {
            fail(new QmpError('rejected', `QMP socket ${path}: qmp_capabilities refused: ${error.data.error.class}: ${error.data.error.desc}`, { errorClass: error.data.error.class }));
            return;
          }
          if (!ReturnSchema.safeParse(message).success || pendingVersion === null) {
            fail(new QmpError('corrupt', `QMP socket ${path}: unexpected answer to qmp_capabilities`));
            return;
          }
          client = new QmpClient({ path, socket, version: pendingVersion, closed, options });
          settle?.resolve(client);
          settle = null;
        }
      }
    });
    try {
      return await done;
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Runs one command; resolves with its `return` value. */
  execute(command: string, args?: Record<string, unknown>, options: QmpCallOptions = {}): Promise<unknown> {
    if (this.#closedReason !== null) return Promise.reject(new QmpError('unavailable', `QMP ${command}: ${this.#closedReason}`));
    if (options.signal?.aborted) return Promise.reject(new QmpError('cancelled', `QMP ${command} on ${this.path}: cancelled before it was sent`, { cause: options.signal.reason }));
    const id = `dwcp-${this.#nextId++}`;
    const timeoutMs = options.timeoutMs ?? this.#callTimeoutMs;
    return new Promise<unknown>((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        this.#pending.delete(id);
      };
      const timer = setTimeout(() => {
        cleanup();
        this.#observe(command, started, false);
        reject(new QmpError('timeout', `QMP ${command} on ${this.path}: no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const onAbort = (): void => {
        cleanup();
        this.#observe(command, started, false);
        reject(new QmpError('cancelled', `QMP ${command} on ${this.path}: cancelled while waiting for the answer`, { cause: options.signal?.reason }));
      };
      options.signal?.addEventListener('abort', onAbort, { once: true });
      const started = performance.now();
      this.#pending.set(id, {
        command,
        started,
        resolve: (value) => {
          cleanup();
          resolve(value);
        },
        reject: (error) => {
          cleanup();
          reject(error);
        },
      });
      this.#socket.write(`${JSON.stringify({ execute: command, ...(args === undefined ? {} : { arguments: args }), id })}\n`);
    });
  }

  /** Calls `listener` with every event until the returned function is called. */
  subscribe(listener: (event: QmpEvent) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /** Closes the connection; waiting commands fail with `reason`. */
  close(reason = 'closed by dwcp'): void {
    this.#end(`QMP socket ${this.path}: ${reason}`);
  }

  get isClosed(): boolean {
    return this.#closedReason !== null;
  }

  #end(reason: string, code: DwcpErrorCode = 'unavailable'): void {
    if (this.#closedReason !== null) return;
    this.#closedReason = reason;
    this.#socket.destroy();
    for (const [, p] of this.#pending) {
      this.#observe(p.command, p.started, false);
      p.reject(new QmpError(code, `QMP ${p.command}: ${reason} before it answered`));
    }
    this.#pending.clear();
  }

  #receive(message: unknown): void {
    const event = EventSchema.safeParse(message);
    if (event.success) {
      const e = event.data;
      const out: QmpEvent = { event: e.event, data: e.data ?? {}, atMs: e.timestamp.seconds * 1000 + Math.floor(e.timestamp.microseconds / 1000) };
      for (const listener of this.#listeners) listener(out);
      return;
    }
    const error = ErrorSchema.safeParse(message);
    if (error.success) {
      const p = error.data.id === undefined ? undefined : this.#pending.get(error.data.id);
      if (p === undefined) return;
      this.#observe(p.command, p.started, false);
      const { class: errorClass, desc } = error.data.error;
      p.reject(new QmpError('rejected', `QMP ${p.command} on ${this.path}: ${errorClass}: ${desc}`, { errorClass }));
      return;
    }
    const ret = ReturnSchema.safeParse(message);
    if (ret.success) {
      // An answer without an id, or to a command whose caller gave up, has nobody waiting.
      const p = ret.data.id === undefined ? undefined : this.#pending.get(ret.data.id);
      if (p === undefined) return;
      this.#observe(p.command, p.started, true);
      p.resolve(ret.data.return);
      return;
    }
    this.#end(`QMP socket ${this.path}: a message from QEMU is neither an answer nor an event`, 'corrupt');
  }

  #observe(command: string, started: number, ok: boolean): void {
    this.#onCall?.(command, (performance.now() - started) / 1000, ok);
  }
}

class LineTooLong extends Error {}

/** Splits a byte stream into lines (QMP ends each message with CRLF or LF), bounded in length. */
class LineReader {
  readonly #max: number;
  #parts: Buffer[] = [];
  #length = 0;

  constructor(max: number) {
    this.#max = max;
  }

  push(chunk: Buffer): string[] {
    const out: string[] = [];
    let start = 0;
    for (let nl = chunk.indexOf(10, start); nl >= 0; nl = chunk.indexOf(10, start)) {
      this.#parts.push(chunk.subarray(start, nl));
      const line = Buffer.concat(this.#parts).toString('utf8').replace(/\r$/, '');
      this.#parts = [];
      this.#length = 0;
      if (line.length > this.#max) throw new LineTooLong(`a line from QEMU is longer than ${this.#max} bytes`);
      if (line.trim() !== '') out.push(line);
      start = nl + 1;
    }
    if (start < chunk.length) {
      this.#parts.push(chunk.subarray(start));
      this.#length += chunk.length - start;
      if (this.#length > this.#max) throw new LineTooLong(`a line from QEMU is longer than ${this.#max} bytes`);
    }
    return out;
  }
}
