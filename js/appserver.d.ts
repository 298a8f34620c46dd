// Type declarations of appserver-client, the browser client of appserver.
// API reference: docs/client.md; wire protocol: docs/protocol.md.
//
// They need no DOM library: the browser objects a client uses are described
// by the little it needs of them, so the page's own WebSocket, fetch,
// document and location fit, and so do a test's fakes.

// ---------------------------------------------------------------------------
// Envelopes (docs/protocol.md)

/** Application data: whatever JSON the application puts in `data`. */
export type AppData = any;

/** Every message on the wire: a JSON object with a `type`. */
export interface Envelope<Type extends string = string, Data = AppData> {
  type: Type;
  data?: Data;
  /** The request id of an acknowledged request, and of its `reply` or `error`. */
  id?: number | string | null;
  /** The stream position of a broadcast or channel message. */
  pos?: number;
  /** The channel of a `message` envelope. */
  channel?: string;
  /** The request type a `reply` answers. */
  re?: string;
}

/** What the client sends: `send()` makes `{type, data}`, `request()` adds `id`. */
export interface ClientEnvelope<Data = AppData> {
  type: string;
  data?: Data;
  id?: number;
}

/** `"sse"` is the event stream (Server-Sent Events). */
export type TransportName = "websocket" | "sse" | "ajax";

/** `welcome`: the first envelope of every connection or Ajax session. */
export interface WelcomeData {
  /** The public id of this connection (never the Ajax session secret). */
  client_id: string;
  epoch: string;
  /** The stream position the connection starts at (`null` from a server that queued no welcome). */
  position: number | null;
  transport: TransportName;
}

/** `resumed`: the server's answer to the client's `resume`. */
export interface ResumedData {
  /** False when messages were lost (another epoch, or history too old): reload your state. */
  recovered: boolean;
  epoch: string;
  position: number;
}

/** `join` and `leave`: room presence. */
export interface PresenceData {
  room: string;
  username: string;
}

/** `subscribed` and `unsubscribed`. */
export interface ChannelData {
  channel: string;
}

/** `members`, and the `reply` to a `members` request. */
export interface MembersData {
  room: string;
  members: string[];
}

/** `reconnect`: the server is shutting down; come back after `after_ms`. */
export interface ReconnectData {
  after_ms: number;
}

/** The `data` of an `error` envelope, and of client-side `error` events. */
export interface ErrorData {
  /** A protocol error code (`forbidden`, `bad_data`, `unknown_type`, ...) or a client-side one. */
  code: string;
  message: string;
}

export type WelcomeEnvelope = Envelope<"welcome", WelcomeData>;
export type ResumedEnvelope = Envelope<"resumed", ResumedData>;
/** `{type: "chat", data: "Message from <peer> : <text>", pos}` */
export type ChatEnvelope = Envelope<"chat", string> & { pos: number };
/** `{type: "message", channel, data, pos}` */
export type MessageEnvelope<Data = AppData> = Envelope<"message", Data> & { channel: string; pos: number };
export type PresenceEnvelope = Envelope<"join" | "leave", PresenceData>;
export type ChannelEnvelope = Envelope<"subscribed" | "unsubscribed", ChannelData>;
export type MembersEnvelope = Envelope<"members", MembersData>;
export type ReconnectEnvelope = Envelope<"reconnect", ReconnectData>;
/** The `data` of a live `gap` notice (docs/protocol.md). */
export interface GapData {
  recovered: false;
  epoch: string;
  position: number;
  /** Absent when every stream is concerned. */
  channel?: string;
}
export type GapEnvelope = Envelope<"gap", GapData>;
/** `{type: "reply", re, id, data}` */
export type ReplyEnvelope<Data = AppData> = Envelope<"reply", Data> & { re?: string; id: number | string | null };
/** `{type: "error", id, data: {code, message}}` */
export type ErrorEnvelope = Envelope<"error", ErrorData>;

/** The answer of `clientCount()` (`GET /get_client_count`). */
export interface ClientCounts {
  client_count: number;
  websocket: number;
  ajax: number;
  /** Event streams (`GET /events`). */
  sse: number;
  /** The server's time, as C's ctime() writes it. */
  time: string;
  /** With a room: the room asked about. */
  room?: string;
  /** With a room: its member count. */
  room_count?: number;
}

// ---------------------------------------------------------------------------
// Lifecycle events (docs/client.md, "Events")

/** `open`: a connection is ready (after the server's `welcome`). */
export interface OpenInfo {
  /** `null` in polling-refresh mode. */
  transport: TransportName | null;
  clientId: string | null;
  /** True from the second connection on. */
  resumed: boolean;
}

/** `close`: an open connection ended, or the client stopped trying. */
export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  willReconnect: boolean;
}

/** `error`: an `error` envelope no request was waiting for, or a client-side problem. */
export interface ErrorInfo extends ErrorData {
  /** With `buffer_overflow`: the envelope dropped from the offline buffer. */
  envelope?: ClientEnvelope;
}

/** `reconnecting`: a reconnect is scheduled in `delay` ms. */
export interface ReconnectingInfo {
  attempt: number;
  delay: number;
  transport: TransportName;
}

/**
 * `recovery`: the server answered a resume (or did not in time: `recovered:
 * false`), or sent a live `gap` (`live: true`, always `recovered: false`).
 */
export interface RecoveryInfo {
  recovered: boolean;
  /** True for a live `gap` notice (docs/protocol.md): no reconnect happened. */
  live?: boolean;
  /** With `live`: messages up to this position may be missing. */
  position?: number | null;
  /** With `live`: the channel concerned, or `null` for every stream. */
  channel?: string | null;
}

/**
 * The client's events and the arguments their handlers get. Every other
 * envelope type (those the application defines) goes to its handlers as
 * `(data, envelope)` too.
 */
export interface ClientEventMap {
  open: [info: OpenInfo];
  close: [info: CloseInfo];
  /** The envelope is there when the error came from the server. */
  error: [error: ErrorInfo, envelope?: ErrorEnvelope];
  reconnecting: [info: ReconnectingInfo];
  recovery: [info: RecoveryInfo];
  transport: [name: TransportName];
  /** Polling-refresh mode: the JSON fetched. */
  reload: [result: AppData];
  welcome: [data: WelcomeData, envelope: WelcomeEnvelope];
  resumed: [data: ResumedData, envelope: ResumedEnvelope];
  gap: [data: GapData, envelope: GapEnvelope];
  chat: [text: string, envelope: ChatEnvelope];
  message: [data: AppData, envelope: MessageEnvelope];
  join: [data: PresenceData, envelope: PresenceEnvelope];
  leave: [data: PresenceData, envelope: PresenceEnvelope];
  subscribed: [data: ChannelData, envelope: ChannelEnvelope];
  unsubscribed: [data: ChannelData, envelope: ChannelEnvelope];
  members: [data: MembersData, envelope: MembersEnvelope];
  pong: [data: AppData, envelope: Envelope<"pong">];
  reconnect: [data: ReconnectData, envelope: ReconnectEnvelope];
  /** Only replies no request is waiting for. */
  reply: [data: AppData, envelope: ReplyEnvelope];
}

export type EventName = keyof ClientEventMap;

/** A handler of a known event; `this` is the client. */
export type EventHandler<K extends EventName> = (this: Client, ...args: ClientEventMap[K]) => void;

/** A handler of an application-defined envelope type. */
export type EnvelopeHandler<Data = AppData> = (this: Client, data: Data, envelope: Envelope<string, Data>) => void;

/**
 * How promises of the client reject: an Error with a `code`. Server errors
 * carry the server's code (`forbidden`, `bad_data`, ...) and their `data`;
 * client-side codes are `timeout`, `disconnected`, `buffer_overflow`,
 * `closed`, `unsupported`, `bad_answer`, `network`, `aborted`, `bad_json`
 * and `http_<status>`.
 */
export interface AppServerError extends Error {
  code: string;
  /** Ajax errors: the HTTP status (0 when none came). */
  status?: number;
  /** Ajax errors: the session is gone; the client connects again. */
  sessionLost?: boolean;
  /** Server errors: the `data` of the `error` envelope. */
  data?: ErrorData;
}

// ---------------------------------------------------------------------------
// What a client needs of the browser (each injectable, for tests)

/** The part of a WebSocket the client uses; the client sets the handlers. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage?: ((event: any) => void) | null;
  onclose?: ((event: any) => void) | null;
  onerror?: ((event: any) => void) | null;
}

/** A WebSocket constructor: `window.WebSocket`, or a fake. */
export type WebSocketConstructorLike = new (url: string) => WebSocketLike;

/** The part of an EventSource the client uses; the client sets the handlers. */
export interface EventSourceLike {
  /** 0 connecting (also while the browser reconnects), 1 open, 2 closed for good. */
  readonly readyState: number;
  close(): void;
  onmessage?: ((event: any) => void) | null;
  onerror?: ((event: any) => void) | null;
}

/** An EventSource constructor: `window.EventSource`, or a fake. */
export type EventSourceConstructorLike = new (url: string) => EventSourceLike;

/** The AbortSignal of the environment (DOM or Node), or anything where there is none. */
export type AbortSignalLike = typeof globalThis extends { AbortSignal: { prototype: infer Signal } } ? Signal : unknown;

/** The `init` the client passes to fetch. */
export interface FetchInitLike {
  method: "GET" | "POST";
  cache: "no-store";
  signal: AbortSignalLike;
  /** The envelope as JSON text (sent as text/plain). */
  body?: string;
  /** `X-AppServer-Session` and `X-AppServer-Since` on session requests. */
  headers?: Record<string, string>;
}

/** The part of a fetch Response the client reads. */
export interface ResponseLike {
  readonly status: number;
  text(): Promise<string>;
}

/** The part of a script element JSONP uses. */
export interface ScriptElementLike {
  src: string;
  async: boolean;
  onerror: any;
  readonly parentNode: { removeChild(child: any): unknown } | null;
}

/** The part of a document the client uses: JSONP script tags and `visibilitychange`. */
export interface DocumentLike {
  createElement(tagName: "script"): ScriptElementLike;
  readonly head?: { appendChild(child: any): unknown } | null;
  readonly documentElement?: { appendChild(child: any): unknown } | null;
  readonly visibilityState?: string;
  addEventListener?(type: "visibilitychange", listener: () => void): void;
  removeEventListener?(type: "visibilitychange", listener: () => void): void;
}

/** Where the default URLs come from. */
export interface LocationLike {
  readonly protocol: string;
  readonly hostname: string;
}

// ---------------------------------------------------------------------------
// Options (docs/client.md, "Options")

export interface ReconnectOptions {
  /** ms; the first delay is drawn in [0, initialDelay). Default 500. */
  initialDelay?: number;
  /** ms; the cap of the doubling delays. Default 10000. */
  maxDelay?: number;
  /** Attempts before giving up (`error` with code `reconnect_failed`). Default Infinity. */
  maxRetries?: number;
}

export interface ClientOptions {
  /** WebSocket URL. Default `AppServerConfig.wsUrl`, else `ws(s)://<hostname>:9002/`. */
  url?: string;
  /** Base URL of the Ajax site. Default `AppServerConfig.ajaxUrl`, else `http(s)://<hostname>:9001`. */
  ajaxUrl?: string;
  /** Transports to try, in order. Default `["websocket", "sse", "ajax"]`. */
  transports?: TransportName[];
  /** `false` is shorthand for `transports: ["ajax"]`. */
  websockets?: boolean;
  /** `"json"`: fetch with CORS; `"jsonp"`: script tags. Default `"json"`. */
  ajaxMode?: "json" | "jsonp";
  /** `false`: connect only when `open()` is called. Default true. */
  autoConnect?: boolean;
  /** ms a connection may take to open (up to `welcome`) before the next transport is tried. Default 5000. */
  connectTimeout?: number;
  /** Backoff settings (any subset), or `false` for no reconnect. */
  reconnect?: ReconnectOptions | false;
  /** Bound of the offline send buffer. Default 100. */
  maxBufferedSends?: number;
  /** ms without incoming traffic before a `ping` (WebSocket); 0 turns pings off. Default 20000. */
  heartbeatInterval?: number;
  /** ms after a ping with still no traffic before the connection counts as dead. Default 10000. */
  staleTimeout?: number;
  /** Default timeout of `request()`; also how long a resume waits for `resumed`. Default 10000. */
  requestTimeout?: number;
  /** Timeout of Ajax sends, JSONP calls (`clientCount`) and reload fetches. Default 10000. */
  ajaxTimeout?: number;
  /** ms a long poll may take before it counts as failed. Default 40000. */
  pollTimeout?: number;
  /** Seconds; when set, the client runs in polling-refresh mode (no connection). Default 0. */
  reloadInterval?: number;
  /** What polling-refresh mode fetches: a URL, or a path on the Ajax site. Default `"/get_client_count"`. */
  reloadUrl?: string;

  /** WebSocket constructor. Default `window.WebSocket`. */
  WebSocket?: WebSocketConstructorLike;
  /** EventSource constructor (the `sse` transport). Default `window.EventSource`. */
  EventSource?: EventSourceConstructorLike;
  /** fetch implementation. Default `window.fetch`. */
  fetch?(url: string, init: FetchInitLike): Promise<ResponseLike>;
  /** Document for JSONP scripts and `visibilitychange`. Default `window.document`. */
  document?: DocumentLike;
  /** Where the default URLs are derived from. Default `window.location`. */
  location?: LocationLike;
  /** Default `window.setTimeout`. */
  setTimeout?(handler: () => void, ms: number): unknown;
  /** Default `window.clearTimeout`. */
  clearTimeout?(id: any): void;
  /** Random source in [0, 1) for the backoff jitter. Default `Math.random`. */
  random?(): number;
}

/** `window.AppServerConfig`, as `/appserver-config.js` sets it: the server's real addresses. */
export interface AppServerConfig {
  wsUrl?: string;
  ajaxUrl?: string;
}

// ---------------------------------------------------------------------------
// The client

export type ReadyState = 0 | 1 | 2 | 3;

export interface RequestOptions {
  /** ms; default the client's `requestTimeout`. */
  timeout?: number;
}

/**
 * A connection to an appserver that survives network trouble: it falls back
 * between transports, reconnects, and recovers what it missed.
 */
export declare class Client {
  /** Connects at once unless `autoConnect: false`. @throws TypeError for bad `transports` or `ajaxMode`. */
  constructor(options?: ClientOptions);

  static readonly CONNECTING: 0;
  static readonly OPEN: 1;
  static readonly CLOSING: 2;
  static readonly CLOSED: 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;

  /** CONNECTING (also while waiting to reconnect), OPEN or CLOSED; CLOSING is never observed. */
  readonly readyState: ReadyState;
  /** `"websocket"`, `"sse"` or `"ajax"` while open, else `null`. */
  readonly transport: TransportName | null;
  /** The server's public id for this connection (from `welcome`); never the Ajax session secret. */
  readonly clientId: string | null;
  /** The WebSocket URL in use. */
  readonly url: string;
  /** The base URL of the Ajax site in use, without a trailing slash. */
  readonly ajaxUrl: string;

  /** Call `handler` for every event of `type`: a lifecycle event or an envelope type. */
  on<K extends EventName>(type: K, handler: EventHandler<K>): this;
  on<Data = AppData>(type: string, handler: EnvelopeHandler<Data>): this;
  /** The same, for the next event only. */
  once<K extends EventName>(type: K, handler: EventHandler<K>): this;
  once<Data = AppData>(type: string, handler: EnvelopeHandler<Data>): this;
  /** Remove one handler, or all the handlers of `type`. */
  off(type: string, handler?: (this: Client, ...args: any[]) => void): this;

  /** Send `{type, data}`; buffered while not open. */
  send(type: string, data?: AppData): this;
  /** An acknowledged request: resolves with the `data` of the reply; rejects with an {@link AppServerError}. */
  request<Result = AppData>(type: string, data?: AppData, options?: RequestOptions): Promise<Result>;

  /** Follow a channel, now and after every reconnect. */
  subscribe(channel: string): this;
  unsubscribe(channel: string): this;
  /** `send("publish", {channel, data})`. */
  publish(channel: string, data: AppData): this;

  /** Enter a room under a display name, kept across reconnects. */
  join(room: string, username: string): this;
  leave(room: string): this;
  /** The usernames in a room (a `members` request). */
  members(room: string): Promise<string[]>;

  /** The server's connection counts, by JSONP to `ajaxUrl + "/get_client_count"`. */
  clientCount(room?: string): Promise<ClientCounts>;

  /** Connect (with `autoConnect: false`, or again after `close()`, resuming where the client was). */
  open(): this;
  /** Close for good: no reconnect; buffered sends discarded; pending requests rejected with code `closed`. */
  close(): this;
}

/** Create a client; the same as `new Client(options)`. */
export declare function connect(options?: ClientOptions): Client;

export declare const CONNECTING: 0;
export declare const OPEN: 1;
export declare const CLOSING: 2;
export declare const CLOSED: 3;

/** The whole API as one object: what the plain script defines as `window.AppServer`. */
export interface AppServerStatic {
  Client: typeof Client;
  connect: typeof connect;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSING: 2;
  readonly CLOSED: 3;
}

declare const AppServer: AppServerStatic;
export default AppServer;
