// Uses every documented part of the client's API (docs/client.md) the way a
// TypeScript page would, so that `tsc --strict --noEmit` (types.test.mjs)
// checks js/appserver.d.ts against the documentation. Never run, only
// compiled; the `@ts-expect-error` lines must stay errors.

import AppServer, {
  Client,
  CLOSED,
  CLOSING,
  CONNECTING,
  OPEN,
  connect,
  type AppServerConfig,
  type AppServerError,
  type ChatEnvelope,
  type ClientCounts,
  type ClientEnvelope,
  type ClientOptions,
  type CloseInfo,
  type Envelope,
  type MessageEnvelope,
  type ReadyState,
  type TransportName,
  type WebSocketLike,
  type EventSourceLike,
} from "appserver-client";

// Creating a client --------------------------------------------------------

const options: ClientOptions = {
  url: "wss://rt.example/",
  ajaxUrl: "https://rt.example:9001",
  transports: ["websocket", "sse", "ajax"],
  websockets: true,
  ajaxMode: "jsonp",
  autoConnect: false,
  connectTimeout: 5000,
  reconnect: { initialDelay: 500, maxDelay: 10000, maxRetries: Infinity },
  maxBufferedSends: 100,
  heartbeatInterval: 20000,
  staleTimeout: 10000,
  requestTimeout: 10000,
  ajaxTimeout: 10000,
  pollTimeout: 40000,
  reloadInterval: 0,
  reloadUrl: "/get_client_count",
};

const client: Client = connect(options);
const same: Client = new Client({ reconnect: false, websockets: false });
const viaDefault: Client = AppServer.connect();
const viaDefaultClass: Client = new AppServer.Client({ reconnect: { maxRetries: 5 } });

// The page's own objects fit the injectable options.
const browser: Client = connect({
  autoConnect: false,
  WebSocket: window.WebSocket,
  EventSource: window.EventSource,
  fetch: window.fetch.bind(window),
  document: window.document,
  location: window.location,
  setTimeout: window.setTimeout.bind(window),
  clearTimeout: window.clearTimeout.bind(window),
  random: Math.random,
});

// And so do a test's fakes.
class FakeWebSocket implements WebSocketLike {
  readyState = 0;
  onmessage: ((event: { data: string }) => void) | null = null;
  constructor(readonly url: string) {}
  send(text: string): void {
    JSON.parse(text);
  }
  close(code?: number): void {
    this.readyState = code === undefined ? 3 : 3;
  }
}
class FakeEventSource implements EventSourceLike {
  readyState = 0;
  onmessage: ((event: { data: string; lastEventId: string }) => void) | null = null;
  onerror: (() => void) | null = null;
  constructor(readonly url: string) {}
  close(): void {
    this.readyState = 2;
  }
}
const timers = new Map<number, () => void>();
let nextTimer = 0;
const faked: Client = connect({
  autoConnect: false,
  WebSocket: FakeWebSocket,
  EventSource: FakeEventSource,
  fetch: async (url, init) => ({ status: 200, text: async () => JSON.stringify({ url, method: init.method }) }),
  document: {
    createElement: () => ({ src: "", async: false, onerror: null, parentNode: null }),
    head: { appendChild: () => undefined },
  },
  location: { protocol: "https:", hostname: "example.org" },
  setTimeout: (fn, ms) => { timers.set(++nextTimer, fn); return ms; },
  clearTimeout: (id: number) => { timers.delete(id); },
  random: () => 0.5,
});

const config: AppServerConfig = { wsUrl: "ws://h:9002/", ajaxUrl: "http://h:9001" };

// @ts-expect-error: only "json" and "jsonp"
connect({ ajaxMode: "xml" });
// @ts-expect-error: only the known transports
connect({ transports: ["comet"] });
// @ts-expect-error: reconnect is settings or false, not true
connect({ reconnect: true });

// Properties and constants -------------------------------------------------

const state: ReadyState = client.readyState;
const states: number[] = [CONNECTING, OPEN, CLOSING, CLOSED, AppServer.OPEN, Client.CLOSED, client.CONNECTING];
const transport: TransportName | null = client.transport;
const clientId: string | null = client.clientId;
const urls: string[] = [client.url, client.ajaxUrl];
if (client.readyState === AppServer.OPEN) {
  console.log("open");
}
// @ts-expect-error: the client sets its state, the page only reads it
client.readyState = 1;

// Events -------------------------------------------------------------------

client
  .on("open", (info) => {
    const opened: [TransportName | null, string | null, boolean] = [info.transport, info.clientId, info.resumed];
    console.log(opened);
  })
  .on("close", (info: CloseInfo) => console.log(info.code, info.reason, info.wasClean, info.willReconnect))
  .on("error", (error, envelope) => console.log(error.code, error.message, error.envelope?.type, envelope?.id))
  .on("reconnecting", (info) => console.log(info.attempt, info.delay, info.transport))
  .on("recovery", (info) => {
    if (!info.recovered) {
      console.log("reload your state");
    }
  })
  .on("transport", (name) => console.log(name === "websocket" || name === "sse" || name === "ajax"))
  .on("reload", (counts: ClientCounts) => console.log(counts.client_count));

client.on("chat", function (text, envelope: ChatEnvelope) {
  const self: Client = this;
  const line: string = text;
  const pos: number = envelope.pos;
  console.log(self.clientId, line.toUpperCase(), pos);
});
client.on("message", (data, envelope: MessageEnvelope) => {
  if (envelope.channel === "prices") {
    console.log(data, envelope.pos);
  }
});
client.on("join", (data) => console.log(data.username, "joined", data.room));
client.on("leave", (data) => console.log(data.username, "left", data.room));
client.on("subscribed", (data) => console.log(data.channel));
client.on("unsubscribed", (data) => console.log(data.channel));
client.on("members", (data) => console.log(data.room, data.members.length));
client.on("welcome", (data) => console.log(data.client_id, data.epoch, data.position, data.transport));
client.on("resumed", (data) => console.log(data.recovered, data.epoch, data.position));
client.on("reconnect", (data) => console.log(data.after_ms));
client.on("pong", (data, envelope) => console.log(data, envelope.type));
client.on("reply", (data, envelope) => console.log(data, envelope.id, envelope.re));
// An application-defined envelope type.
client.on<{ price: number }>("quote", (data, envelope: Envelope<string, { price: number }>) => {
  console.log(data.price.toFixed(2), envelope.type);
});
const onChat = (text: string): void => console.log(text);
client.once("chat", onChat).off("chat", onChat).off("chat");
client.once("open", (info) => console.log(info.resumed));

// @ts-expect-error: open's argument has no code
client.on("open", (info) => console.log(info.code));
// @ts-expect-error: a handler is required
client.on("chat");
// @ts-expect-error: the type of an envelope is a string
client.send(42, "hello");

// Sending, requests, channels and rooms -------------------------------------

client.send("chat", "hello").send("ping");
client.subscribe("prices").unsubscribe("prices").publish("prices", { n: 1 });
client.join("lobby", "ann").leave("lobby");

async function requests(): Promise<void> {
  const result = await client.request<{ hits: string[] }>("search", { q: "tea" }, { timeout: 5000 });
  console.log(result.hits.length);
  await client.request("ping");
  const names: string[] = await client.members("lobby");
  const counts: ClientCounts = await client.clientCount();
  const room = await client.clientCount("lobby");
  console.log(names, counts.client_count, counts.websocket, counts.ajax, counts.sse, counts.time, room.room, room.room_count);
  try {
    await client.request("publish", { channel: "ro", data: 1 });
  } catch (caught) {
    const error = caught as AppServerError;
    console.log(error.code, error.message, error.status, error.sessionLost, error.data?.code);
  }
}

const dropped: ClientEnvelope = { type: "chat", data: "x", id: 1 };

// Lifecycle --------------------------------------------------------------------

client.open().close();

// With jQuery on the page the plain script adds $.appserver; a page declares it like this.
declare const $: { appserver(options?: ClientOptions): Client };
const viaJQuery: Client = $.appserver({ websockets: false });

export { same, viaDefault, viaDefaultClass, browser, faked, config, state, states, transport, clientId, urls };
export { requests, dropped, viaJQuery };
