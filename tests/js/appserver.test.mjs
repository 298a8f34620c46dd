// Behaviour of the browser client, driven through fakes: a fake WebSocket
// class, a fake fetch, a fake document (JSONP scripts and visibility) and a
// fake clock, all injected through the client's options. These run against
// the ES module sources (js/src/); browser.test.mjs and the Chromium tests
// load the plain-script build made from them (js/appserver.js).
// Run with: node --test tests/js/

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";

import AppServer from "../../js/src/index.js";

// Fakes ---------------------------------------------------------------------

/** Timers that run only when the test says so. */
class FakeClock {
  constructor() {
    this.now = 0;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { id, fn, at: this.now + Math.max(0, ms || 0) });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
  }

  /** Advance time, running every timer that falls due, in order. */
  tick(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const timer of this.timers.values()) {
        if (timer.at <= end && (!next || timer.at < next.at || (timer.at === next.at && timer.id < next.id))) {
          next = timer;
        }
      }
      if (!next) {
        break;
      }
      this.timers.delete(next.id);
      this.now = next.at;
      next.fn();
    }
    this.now = end;
  }

  get pending() {
    return this.timers.size;
  }
}

function fakeWebSocketClass() {
  return class FakeWebSocket {
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closeCalls = [];
      FakeWebSocket.instances.push(this);
    }

    send(text) {
      assert.equal(this.readyState, 1, "send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }

    close(code) {
      this.closeCalls.push(code);
      this.readyState = 3;
    }

    // What the server side does:
    accept() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    receive(envelope) {
      const data = typeof envelope === "string" ? envelope : JSON.stringify(envelope);
      if (this.onmessage) this.onmessage({ data });
    }

    welcome(data = {}) {
      this.accept();
      this.receive({
        type: "welcome",
        data: { client_id: "c1", epoch: "E1", position: 0, transport: "websocket", ...data },
      });
    }

    drop(code = 1006, reason = "", wasClean = false) {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason, wasClean });
    }

    sentTypes() {
      return this.sent.map((envelope) => envelope.type);
    }
  };
}

/** The name of the request header that carries an Ajax session's secret. */
const SESSION_HEADER = "X-AppServer-Session";

/** A fetch whose every call waits until the test answers it. */
function fakeFetch() {
  const calls = [];
  function fetch(url, init) {
    return new Promise((resolve, reject) => {
      const parsed = new URL(url);
      // What a browser would send: header names are case-insensitive.
      const headers = new Headers(init.headers);
      const call = {
        url: parsed,
        path: parsed.pathname,
        query: Object.fromEntries(parsed.searchParams),
        method: init.method,
        headers,
        /** The session secret the request carries in its header, or null. */
        sessionHeader: headers.get(SESSION_HEADER),
        /** The poll cursor the request carries in its header, or null. */
        since: headers.get("X-AppServer-Since"),
        rawBody: init.body,
        body: init.body === undefined ? undefined : JSON.parse(init.body),
        init,
        done: false,
        respond(status, value) {
          call.done = true;
          resolve({ status, text: async () => (value === undefined ? "" : JSON.stringify(value)) });
        },
        fail() {
          call.done = true;
          reject(new TypeError("Failed to fetch"));
        },
      };
      init.signal.addEventListener("abort", () => {
        call.done = true;
        call.aborted = true;
        reject(new Error("The operation was aborted"));
      });
      calls.push(call);
    });
  }
  const open = (path) => calls.filter((call) => call.path === path && !call.done);
  return {
    fetch,
    calls,
    open,
    take(path) {
      const call = open(path)[0];
      assert.ok(call, `no ${path} request waiting (calls: ${calls.map((c) => c.path).join(", ")})`);
      return call;
    },
  };
}

function lookupCallback(name) {
  return name.split(".").reduce((scope, key) => scope[key], globalThis);
}

/** Enough of a document for JSONP script tags and visibilitychange. */
function fakeDocument() {
  const listeners = new Map();
  const doc = {
    visibilityState: "visible",
    scripts: [],
    head: {
      appendChild(element) {
        element.parentNode = doc.head;
        doc.scripts.push(element);
      },
      removeChild(element) {
        element.parentNode = null;
      },
    },
    createElement(tag) {
      return { tagName: tag.toUpperCase(), parentNode: null };
    },
    addEventListener(type, fn) {
      listeners.set(type, [...(listeners.get(type) || []), fn]);
    },
    removeEventListener(type, fn) {
      listeners.set(type, (listeners.get(type) || []).filter((other) => other !== fn));
    },
    fire(type) {
      for (const fn of listeners.get(type) || []) fn({ type });
    },
    listenerCount(type) {
      return (listeners.get(type) || []).length;
    },
    /** Script tags still in the page. */
    live() {
      return doc.scripts.filter((script) => script.parentNode);
    },
    takeScript(path) {
      const script = doc.live().find((candidate) => new URL(candidate.src).pathname === path);
      assert.ok(script, `no script for ${path} (live: ${doc.live().map((s) => s.src).join(", ")})`);
      return script;
    },
    answer(script, value) {
      lookupCallback(new URL(script.src).searchParams.get("callback"))(value);
    },
  };
  return doc;
}

/** Let promise chains (fetch, JSONP) run to their next waiting point. */
async function flush() {
  for (let i = 0; i < 20; i++) {
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * The outcome of a promise once pending work has run. A promise that never
 * settles fails the test here instead of stalling the whole file.
 */
async function settle(promise) {
  let outcome = { state: "pending" };
  promise.then(
    (value) => { outcome = { state: "fulfilled", value }; },
    (error) => { outcome = { state: "rejected", error }; },
  );
  await flush();
  return outcome;
}

async function valueOf(promise) {
  const outcome = await settle(promise);
  assert.equal(outcome.state, "fulfilled", outcome.error ? outcome.error.stack : "still pending");
  return outcome.value;
}

async function assertRejected(promise, expected) {
  const outcome = await settle(promise);
  assert.equal(outcome.state, "rejected", "expected a rejection");
  for (const [key, value] of Object.entries(expected)) {
    assert.equal(outcome.error[key], value, `error.${key}`);
  }
}

const clients = [];
afterEach(() => {
  while (clients.length) clients.pop().close();
});

/**
 * A client wired to fakes. `h.log` records lifecycle events and envelopes;
 * `h.ws` is the newest fake socket.
 */
function setup(options = {}) {
  const clock = new FakeClock();
  const WebSocket = fakeWebSocketClass();
  const http = fakeFetch();
  const doc = fakeDocument();
  let randomCalls = 0;
  const random = options.random || (() => 0.5);
  const client = AppServer.connect({
    url: "ws://test:9002/",
    ajaxUrl: "http://test:9001",
    WebSocket,
    fetch: http.fetch,
    document: doc,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    ...options,
    random: () => {
      randomCalls += 1;
      return random();
    },
  });
  clients.push(client);
  const h = {
    clock,
    WebSocket,
    http,
    doc,
    client,
    log: [],
    get ws() {
      return WebSocket.instances[WebSocket.instances.length - 1];
    },
    get randomCalls() {
      return randomCalls;
    },
    record(...types) {
      for (const type of types) client.on(type, (data) => h.log.push([type, data]));
      return h;
    },
    logged(type) {
      return h.log.filter(([logged]) => logged === type).map(([, data]) => data);
    },
  };
  return h;
}

/** A client whose WebSocket is open (welcome received). */
function connected(options = {}, welcome = {}) {
  const h = setup(options);
  h.ws.welcome(welcome);
  return h;
}

/** Drop the open socket and let the reconnect timer fire; returns the new socket. */
function reconnect(h, code = 1006) {
  const old = h.ws;
  old.drop(code);
  const [event] = h.logged("reconnecting").slice(-1);
  h.clock.tick(event ? event.delay : 10000);
  assert.notEqual(h.ws, old, "no new socket after the reconnect delay");
  return h.ws;
}

// Events ----------------------------------------------------------------------

describe("events", () => {
  test("an envelope reaches on(type) handlers as (data, envelope); chat data is the text", () => {
    const h = connected();
    const got = [];
    h.client.on("chat", (data, envelope) => got.push([data, envelope.pos]));
    h.ws.receive({ type: "chat", data: "Message from 1.2.3.4 : hi", pos: 1 });
    assert.deepEqual(got, [["Message from 1.2.3.4 : hi", 1]]);
  });

  test("a channel message carries its channel in the envelope", () => {
    const h = connected();
    const got = [];
    h.client.on("message", (data, envelope) => got.push([envelope.channel, data]));
    h.ws.receive({ type: "message", channel: "news", data: { n: 1 }, pos: 3 });
    assert.deepEqual(got, [["news", { n: 1 }]]);
  });

  test("off(type, handler) removes that handler only; off(type) removes all", () => {
    const h = connected();
    const got = [];
    const a = () => got.push("a");
    const b = () => got.push("b");
    h.client.on("news", a).on("news", b);
    h.client.off("news", a);
    h.ws.receive({ type: "news" });
    assert.deepEqual(got, ["b"]);
    h.client.off("news");
    h.ws.receive({ type: "news" });
    assert.deepEqual(got, ["b"]);
  });

  test("once() handlers run for the next event only", () => {
    const h = connected();
    let calls = 0;
    h.client.once("news", () => calls++);
    h.ws.receive({ type: "news" });
    h.ws.receive({ type: "news" });
    assert.equal(calls, 1);
  });

  test("a throwing handler does not stop the other handlers", (t) => {
    const h = connected();
    t.mock.method(console, "error", () => {});
    const got = [];
    h.client.on("news", () => {
      throw new Error("boom");
    });
    h.client.on("news", () => got.push("second"));
    h.ws.receive({ type: "news" });
    assert.deepEqual(got, ["second"]);
  });

  test("open fires after welcome, with transport and client id", () => {
    const h = setup().record("open", "transport");
    assert.equal(h.client.readyState, AppServer.CONNECTING);
    h.ws.accept();
    assert.equal(h.client.readyState, AppServer.CONNECTING, "open only once the server said welcome");
    h.ws.receive({ type: "welcome", data: { client_id: "abc", epoch: "E1", position: 0 } });
    assert.equal(h.client.readyState, AppServer.OPEN);
    assert.equal(h.client.transport, "websocket");
    assert.equal(h.client.clientId, "abc");
    assert.deepEqual(h.log, [
      ["transport", "websocket"],
      ["open", { transport: "websocket", clientId: "abc", resumed: false }],
    ]);
  });

  test("default URLs come from the page location", () => {
    const client = AppServer.connect({ autoConnect: false, location: { protocol: "https:", hostname: "example.org" } });
    assert.equal(client.url, "wss://example.org:9002/");
    assert.equal(client.ajaxUrl, "https://example.org:9001");
    assert.equal(client.readyState, AppServer.CLOSED);
  });

  test("window.AppServerConfig overrides the derived URLs", () => {
    globalThis.AppServerConfig = { wsUrl: "ws://cfg:1/", ajaxUrl: "http://cfg:2/" };
    try {
      const client = AppServer.connect({ autoConnect: false, location: { protocol: "http:", hostname: "x" } });
      assert.equal(client.url, "ws://cfg:1/");
      assert.equal(client.ajaxUrl, "http://cfg:2");
    } finally {
      delete globalThis.AppServerConfig;
    }
  });

  test("autoConnect: false waits for open()", () => {
    const h = setup({ autoConnect: false });
    assert.equal(h.WebSocket.instances.length, 0);
    h.client.open();
    assert.equal(h.WebSocket.instances.length, 1);
    assert.equal(h.ws.url, "ws://test:9002/");
  });
});

// Offline buffer ----------------------------------------------------------------

describe("offline send buffer", () => {
  test("sends made before the connection opens go out in order after welcome", () => {
    const h = setup();
    h.client.send("chat", "one").send("chat", "two");
    assert.deepEqual(h.ws.sent, []);
    h.ws.welcome();
    assert.deepEqual(h.ws.sent, [
      { type: "chat", data: "one" },
      { type: "chat", data: "two" },
    ]);
  });

  test("a full buffer drops its oldest envelope and says so", async () => {
    const h = setup({ maxBufferedSends: 2 }).record("error");
    const dropped = h.client.request("members", { room: "r" });
    h.client.send("chat", "a");
    h.client.send("chat", "b");
    await assertRejected(dropped, { code: "buffer_overflow" });
    assert.equal(h.logged("error")[0].code, "buffer_overflow");
    assert.equal(h.logged("error")[0].envelope.type, "members");
    h.ws.welcome();
    assert.deepEqual(h.ws.sent.map((envelope) => envelope.data), ["a", "b"]);
  });
});

// Requests --------------------------------------------------------------------

describe("requests", () => {
  test("request() resolves with the data of the reply with its id; ids count up", async () => {
    const h = connected();
    const first = h.client.request("sum", [1, 2]);
    const second = h.client.request("sum", [3, 4]);
    assert.deepEqual(h.ws.sent, [
      { type: "sum", data: [1, 2], id: 1 },
      { type: "sum", data: [3, 4], id: 2 },
    ]);
    h.ws.receive({ type: "reply", re: "sum", id: 2, data: 7 });
    h.ws.receive({ type: "reply", re: "sum", id: 1, data: 3 });
    assert.deepEqual(await valueOf(Promise.all([first, second])), [3, 7]);
  });

  test("an error envelope rejects the request with its code, and is not an error event", async () => {
    const h = connected().record("error");
    const pending = h.client.request("publish", { channel: "ro", data: 1 });
    h.ws.receive({ type: "error", id: 1, data: { code: "forbidden", message: "read-only" } });
    await assertRejected(pending, { code: "forbidden", message: "read-only" });
    assert.deepEqual(h.logged("error"), []);
  });

  test("an error envelope without a pending request is an error event", () => {
    const h = connected().record("error");
    h.ws.receive({ type: "error", id: null, data: { code: "rate_limited", message: "slow down" } });
    assert.deepEqual(h.logged("error"), [{ code: "rate_limited", message: "slow down" }]);
  });

  test("no reply in time rejects with code timeout", async () => {
    const h = connected();
    const pending = h.client.request("slow", null, { timeout: 1000 });
    h.clock.tick(999);
    h.ws.receive({ type: "reply", id: 99, data: null });
    h.clock.tick(1);
    await assertRejected(pending, { code: "timeout" });
  });

  test("a sent request fails with disconnected; an unsent one survives the reconnect", async () => {
    const h = connected().record("reconnecting");
    const sent = h.client.request("work", 1);
    reconnect(h).drop(); // the first reconnect attempt fails too
    const unsent = h.client.request("work", 2);
    await assertRejected(sent, { code: "disconnected" });
    h.clock.tick(h.logged("reconnecting").pop().delay);
    h.ws.welcome();
    assert.deepEqual(h.ws.sent.find((envelope) => envelope.type === "work"), { type: "work", data: 2, id: 2 });
    h.ws.receive({ type: "reply", id: 2, data: "done" });
    assert.equal(await valueOf(unsent), "done");
  });

  test("members() resolves the room's member list", async () => {
    const h = connected();
    const members = h.client.members("lobby");
    assert.deepEqual(h.ws.sent, [{ type: "members", data: { room: "lobby" }, id: 1 }]);
    h.ws.receive({ type: "reply", re: "members", id: 1, data: { room: "lobby", members: ["ann", "bob"] } });
    assert.deepEqual(await valueOf(members), ["ann", "bob"]);
  });
});

// Reconnect and backoff --------------------------------------------------------

describe("reconnect backoff", () => {
  /** Fail `count` connection attempts in a row; returns the announced delays. */
  function failAttempts(h, count) {
    for (let i = 0; i < count; i++) {
      h.ws.drop();
      h.clock.tick(h.logged("reconnecting").pop().delay);
    }
  }

  test("delays use full jitter under a cap that doubles up to maxDelay", () => {
    const h = setup({ transports: ["websocket"], random: () => 0.999999 }).record("reconnecting");
    const delays = [];
    h.client.on("reconnecting", (event) => delays.push(event.delay));
    failAttempts(h, 7);
    assert.deepEqual(delays, [499, 999, 1999, 3999, 7999, 9999, 9999]);
  });

  test("a delay can be anything down to zero, drawn anew for every attempt", () => {
    const draws = [0, 0.5, 0.25];
    const h = setup({ transports: ["websocket"], random: () => draws.shift() });
    const delays = [];
    h.client.on("reconnecting", (event) => delays.push(event.delay));
    h.record("reconnecting");
    failAttempts(h, 3);
    assert.deepEqual(delays, [0, 500, 500]);
    assert.equal(h.randomCalls, 3);
  });

  test("the reconnect waits for its delay", () => {
    const h = setup({ transports: ["websocket"], random: () => 0.5 }).record("reconnecting");
    h.ws.drop();
    assert.equal(h.logged("reconnecting")[0].delay, 250);
    h.clock.tick(249);
    assert.equal(h.WebSocket.instances.length, 1);
    h.clock.tick(1);
    assert.equal(h.WebSocket.instances.length, 2);
  });

  test("the attempt counter resets only after a connection stayed open 5 s", () => {
    const h = setup({ transports: ["websocket"], random: () => 0.999999 });
    const delays = [];
    h.client.on("reconnecting", (event) => delays.push(event.delay));
    h.record("reconnecting");
    failAttempts(h, 2); // caps 500, 1000
    h.ws.welcome();
    h.clock.tick(4999);
    failAttempts(h, 1); // open < 5 s: the cap keeps growing
    h.ws.welcome();
    h.clock.tick(5000);
    failAttempts(h, 1); // open 5 s: back to the first cap
    assert.deepEqual(delays, [499, 999, 1999, 499]);
  });

  test("maxRetries bounds the attempts, then the client closes", async () => {
    const h = setup({ transports: ["websocket"], reconnect: { maxRetries: 2 } }).record("error", "close", "reconnecting");
    failAttempts(h, 2);
    h.ws.drop();
    await flush();
    assert.equal(h.client.readyState, AppServer.CLOSED);
    assert.deepEqual(h.logged("error").map((error) => error.code), ["reconnect_failed"]);
    assert.equal(h.logged("close").length, 1);
    assert.equal(h.clock.pending, 0);
    assert.equal(h.WebSocket.instances.length, 3);
  });

  test("reconnect: false closes for good when the connection drops", () => {
    const h = connected({ transports: ["websocket"], reconnect: false }).record("close", "reconnecting");
    h.ws.drop(1006);
    assert.equal(h.client.readyState, AppServer.CLOSED);
    assert.deepEqual(h.logged("close"), [{ code: 1006, reason: "", wasClean: false, willReconnect: false }]);
    h.clock.tick(60000);
    assert.equal(h.WebSocket.instances.length, 1);
  });

  test("the server's reconnect envelope sets the delay, with no backoff added", () => {
    const h = connected({ random: () => 0.999999 }).record("reconnecting", "reconnect");
    h.ws.receive({ type: "reconnect", data: { after_ms: 1234 } });
    assert.deepEqual(h.logged("reconnect"), [{ after_ms: 1234 }]);
    h.ws.drop(1001, "server shutting down", true);
    assert.equal(h.logged("reconnecting")[0].delay, 1234);
    assert.equal(h.randomCalls, 0);
    h.clock.tick(1233);
    assert.equal(h.WebSocket.instances.length, 1);
    h.clock.tick(1);
    assert.equal(h.WebSocket.instances.length, 2);
    assert.equal(h.ws.url, "ws://test:9002/", "stays on the WebSocket");
  });
});

// Recovery ----------------------------------------------------------------------

describe("recovery", () => {
  test("a reconnect resumes (epoch, highest position, channels), rejoins rooms, then flushes sends", () => {
    const h = connected({}, { epoch: "E1", position: 10 }).record("reconnecting");
    h.client.subscribe("news");
    h.client.join("lobby", "ann");
    assert.deepEqual(h.ws.sent, [
      { type: "subscribe", data: { channel: "news" } },
      { type: "join", data: { room: "lobby", username: "ann" } },
    ]);
    h.ws.receive({ type: "chat", data: "x", pos: 11 });
    h.ws.receive({ type: "message", channel: "news", data: 1, pos: 15 });
    h.ws.drop();
    h.client.send("chat", "written offline");
    h.clock.tick(h.logged("reconnecting")[0].delay);
    h.ws.welcome({ epoch: "E1", position: 20 });
    assert.deepEqual(h.ws.sent, [
      { type: "resume", data: { epoch: "E1", since: 15, channels: ["news"] } },
      { type: "join", data: { room: "lobby", username: "ann" } },
      { type: "chat", data: "written offline" },
    ]);
  });

  test("the first connection subscribes and joins what was asked before it opened, without resume", () => {
    const h = setup();
    h.client.subscribe("news").subscribe("news").join("lobby", "ann");
    h.ws.welcome();
    assert.deepEqual(h.ws.sent, [
      { type: "subscribe", data: { channel: "news" } },
      { type: "join", data: { room: "lobby", username: "ann" } },
    ]);
  });

  test("unsubscribe and leave are forgotten by the next resume", () => {
    const h = connected().record("reconnecting");
    h.client.subscribe("a").subscribe("b").join("r1", "ann").join("r2", "ann");
    h.client.unsubscribe("a");
    h.client.leave("r1");
    assert.deepEqual(h.ws.sent.slice(-2), [
      { type: "unsubscribe", data: { channel: "a" } },
      { type: "leave", data: { room: "r1" } },
    ]);
    reconnect(h).welcome();
    assert.deepEqual(h.ws.sent, [
      { type: "resume", data: { epoch: "E1", since: 0, channels: ["b"] } },
      { type: "join", data: { room: "r2", username: "ann" } },
    ]);
  });

  test("the resumed answer becomes a recovery event", () => {
    const h = connected().record("recovery", "reconnecting", "open");
    reconnect(h).welcome();
    assert.deepEqual(h.logged("open").map((event) => event.resumed), [true]);
    h.ws.receive({ type: "resumed", data: { recovered: false, epoch: "E1", position: 9 } });
    assert.deepEqual(h.logged("recovery"), [{ recovered: false }]);
  });

  test("a live gap notice becomes a recovery event with live: true, and a gap event", () => {
    const h = connected().record("recovery", "gap", "reconnecting");
    const data = { recovered: false, epoch: "E1", position: 42, channel: "news" };
    h.ws.receive({ type: "gap", data: data });
    assert.deepEqual(h.logged("recovery"),
      [{ recovered: false, live: true, position: 42, channel: "news" }]);
    assert.deepEqual(h.logged("gap"), [data]);
    assert.deepEqual(h.logged("reconnecting"), []);
  });

  test("envelopes at or below the highest position seen are dropped", () => {
    const h = connected({}, { position: 2 }).record("chat", "reconnecting");
    for (const pos of [3, 5, 5, 4]) h.ws.receive({ type: "chat", data: `#${pos}`, pos });
    reconnect(h).welcome({ position: 9 });
    for (const pos of [4, 5, 6, 9]) h.ws.receive({ type: "chat", data: `#${pos}`, pos }); // the replay
    h.ws.receive({ type: "resumed", data: { recovered: true } });
    h.ws.receive({ type: "chat", data: "#9", pos: 9 });
    assert.deepEqual(h.logged("chat"), ["#3", "#5", "#6", "#9"]);
  });

  test("live messages that arrive during the replay wait for it and come after it", () => {
    const h = connected({}, { position: 10 }).record("chat", "recovery", "reconnecting");
    h.ws.receive({ type: "chat", data: "#15", pos: 15 });
    reconnect(h).welcome({ position: 20 });
    h.ws.receive({ type: "chat", data: "#22", pos: 22 }); // live, before the replay
    h.ws.receive({ type: "chat", data: "#16", pos: 16 }); // replayed
    h.ws.receive({ type: "chat", data: "#21", pos: 21 }); // live
    h.ws.receive({ type: "chat", data: "#18", pos: 18 }); // replayed
    assert.deepEqual(h.logged("chat"), ["#15", "#16", "#18"]);
    h.ws.receive({ type: "resumed", data: { recovered: true } });
    assert.deepEqual(h.log.filter(([type]) => type !== "reconnecting").map(([, data]) => data), [
      "#15", "#16", "#18", { recovered: true }, "#21", "#22",
    ]);
  });

  test("a new server epoch restarts the positions", () => {
    const h = connected({}, { epoch: "E1", position: 50 }).record("chat", "reconnecting");
    h.ws.receive({ type: "chat", data: "old", pos: 51 });
    reconnect(h).welcome({ epoch: "E2", position: 3 });
    assert.deepEqual(h.ws.sent[0], { type: "resume", data: { epoch: "E1", since: 51, channels: [] } });
    h.ws.receive({ type: "resumed", data: { recovered: false, epoch: "E2", position: 3 } });
    h.ws.receive({ type: "chat", data: "new", pos: 4 });
    assert.deepEqual(h.logged("chat"), ["old", "new"]);
  });
});

// Liveness ------------------------------------------------------------------------

describe("liveness", () => {
  test("silence brings a ping; no answer in staleTimeout closes and reconnects", () => {
    const h = connected({ heartbeatInterval: 20000, staleTimeout: 10000 }).record("close", "reconnecting");
    const socket = h.ws;
    h.clock.tick(19999);
    assert.deepEqual(socket.sent, []);
    h.clock.tick(1);
    assert.deepEqual(socket.sent, [{ type: "ping" }]);
    h.clock.tick(9999);
    assert.equal(h.client.readyState, AppServer.OPEN);
    h.clock.tick(1);
    assert.deepEqual(socket.closeCalls.length, 1);
    assert.equal(h.logged("close")[0].reason, "stale connection");
    assert.equal(h.logged("reconnecting").length, 1);
  });

  test("any traffic after the ping keeps the connection", () => {
    const h = connected({ heartbeatInterval: 20000, staleTimeout: 10000 }).record("close");
    h.clock.tick(20000);
    h.ws.receive({ type: "pong", data: null });
    h.clock.tick(10000);
    assert.equal(h.client.readyState, AppServer.OPEN);
    assert.deepEqual(h.logged("close"), []);
  });

  test("traffic pushes the next ping back", () => {
    const h = connected({ heartbeatInterval: 20000 });
    h.clock.tick(15000);
    h.ws.receive({ type: "chat", data: "x", pos: 1 });
    h.clock.tick(15000);
    assert.deepEqual(h.ws.sent, []);
  });

  test("becoming visible pings at once and applies the stale check", () => {
    const h = connected({ heartbeatInterval: 20000, staleTimeout: 10000 }).record("reconnecting");
    h.clock.tick(1000);
    h.doc.visibilityState = "visible";
    h.doc.fire("visibilitychange");
    assert.deepEqual(h.ws.sent, [{ type: "ping" }]);
    h.clock.tick(10000);
    assert.equal(h.logged("reconnecting").length, 1);
  });

  test("becoming hidden does not ping", () => {
    const h = connected();
    h.doc.visibilityState = "hidden";
    h.doc.fire("visibilitychange");
    assert.deepEqual(h.ws.sent, []);
  });
});

// close() ---------------------------------------------------------------------------

describe("close()", () => {
  test("stops everything: socket, timers, requests, events, reconnects", async () => {
    const h = connected().record("close", "chat", "reconnecting");
    const socket = h.ws;
    const pending = h.client.request("work");
    h.client.send("later"); // sent now
    h.client.close();
    await assertRejected(pending, { code: "closed" });
    assert.deepEqual(socket.closeCalls, [1000]);
    assert.equal(h.client.readyState, AppServer.CLOSED);
    assert.equal(h.client.transport, null);
    assert.equal(h.clock.pending, 0, "no timer left running");
    assert.equal(h.doc.listenerCount("visibilitychange"), 0);
    socket.receive({ type: "chat", data: "late", pos: 5 });
    socket.drop();
    h.clock.tick(60000);
    assert.equal(h.WebSocket.instances.length, 1);
    assert.deepEqual(h.log, [["close", { code: 1000, reason: "closed by the client", wasClean: true, willReconnect: false }]]);
  });

  test("cancels a reconnect that was waiting", () => {
    const h = connected().record("reconnecting");
    h.ws.drop();
    assert.equal(h.logged("reconnecting").length, 1);
    h.client.close();
    h.clock.tick(60000);
    assert.equal(h.WebSocket.instances.length, 1);
    assert.equal(h.clock.pending, 0);
  });
});

// Transport fallback ----------------------------------------------------------------

/** What POST /connect answers (its `position` is the session's own cursor). */
const ANSWER = { session: "S1", client_id: "a1", epoch: "E1", position: 0 };

/** The first poll answer of a session: the welcome the server queued at connect. */
function welcomePoll(data = {}, extra = []) {
  return {
    messages: [{ type: "welcome", data: { client_id: "a1", epoch: "E1", position: 7, transport: "ajax", ...data } }, ...extra],
    position: 1 + extra.length,
  };
}

/** Answer the pending /connect and the first /poll of a new session. */
async function openSession(h, answer = ANSWER, welcome = {}) {
  await flush();
  h.http.take("/connect").respond(200, answer);
  await flush();
  const poll = h.http.take("/poll");
  assert.deepEqual(poll.query, {});
    assert.equal(poll.since, "0");
  assert.equal(poll.sessionHeader, answer.session);
  poll.respond(200, welcomePoll(welcome));
  await flush();
}

describe("transport fallback", () => {
  test("without a WebSocket constructor the client uses Ajax", async () => {
    const h = setup({ WebSocket: undefined }).record("transport", "open");
    await flush();
    assert.equal(h.http.open("/connect")[0].method, "POST");
    await openSession(h);
    assert.equal(h.client.transport, "ajax");
    assert.deepEqual(h.logged("transport"), ["ajax"]);
    assert.equal(h.client.readyState, AppServer.OPEN);
  });

  test("a WebSocket that fails before opening falls back to Ajax at once", async () => {
    const h = setup();
    h.ws.drop(1006);
    await flush();
    assert.equal(h.http.open("/connect").length, 1);
    assert.equal(h.clock.now, 0);
  });

  test("a WebSocket whose handshake hangs is abandoned after connectTimeout", async () => {
    const h = setup({ connectTimeout: 5000 });
    h.ws.accept(); // the socket opens, but no welcome comes
    h.clock.tick(4999);
    await flush();
    assert.equal(h.http.open("/connect").length, 0);
    h.clock.tick(1);
    await flush();
    assert.deepEqual(h.ws.closeCalls, [1000]);
    assert.equal(h.http.open("/connect").length, 1);
  });

  test("a transport that worked is kept until it fails 3 times without opening", async () => {
    const h = connected().record("reconnecting");
    h.ws.drop();
    for (let failure = 1; failure <= 3; failure++) {
      h.clock.tick(h.logged("reconnecting").pop().delay);
      await flush();
      assert.equal(h.http.calls.length, 0, `still on the WebSocket before failure ${failure}`);
      h.ws.drop();
    }
    await flush();
    assert.equal(h.http.open("/connect").length, 1);
    assert.equal(h.WebSocket.instances.length, 4);
  });

  test("when every transport fails the client backs off, then tries them again", async () => {
    const h = setup().record("reconnecting");
    h.ws.drop();
    await flush();
    h.http.take("/connect").fail();
    await flush();
    assert.equal(h.logged("reconnecting").length, 1);
    h.clock.tick(h.logged("reconnecting")[0].delay);
    assert.equal(h.WebSocket.instances.length, 2);
  });
});

// Ajax transport ----------------------------------------------------------------------

/** An Ajax-only client whose session S1 is open (welcome at position 7, poll cursor 1). */
async function ajaxConnected(options = {}) {
  const h = setup({ transports: ["ajax"], ...options });
  await openSession(h);
  return h;
}

describe("Ajax transport", () => {
  test("connect, then long polls: since starts at 0 and follows the server's position", async () => {
    const h = setup({ transports: ["ajax"] }).record("open", "welcome", "chat");
    await flush();
    h.http.take("/connect").respond(200, ANSWER);
    await flush();
    const first = h.http.take("/poll");
    assert.equal(first.method, "GET");
    assert.deepEqual(first.query, {});
    assert.equal(first.since, "0");
    assert.equal(first.sessionHeader, "S1");
    assert.deepEqual(h.logged("open"), [], "open once the welcome arrived");
    first.respond(200, welcomePoll({}, [
      { type: "chat", data: "one", pos: 8 },
      { type: "chat", data: "two", pos: 9 },
    ]));
    await flush();
    assert.deepEqual(h.logged("open"), [{ transport: "ajax", clientId: "a1", resumed: false }]);
    assert.deepEqual(h.logged("chat"), ["one", "two"]);
    assert.equal(h.logged("welcome").length, 1, "one welcome per connection");
    const second = h.http.take("/poll");
    assert.deepEqual(second.query, {});
    assert.equal(second.since, "3");
    assert.equal(second.sessionHeader, "S1");
    second.respond(200, { messages: [{ type: "welcome", data: {} }, { type: "chat", data: "three", pos: 10 }], position: 5 });
    await flush();
    assert.deepEqual(h.logged("chat"), ["one", "two", "three"]);
    assert.equal(h.logged("welcome").length, 1);
    const third = h.http.take("/poll");
    assert.equal(third.since, "5");
    assert.equal(third.url.href, first.url.href, "one URL for every poll: the browser's preflight cache is per URL");
  });

  test("sends go one at a time, in order, as plain JSON bodies", async () => {
    const h = await ajaxConnected();
    h.client.send("chat", "a").send("chat", "b");
    await flush();
    const first = h.http.take("/send");
    assert.equal(h.http.open("/send").length, 1, "one send in flight");
    assert.equal(first.method, "POST");
    assert.deepEqual(first.query, {});
    assert.equal(first.sessionHeader, "S1");
    assert.deepEqual(first.body, { type: "chat", data: "a" });
    assert.equal(typeof first.rawBody, "string");
    assert.deepEqual([...first.headers.keys()], [SESSION_HEADER.toLowerCase()], "no header but the session's");
    first.respond(200, { ok: true });
    await flush();
    assert.deepEqual(h.http.take("/send").body, { type: "chat", data: "b" });
  });

  test("sends made while connecting go out once the session is welcomed", async () => {
    const h = setup({ transports: ["ajax"] });
    h.client.send("chat", "early");
    await flush();
    h.http.take("/connect").respond(200, ANSWER);
    await flush();
    assert.equal(h.http.open("/send").length, 0);
    h.http.take("/poll").respond(200, welcomePoll());
    await flush();
    assert.deepEqual(h.http.take("/send").body, { type: "chat", data: "early" });
  });

  test("replies and errors arriving by poll settle requests", async () => {
    const h = await ajaxConnected();
    const ok = h.client.request("sum", [1, 2]);
    const bad = h.client.request("nope");
    await flush();
    h.http.take("/send").respond(200, { ok: true });
    await flush();
    h.http.take("/send").respond(200, { ok: true });
    h.http.take("/poll").respond(200, {
      messages: [
        { type: "reply", re: "sum", id: 1, data: 3 },
        { type: "error", id: 2, data: { code: "unknown_type", message: "no handler" } },
      ],
      position: 3,
    });
    await assertRejected(bad, { code: "unknown_type" });
    assert.equal(await valueOf(ok), 3);
  });

  test("an envelope the server refuses becomes an error, and the session goes on", async () => {
    const h = await ajaxConnected();
    const pending = h.client.request("x".repeat(10));
    await flush();
    h.http.take("/send").respond(400, { error: { code: "bad_envelope", message: "bad" } });
    await assertRejected(pending, { code: "bad_envelope" });
    assert.equal(h.client.readyState, AppServer.OPEN);
  });

  test("410 on a poll: new session, then resume on it", async () => {
    const h = (await ajaxConnected()).record("reconnecting", "close", "chat", "recovery");
    h.http.take("/poll").respond(200, { messages: [{ type: "chat", data: "#9", pos: 9 }], position: 2 });
    await flush();
    h.http.take("/poll").respond(410, { error: { code: "unknown_session", message: "expired" } });
    await flush();
    assert.equal(h.logged("close")[0].reason, "unknown_session");
    h.clock.tick(h.logged("reconnecting")[0].delay);
    await flush();
    h.http.take("/connect").respond(200, { ...ANSWER, session: "S2" });
    await flush();
    const first = h.http.take("/poll");
    assert.deepEqual(first.query, {});
    assert.equal(first.since, "0");
    assert.equal(first.sessionHeader, "S2");
    // Live #13 is queued right after the welcome, before the replay.
    first.respond(200, welcomePoll({ position: 12 }, [{ type: "chat", data: "#13", pos: 13 }]));
    await flush();
    const resume = h.http.take("/send");
    assert.deepEqual(resume.query, {});
    assert.equal(resume.sessionHeader, "S2");
    assert.deepEqual(resume.body, { type: "resume", data: { epoch: "E1", since: 9, channels: [] } });
    h.http.take("/poll").respond(200, {
      messages: [
        { type: "chat", data: "#11", pos: 11 },
        { type: "resumed", id: null, data: { recovered: true, epoch: "E1", position: 13 } },
      ],
      position: 4,
    });
    await flush();
    assert.deepEqual(h.log.filter(([type]) => type === "chat" || type === "recovery").map(([, data]) => data), [
      "#9", "#11", { recovered: true }, "#13",
    ]);
  });

  test("unknown_session on a send: the envelope goes again on the new session", async () => {
    const h = (await ajaxConnected()).record("reconnecting");
    h.client.send("chat", "keep me");
    await flush();
    h.http.take("/send").respond(410, { error: { code: "unknown_session", message: "expired" } });
    await flush();
    h.clock.tick(h.logged("reconnecting")[0].delay);
    await openSession(h, { ...ANSWER, session: "S2" });
    const resume = h.http.take("/send");
    assert.equal(resume.body.type, "resume");
    resume.respond(200, { ok: true });
    await flush();
    const again = h.http.take("/send");
    assert.deepEqual(again.query, {});
    assert.equal(again.sessionHeader, "S2");
    assert.deepEqual(again.body, { type: "chat", data: "keep me" });
  });

  test("a session the server closes ends the connection; shutdown honours the reconnect delay", async () => {
    const h = (await ajaxConnected({ random: () => 0.999999 })).record("reconnecting", "close");
    h.http.take("/poll").respond(200, {
      messages: [{ type: "reconnect", id: null, data: { after_ms: 2500 } }],
      position: 2,
    });
    await flush();
    h.http.take("/poll").respond(200, { messages: [], position: 2, closed: { code: 1001, reason: "server shutting down" } });
    await flush();
    assert.deepEqual(h.logged("close"), [
      { code: 1001, reason: "server shutting down", wasClean: true, willReconnect: true },
    ]);
    assert.equal(h.logged("reconnecting")[0].delay, 2500);
    assert.equal(h.http.open("/poll").length, 0, "no poll on a closed session");
    h.clock.tick(2500);
    await flush();
    assert.equal(h.http.open("/connect").length, 1);
  });

  test("a failing poll loses the connection and backs off like a reconnect", async () => {
    const h = (await ajaxConnected({ random: () => 0.999999 })).record("reconnecting", "close");
    h.http.take("/poll").fail();
    await flush();
    assert.equal(h.client.readyState, AppServer.CONNECTING);
    assert.equal(h.logged("close").length, 1);
    const [{ delay }] = h.logged("reconnecting");
    assert.ok(delay >= 0 && delay <= 500, `delay ${delay} within the first cap`);
    assert.equal(h.http.open("/connect").length, 0);
    h.clock.tick(delay);
    await flush();
    assert.equal(h.http.open("/connect").length, 1);
  });

  test("a poll that hangs past pollTimeout counts as failed", async () => {
    const h = (await ajaxConnected({ pollTimeout: 40000 })).record("close");
    const poll = h.http.take("/poll");
    h.clock.tick(40000);
    await flush();
    assert.equal(poll.aborted, true);
    assert.equal(h.logged("close")[0].reason, "timeout");
  });

  test("close() ends the session on the server and stops polling", async () => {
    const h = await ajaxConnected();
    const poll = h.http.take("/poll");
    h.client.close();
    await flush();
    assert.equal(poll.aborted, true);
    const disconnect = h.http.take("/disconnect");
    assert.equal(disconnect.method, "POST");
    assert.deepEqual(disconnect.query, {});
    assert.equal(disconnect.sessionHeader, "S1");
    assert.equal(h.clock.pending, 1, "only the disconnect request's own timeout");
  });
});

// The session secret ---------------------------------------------------------------

/** An opaque session secret, shaped like the server's (with a dot and a node name). */
const SECRET = "q7Zr-9xK_2mT4vB8wLcN.node-2";

describe("Ajax session secret", () => {
  test("JSON poll, send and disconnect carry it in the header and never in the URL", async () => {
    const h = setup({ transports: ["ajax"] });
    await flush();
    const connect = h.http.take("/connect");
    assert.equal(connect.sessionHeader, null, "no secret before there is one");
    assert.deepEqual(connect.query, {});
    connect.respond(200, { ...ANSWER, session: SECRET });
    await flush();
    const first = h.http.take("/poll");
    assert.equal(first.sessionHeader, SECRET);
    assert.deepEqual(first.query, {});
    assert.equal(first.since, "0");
    first.respond(200, welcomePoll());
    await flush();
    h.client.send("chat", "hi");
    await flush();
    const send = h.http.take("/send");
    assert.equal(send.sessionHeader, SECRET);
    assert.deepEqual(send.query, {});
    send.respond(200, { ok: true });
    await flush();
    const poll = h.http.take("/poll");
    assert.equal(poll.sessionHeader, SECRET);
    assert.deepEqual(poll.query, {});
    assert.equal(poll.since, "1");
    h.client.close();
    await flush();
    const disconnect = h.http.take("/disconnect");
    assert.equal(disconnect.sessionHeader, SECRET);
    assert.deepEqual(disconnect.query, {});
    assert.equal(h.http.calls.length, 5);
    for (const call of h.http.calls) {
      assert.equal(call.url.searchParams.has("session"), false, `no session= in ${call.path}`);
      assert.ok(!call.url.href.includes(SECRET), `the secret is not in the URL of ${call.path}`);
    }
  });

  test("JSONP carries it as the session query parameter, exactly", async () => {
    const secret = "k+9/Zr=&x.node 2"; // opaque: whatever it holds survives the query encoding
    const h = setup({ transports: ["ajax"], ajaxMode: "jsonp" });
    await flush();
    const connect = h.doc.takeScript("/connect");
    assert.deepEqual(scriptUrl(connect).query, {});
    h.doc.answer(connect, { ...ANSWER, session: secret });
    await flush();
    assert.deepEqual(scriptUrl(h.doc.takeScript("/poll")).query, { session: secret, since: "0" });
    h.doc.answer(h.doc.takeScript("/poll"), welcomePoll());
    await flush();
    h.client.send("chat", "hi");
    await flush();
    assert.equal(scriptUrl(h.doc.takeScript("/send")).query.session, secret);
    assert.equal(scriptUrl(h.doc.takeScript("/poll")).query.session, secret);
    h.client.close();
    assert.deepEqual(scriptUrl(h.doc.takeScript("/disconnect")).query, { session: secret });
    assert.equal(h.http.calls.length, 0, "no fetch, so no header, in JSONP mode");
  });

  test("the client id is the public one from the welcome, never the secret", async () => {
    const h = setup({ transports: ["ajax"] }).record("open", "welcome", "close", "error");
    await openSession(h, { ...ANSWER, session: SECRET, client_id: "a1" });
    assert.equal(h.client.clientId, "a1");
    assert.deepEqual(h.logged("open"), [{ transport: "ajax", clientId: "a1", resumed: false }]);
    assert.equal(h.logged("welcome")[0].client_id, "a1");
    h.client.close();
    assert.ok(!JSON.stringify(h.log).includes(SECRET), "no event shows the secret");
    for (const key of Object.keys(h.client)) {
      assert.notEqual(h.client[key], SECRET, `client.${key} is not the secret`);
    }
  });

  test("without a queued welcome the client id comes from the answer's client_id", async () => {
    const h = setup({ transports: ["ajax"] }).record("open");
    await flush();
    h.http.take("/connect").respond(200, { session: SECRET, client_id: "a9", epoch: "E1", position: 0 });
    await flush();
    h.http.take("/poll").respond(200, { messages: [], position: 0 });
    await flush();
    assert.equal(h.client.clientId, "a9");
    assert.deepEqual(h.logged("open"), [{ transport: "ajax", clientId: "a9", resumed: false }]);
  });

  test("an answer without client_id leaves the client id unknown rather than using the secret", async () => {
    const h = setup({ transports: ["ajax"] });
    await flush();
    h.http.take("/connect").respond(200, { session: SECRET, epoch: "E1", position: 0 });
    await flush();
    h.http.take("/poll").respond(200, { messages: [], position: 0 });
    await flush();
    assert.equal(h.client.readyState, AppServer.OPEN);
    assert.equal(h.client.clientId, null);
  });

  test("a connect answer without a session secret is a failed connect", async () => {
    const h = setup({ transports: ["ajax"] }).record("reconnecting");
    await flush();
    h.http.take("/connect").respond(200, { ...ANSWER, session: "" });
    await flush();
    assert.equal(h.http.open("/poll").length, 0);
    assert.equal(h.logged("reconnecting").length, 1);
  });

  test("a JSONP request that fails does not put the secret in its error message", async () => {
    const h = setup({ transports: ["ajax"], ajaxMode: "jsonp", autoConnect: false });
    // The client's own JSONP helper, as the poll loop calls it.
    const timedOut = h.client._http.jsonp(`http://test:9001/poll?session=${SECRET}&since=1`, 1000);
    h.clock.tick(1000);
    await assertRejected(timedOut, { code: "timeout" });
    const failed = h.client._http.jsonp(`http://test:9001/send?session=${SECRET}&msg=%7B%7D`, 1000);
    h.doc.takeScript("/send").onerror();
    await assertRejected(failed, { code: "network" });
    for (const outcome of [await settle(timedOut), await settle(failed)]) {
      assert.ok(!outcome.error.message.includes(SECRET), outcome.error.message);
      assert.match(outcome.error.message, /http:\/\/test:9001\/(poll|send)\b/);
    }
  });
});

// JSONP ---------------------------------------------------------------------------

const CALLBACK = /^[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*$/;

function scriptUrl(script) {
  const url = new URL(script.src);
  const callback = url.searchParams.get("callback");
  assert.match(callback, CALLBACK);
  assert.ok(callback.length <= 128);
  url.searchParams.delete("callback");
  return { path: url.pathname, query: Object.fromEntries(url.searchParams) };
}

/** A JSONP Ajax client whose session S1 is open. */
async function jsonpConnected(options = {}) {
  const h = setup({ transports: ["ajax"], ajaxMode: "jsonp", ...options });
  await flush();
  h.doc.answer(h.doc.takeScript("/connect"), ANSWER);
  await flush();
  h.doc.answer(h.doc.takeScript("/poll"), welcomePoll());
  await flush();
  return h;
}

describe("JSONP mode", () => {
  test("connect, send and poll use the documented GET URLs with callback", async () => {
    const h = setup({ transports: ["ajax"], ajaxMode: "jsonp" }).record("chat", "open");
    await flush();
    const connect = h.doc.takeScript("/connect");
    assert.deepEqual(scriptUrl(connect), { path: "/connect", query: {} });
    assert.equal(new URL(connect.src).origin, "http://test:9001");
    h.doc.answer(connect, ANSWER);
    await flush();
    assert.equal(connect.parentNode, null, "the script tag is removed");
    const first = h.doc.takeScript("/poll");
    assert.deepEqual(scriptUrl(first), { path: "/poll", query: { session: "S1", since: "0" } });
    h.doc.answer(first, welcomePoll({}, [{ type: "chat", data: "x", pos: 8 }]));
    await flush();
    assert.equal(h.logged("open").length, 1);
    assert.deepEqual(h.logged("chat"), ["x"]);

    h.client.send("chat", "hi & bye");
    await flush();
    const send = h.doc.takeScript("/send");
    assert.deepEqual(scriptUrl(send), {
      path: "/send",
      query: { session: "S1", msg: JSON.stringify({ type: "chat", data: "hi & bye" }) },
    });
    assert.deepEqual(scriptUrl(h.doc.takeScript("/poll")).query, { session: "S1", since: "2" });
    assert.equal(h.http.calls.length, 0, "no fetch in JSONP mode");
  });

  test("an error inside the callback with status 410 means a new session", async () => {
    const h = (await jsonpConnected()).record("reconnecting", "close");
    h.doc.answer(h.doc.takeScript("/poll"), { error: { code: "unknown_session", message: "gone" }, status: 410 });
    await flush();
    assert.equal(h.logged("close")[0].reason, "unknown_session");
    h.clock.tick(h.logged("reconnecting")[0].delay);
    await flush();
    assert.ok(h.doc.takeScript("/connect"));
  });

  test("a script that fails to load is a failed request", async () => {
    const h = setup({ transports: ["ajax"], ajaxMode: "jsonp" }).record("reconnecting");
    await flush();
    const connect = h.doc.takeScript("/connect");
    connect.onerror();
    await flush();
    assert.equal(connect.parentNode, null);
    assert.equal(h.logged("reconnecting").length, 1);
  });

  test("close() ends the session with a JSONP disconnect", async () => {
    const h = await jsonpConnected();
    const poll = h.doc.takeScript("/poll");
    h.client.close();
    assert.equal(poll.parentNode, null, "the waiting poll's script is removed");
    assert.deepEqual(scriptUrl(h.doc.takeScript("/disconnect")).query, { session: "S1" });
  });
});

describe("clientCount()", () => {
  test("asks /get_client_count by JSONP and resolves the counts", async () => {
    const h = setup({ autoConnect: false });
    const counts = h.client.clientCount();
    const script = h.doc.takeScript("/get_client_count");
    assert.deepEqual(scriptUrl(script), { path: "/get_client_count", query: {} });
    const name = new URL(script.src).searchParams.get("callback");
    const answer = { client_count: 3, websocket: 2, ajax: 1, time: "Mon Jan  1 00:00:00 2024" };
    h.doc.answer(script, answer);
    assert.deepEqual(await valueOf(counts), answer);
    assert.equal(script.parentNode, null);
    assert.equal(globalThis[name], undefined, "the callback is removed");
  });

  test("passes the room when asked", async () => {
    const h = setup({ autoConnect: false });
    const counts = h.client.clientCount("lobby");
    const script = h.doc.takeScript("/get_client_count");
    assert.deepEqual(scriptUrl(script).query, { room: "lobby" });
    h.doc.answer(script, { client_count: 1, websocket: 1, ajax: 0, time: "t", room: "lobby", room_count: 1 });
    assert.equal((await valueOf(counts)).room_count, 1);
  });

  test("rejects with code timeout, and a late answer is harmless", async () => {
    const h = setup({ autoConnect: false, ajaxTimeout: 3000 });
    const counts = h.client.clientCount();
    const script = h.doc.takeScript("/get_client_count");
    h.clock.tick(3000);
    await assertRejected(counts, { code: "timeout" });
    assert.equal(script.parentNode, null);
    h.doc.answer(script, { client_count: 1 }); // must not throw
  });

  test("the callback lives under AppServer._jsonp when the page global is this module", async () => {
    globalThis.AppServer = AppServer;
    try {
      const h = setup({ autoConnect: false });
      const counts = h.client.clientCount();
      const script = h.doc.takeScript("/get_client_count");
      assert.match(new URL(script.src).searchParams.get("callback"), /^AppServer\._jsonp\.[\w$]+$/);
      h.doc.answer(script, { client_count: 0, websocket: 0, ajax: 0, time: "t" });
      assert.equal((await valueOf(counts)).client_count, 0);
      assert.deepEqual(Object.keys(AppServer._jsonp), []);
    } finally {
      delete globalThis.AppServer;
    }
  });
});

// reloadInterval -------------------------------------------------------------------

describe("reloadInterval mode", () => {
  test("fetches the URL every N seconds and emits reload, with no connection", async () => {
    const h = setup({ reloadInterval: 30, reloadUrl: "/status" }).record("open", "reload", "error", "close");
    await flush();
    assert.equal(h.WebSocket.instances.length, 0);
    const first = h.http.take("/status");
    assert.equal(first.method, "GET");
    assert.equal(first.url.origin, "http://test:9001");
    first.respond(200, { client_count: 4 });
    await flush();
    assert.equal(h.client.readyState, AppServer.OPEN);
    assert.equal(h.client.transport, null);
    assert.deepEqual(h.logged("reload"), [{ client_count: 4 }]);
    h.clock.tick(29999);
    await flush();
    assert.equal(h.http.open("/status").length, 0);
    h.clock.tick(1);
    await flush();
    h.http.take("/status").respond(500, { error: { code: "internal", message: "oops" } });
    await flush();
    assert.equal(h.client.readyState, AppServer.CONNECTING);
    assert.equal(h.logged("error")[0].code, "internal");
    assert.equal(h.logged("close").length, 1);
    h.clock.tick(30000);
    await flush();
    h.http.take("/status").respond(200, { client_count: 5 });
    await flush();
    assert.equal(h.client.readyState, AppServer.OPEN);
    assert.equal(h.logged("open").length, 2);
  });

  test("uses JSONP in jsonp mode", async () => {
    const h = setup({ reloadInterval: 5, ajaxMode: "jsonp" }).record("reload");
    const script = h.doc.takeScript("/get_client_count");
    h.doc.answer(script, { client_count: 1 });
    await flush();
    assert.deepEqual(h.logged("reload"), [{ client_count: 1 }]);
  });

  test("sending is refused: there is no connection", async () => {
    const h = setup({ reloadInterval: 5 });
    assert.throws(() => h.client.send("chat", "x"), { code: "unsupported" });
    await assertRejected(h.client.request("x"), { code: "unsupported" });
  });

  test("close() stops the refresh", async () => {
    const h = setup({ reloadInterval: 5 });
    await flush();
    h.http.take("/get_client_count").respond(200, {});
    await flush();
    h.client.close();
    h.clock.tick(60000);
    await flush();
    assert.equal(h.http.calls.length, 1);
  });
});
