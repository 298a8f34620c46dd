// The event stream transport (`sse`) and the default transport order
// (websocket → sse → ajax), driven through fakes injected in the options: a
// fake EventSource class (Node 20 has none), a fake WebSocket, a fake fetch
// and a fake clock. The wire contract is docs/protocol.md, "Event stream".
// Run with: node --test tests/js/

import { describe, test, afterEach } from "node:test";
import assert from "node:assert/strict";

import AppServer from "../../js/src/index.js";

// Fakes ---------------------------------------------------------------------

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
}

/** An EventSource as a browser has it, with what the server does as methods. */
function fakeEventSourceClass() {
  return class FakeEventSource {
    static instances = [];
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;

    constructor(url) {
      this.url = url;
      this.parsed = new URL(url);
      this.readyState = 0;
      this.closed = false;
      this.lastEventId = "";
      FakeEventSource.instances.push(this);
    }

    close() {
      this.closed = true;
      this.readyState = 2;
    }

    get channels() {
      return this.parsed.searchParams.getAll("channel");
    }

    get resumeFrom() {
      return this.parsed.searchParams.get("lastEventId");
    }

    // What the server (and the browser) do:
    event(envelope, id) {
      assert.ok(!this.closed, "an event on a closed EventSource");
      this.readyState = 1;
      if (id !== undefined) {
        this.lastEventId = id;
      }
      if (envelope !== null && this.onmessage) {
        this.onmessage({ data: typeof envelope === "string" ? envelope : JSON.stringify(envelope),
          lastEventId: this.lastEventId });
      }
    }

    /** A stream's welcome, followed (for a new stream) by its id alone. */
    welcome(data = {}, { resuming = false } = {}) {
      const welcome = { client_id: "s1", epoch: "E1", position: 0, transport: "sse", session: "secret-1", ...data };
      this.event({ type: "welcome", data: welcome });
      if (!resuming) {
        this.event(null, welcome.epoch + ":" + welcome.position);
      }
    }

    /** The stream ended or failed; CONNECTING: the browser reconnects by itself. */
    error(readyState) {
      this.readyState = readyState;
      if (this.onerror) this.onerror({ type: "error" });
    }
  };
}

function fakeWebSocketClass() {
  return class FakeWebSocket {
    static instances = [];

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      FakeWebSocket.instances.push(this);
    }

    send(text) {
      this.sent.push(JSON.parse(text));
    }

    close() {
      this.readyState = 3;
    }

    welcome(data = {}) {
      this.readyState = 1;
      this.receive({ type: "welcome", data: { client_id: "w1", epoch: "E1", position: 0, transport: "websocket", ...data } });
    }

    receive(envelope) {
      if (this.onmessage) this.onmessage({ data: JSON.stringify(envelope) });
    }

    drop(code = 1006) {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason: "", wasClean: false });
    }
  };
}

/** A fetch whose every call waits until the test answers it. */
function fakeFetch() {
  const calls = [];
  function fetch(url, init) {
    return new Promise((resolve, reject) => {
      const parsed = new URL(url);
      const headers = new Headers(init.headers);
      const call = {
        path: parsed.pathname,
        method: init.method,
        session: headers.get("X-AppServer-Session"),
        body: init.body === undefined ? undefined : JSON.parse(init.body),
        done: false,
        respond(status, value) {
          call.done = true;
          resolve({ status, text: async () => (value === undefined ? "" : JSON.stringify(value)) });
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

async function flush() {
  for (let i = 0; i < 20; i++) {
    await new Promise((resolve) => setImmediate(resolve));
  }
}

const clients = [];
afterEach(() => {
  while (clients.length) clients.pop().close();
});

/** A client wired to fakes; by default with no WebSocket, as a browser where it is blocked or missing. */
function setup(options = {}) {
  const clock = new FakeClock();
  const EventSource = fakeEventSourceClass();
  const WebSocket = fakeWebSocketClass();
  const http = fakeFetch();
  const client = AppServer.connect({
    url: "ws://test:9002/",
    ajaxUrl: "http://test:9001",
    EventSource,
    fetch: http.fetch,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    ...options,
  });
  clients.push(client);
  const h = {
    clock, EventSource, WebSocket, http, client, log: [],
    get es() {
      return EventSource.instances[EventSource.instances.length - 1];
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

/** Answer every waiting /send with `{"ok": true}`, in order; returns their bodies. */
async function answerSends(h) {
  const bodies = [];
  for (;;) {
    await flush();
    const waiting = h.http.open("/send");
    if (!waiting.length) {
      return bodies;
    }
    for (const call of waiting) {
      bodies.push({ session: call.session, ...call.body });
      call.respond(200, { ok: true });
    }
  }
}

// The default order -------------------------------------------------------------

describe("transport order", () => {
  test("the default order is websocket, then sse, then ajax", () => {
    assert.deepEqual(AppServer.connect({ autoConnect: false })._opts.transports, ["websocket", "sse", "ajax"]);
  });

  test("without WebSocket the client opens an event stream on the Ajax site and says so", () => {
    const h = setup({ WebSocket: undefined, autoConnect: false }).record("open", "transport");
    h.client.subscribe("news").subscribe("sport").open();
    assert.equal(h.EventSource.instances.length, 1);
    assert.equal(h.es.parsed.origin + h.es.parsed.pathname, "http://test:9001/events");
    assert.deepEqual(h.es.channels, ["news", "sport"]);
    assert.equal(h.es.resumeFrom, null, "a first stream resumes from nothing");
    assert.equal(h.client.transport, null);
    h.es.welcome();
    assert.equal(h.client.transport, "sse");
    assert.equal(h.client.clientId, "s1");
    assert.deepEqual(h.logged("transport"), ["sse"]);
    assert.deepEqual(h.logged("open"), [{ transport: "sse", clientId: "s1", resumed: false }]);
  });

  test("a WebSocket that fails before opening falls back to the event stream at once", () => {
    const WebSocket = fakeWebSocketClass();
    const h = setup({ WebSocket });
    assert.equal(WebSocket.instances.length, 1);
    assert.equal(h.EventSource.instances.length, 0);
    WebSocket.instances[0].drop();
    assert.equal(h.EventSource.instances.length, 1);
    h.es.welcome();
    assert.equal(h.client.transport, "sse");
  });

  test("without WebSocket and EventSource the client long-polls", async () => {
    const h = setup({ WebSocket: undefined, EventSource: undefined });
    await flush();
    assert.equal(h.http.take("/connect").method, "POST");
  });

  test("with JSONP as the Ajax mode the last resort is still JSONP", async () => {
    const scripts = [];
    const doc = {
      head: { appendChild: (element) => scripts.push(element), removeChild() {} },
      createElement: () => ({ parentNode: null }),
    };
    setup({ WebSocket: undefined, EventSource: undefined, ajaxMode: "jsonp", document: doc });
    await flush();
    assert.equal(new URL(scripts[0].src).pathname, "/connect");
  });

  test("a stream that delivers no welcome within connectTimeout (a buffering proxy) falls back to long polling", async () => {
    const h = setup({ WebSocket: undefined, connectTimeout: 5000 }).record("open");
    const es = h.es;
    h.clock.tick(4999);
    assert.equal(h.http.calls.length, 0);
    h.clock.tick(1);
    assert.ok(es.closed, "the stream is closed");
    await flush();
    const connect = h.http.take("/connect");
    connect.respond(200, { session: "ajax-secret", client_id: "a1", epoch: "E1", position: 0 });
    await flush();
    h.http.take("/poll").respond(200, { position: 1, messages: [
      { type: "welcome", data: { client_id: "a1", epoch: "E1", position: 0, transport: "ajax" } }] });
    await flush();
    assert.equal(h.client.transport, "ajax");
    assert.deepEqual(h.logged("open").map((info) => info.transport), ["ajax"]);
  });

  test("a refused stream (an error status: EventSource CLOSED) falls back to long polling", async () => {
    const h = setup({ WebSocket: undefined });
    h.es.error(2);
    assert.ok(h.es.closed);
    await flush();
    assert.ok(h.http.take("/connect"));
  });
});

// The stream --------------------------------------------------------------------

describe("sse transport", () => {
  test("sends go by POST /send with the welcome's secret, one at a time, answers on the stream", async () => {
    const h = setup({ WebSocket: undefined }).record("welcome", "chat");
    h.es.welcome({ session: "S-1" });
    assert.deepEqual(h.logged("welcome")[0], { client_id: "s1", epoch: "E1", position: 0, transport: "sse" },
      "the page never sees the secret");
    h.client.send("chat", "one").send("chat", "two");
    const reply = h.client.request("add", { a: 1, b: 2 });
    await flush();
    assert.equal(h.http.open("/send").length, 1, "one send at a time");
    const first = h.http.take("/send");
    assert.equal(first.method, "POST");
    assert.equal(first.session, "S-1");
    assert.deepEqual(first.body, { type: "chat", data: "one" });
    first.respond(200, { ok: true });
    const rest = await answerSends(h);
    assert.deepEqual(rest, [
      { session: "S-1", type: "chat", data: "two" },
      { session: "S-1", type: "add", data: { a: 1, b: 2 }, id: 1 },
    ]);
    h.es.event({ type: "reply", id: 1, data: 3 });
    assert.equal(await reply, 3);
    h.es.event({ type: "chat", data: "hello", pos: 1 }, "E1:1");
    assert.deepEqual(h.logged("chat"), ["hello"]);
  });

  test("a send refused with 4xx is an error for that envelope; the stream goes on", async () => {
    const h = setup({ WebSocket: undefined });
    h.es.welcome();
    const answer = h.client.request("big", "x");
    await flush();
    h.http.take("/send").respond(413, { error: { code: "too_large", message: "too large" } });
    await assert.rejects(answer, { code: "too_large" });
    assert.equal(h.client.transport, "sse");
  });

  test("410 unknown_session on a send: the stream is gone; the envelope goes again on the next one", async () => {
    const h = setup({ WebSocket: undefined, transports: ["sse"] }).record("close", "reconnecting");
    const first = h.es;
    first.welcome({ session: "old" });
    h.client.send("chat", "again");
    await flush();
    h.http.take("/send").respond(410, { error: { code: "unknown_session", message: "gone" } });
    await flush();
    assert.ok(first.closed);
    assert.equal(h.logged("close").length, 1);
    h.clock.tick(h.logged("reconnecting")[0].delay);
    assert.notEqual(h.es, first);
    assert.equal(h.es.resumeFrom, "E1:0", "the new stream resumes from the last id");
    h.es.welcome({ client_id: "s2", session: "new" }, { resuming: true });
    h.es.event({ type: "resumed", data: { recovered: true, epoch: "E1", position: 0 } }, "E1:0");
    assert.deepEqual(await answerSends(h), [{ session: "new", type: "chat", data: "again" }]);
  });

  test("the browser's own reconnect: a new client and secret, resumed by the server, rooms joined again", async () => {
    const h = setup({ WebSocket: undefined }).record("open", "close", "recovery", "chat");
    h.client.join("lobby", "ann");
    const es = h.es;
    es.welcome({ session: "S-1" });
    assert.deepEqual(await answerSends(h), [{ session: "S-1", type: "join", data: { room: "lobby", username: "ann" } }]);
    es.event({ type: "chat", data: "one", pos: 1 }, "E1:1");

    // The stream drops; the browser retries by itself (same EventSource).
    es.error(0);
    assert.equal(h.client.readyState, AppServer.CONNECTING);
    assert.equal(h.client.transport, null);
    assert.deepEqual(h.logged("close"), [{ code: 1006, reason: "stream interrupted", wasClean: false, willReconnect: true }]);
    h.client.send("chat", "while away");
    assert.equal(h.EventSource.instances.length, 1, "no new EventSource: the browser reconnects");
    assert.ok(!es.closed);

    // Its answer: welcome (a new client), the missed messages, live traffic held back, then resumed.
    h.clock.tick(1500);
    es.welcome({ client_id: "s2", session: "S-2", position: 3 }, { resuming: true });
    es.event({ type: "chat", data: "two", pos: 2 }, "E1:2");
    es.event({ type: "chat", data: "live", pos: 4 }, "E1:4");
    es.event({ type: "chat", data: "three", pos: 3 }, "E1:3");
    assert.deepEqual(h.logged("chat"), ["one", "two", "three"]);
    es.event({ type: "resumed", data: { recovered: true, epoch: "E1", position: 3 } }, "E1:3");
    assert.deepEqual(h.logged("chat"), ["one", "two", "three", "live"]);
    assert.deepEqual(h.logged("recovery"), [{ recovered: true }]);
    assert.equal(h.client.clientId, "s2");
    assert.deepEqual(h.logged("open").map((info) => info.resumed), [false, true]);

    // No resume envelope (the server resumed from Last-Event-ID), the room again, then what waited.
    assert.deepEqual(await answerSends(h), [
      { session: "S-2", type: "join", data: { room: "lobby", username: "ann" } },
      { session: "S-2", type: "chat", data: "while away" },
    ]);
  });

  test("a request sent on a stream that drops is rejected as disconnected", async () => {
    const h = setup({ WebSocket: undefined });
    h.es.welcome();
    const answer = h.client.request("slow");
    await answerSends(h);
    h.es.error(0);
    await assert.rejects(answer, { code: "disconnected" });
  });

  test("a browser reconnect that brings no welcome within connectTimeout counts as lost", () => {
    const h = setup({ WebSocket: undefined, transports: ["sse"], connectTimeout: 5000 }).record("reconnecting");
    const es = h.es;
    es.welcome();
    es.error(0);
    h.clock.tick(5000);
    assert.ok(es.closed);
    const [event] = h.logged("reconnecting");
    h.clock.tick(event.delay);
    assert.equal(h.EventSource.instances.length, 2);
    assert.equal(h.es.resumeFrom, "E1:0");
  });

  test("the last event id follows event ids, a fresh welcome and resumed", () => {
    const h = setup({ WebSocket: undefined, transports: ["sse"] }).record("reconnecting");
    const es = h.es;
    es.welcome({ epoch: "E1", position: 10 });
    es.event({ type: "message", channel: "c", data: 1, pos: 12 }, "E1:12");
    es.event({ type: "pong" });
    es.error(2); // refused for good (CLOSED): the client opens a new stream itself
    h.clock.tick(h.logged("reconnecting")[0].delay);
    assert.equal(h.es.resumeFrom, "E1:12");
    h.es.welcome({ client_id: "s2", session: "S-2", epoch: "E2", position: 7 }, { resuming: true });
    h.es.event({ type: "resumed", data: { recovered: false, epoch: "E2", position: 7 } }, "E2:7");
    h.client.subscribe("more");
    return flush().then(() => {
      assert.equal(h.es.resumeFrom, "E2:7");
      assert.deepEqual(h.es.channels, ["more"]);
    });
  });

  test("switching from a WebSocket that worked, the stream resumes with lastEventId=EPOCH:POS", () => {
    const WebSocket = fakeWebSocketClass();
    const h = setup({ WebSocket, connectTimeout: 1000 }).record("reconnecting");
    WebSocket.instances[0].welcome({ epoch: "E9", position: 40 });
    WebSocket.instances[0].receive({ type: "chat", data: "x", pos: 41 });
    WebSocket.instances[0].drop();
    // Three failures in a row without opening leave a transport that once worked.
    for (let i = 0; i < 3; i++) {
      h.clock.tick(h.logged("reconnecting").slice(-1)[0].delay);
      WebSocket.instances[WebSocket.instances.length - 1].drop();
    }
    assert.equal(h.EventSource.instances.length, 1);
    assert.equal(h.es.resumeFrom, "E9:41");
  });

  test("channels changed after open: one new stream with the whole list, resuming from the last id", async () => {
    const h = setup({ WebSocket: undefined, autoConnect: false }).record("open", "close");
    h.client.subscribe("a").open();
    const first = h.es;
    assert.deepEqual(first.channels, ["a"]);
    first.welcome({ position: 5 });
    first.event({ type: "message", channel: "a", data: 1, pos: 6 }, "E1:6");
    h.client.subscribe("b").subscribe("c").unsubscribe("a");
    await flush();
    assert.ok(first.closed, "the old stream is closed");
    assert.equal(h.EventSource.instances.length, 2, "one new stream for the three changes");
    assert.deepEqual(h.es.channels, ["b", "c"]);
    assert.equal(h.es.resumeFrom, "E1:6");
    assert.equal(h.http.open("/send").length, 0, "no subscribe by POST: the URL says it");
    h.es.welcome({ client_id: "s2", session: "S-2", position: 6 }, { resuming: true });
    h.es.event({ type: "resumed", data: { recovered: true, epoch: "E1", position: 6 } }, "E1:6");
    assert.equal(h.client.transport, "sse");
    assert.deepEqual(h.logged("open").map((info) => info.resumed), [false, true]);
    // Nothing changed: no other stream.
    h.client.subscribe("b");
    await flush();
    assert.equal(h.EventSource.instances.length, 2);
  });

  test("a channel subscribed while the stream opens makes a new stream once welcomed", async () => {
    const h = setup({ WebSocket: undefined, autoConnect: false });
    h.client.subscribe("a").open();
    const first = h.es;
    h.client.subscribe("late");
    first.welcome();
    await flush();
    assert.ok(first.closed);
    assert.deepEqual(h.es.channels, ["a", "late"]);
    assert.equal(h.es.resumeFrom, "E1:0");
  });

  test("a reconnect envelope closes the stream; the client comes back after after_ms, no backoff", () => {
    const h = setup({ WebSocket: undefined }).record("close", "reconnect", "reconnecting");
    const es = h.es;
    es.welcome();
    es.event({ type: "reconnect", data: { after_ms: 1234 } });
    assert.ok(es.closed);
    assert.deepEqual(h.logged("reconnect"), [{ after_ms: 1234 }]);
    assert.equal(h.logged("close")[0].code, 1001);
    assert.equal(h.logged("reconnecting")[0].delay, 1234);
    h.clock.tick(1233);
    assert.equal(h.EventSource.instances.length, 1);
    h.clock.tick(1);
    assert.equal(h.EventSource.instances.length, 2);
    assert.equal(h.es.resumeFrom, "E1:0");
  });

  test("a refusal answered as a short stream (reconnect, no welcome) comes back on sse, not long polling", async () => {
    const h = setup({ WebSocket: undefined }).record("reconnecting");
    const es = h.es;
    es.event({ type: "reconnect", data: { after_ms: 800 } });
    assert.ok(es.closed);
    await flush();
    assert.equal(h.http.calls.length, 0, "no fallback to long polling");
    assert.deepEqual(h.logged("reconnecting").map((event) => [event.delay, event.transport]), [[800, "sse"]]);
    h.clock.tick(800);
    assert.equal(h.EventSource.instances.length, 2);
  });

  test("close() closes the stream and ends it on the server with its secret", async () => {
    const h = setup({ WebSocket: undefined });
    const es = h.es;
    es.welcome({ session: "S-9" });
    h.client.close();
    assert.ok(es.closed);
    await flush();
    const disconnect = h.http.take("/disconnect");
    assert.equal(disconnect.method, "POST");
    assert.equal(disconnect.session, "S-9");
  });

  test("the stream sends JSON by POST even when the Ajax mode is JSONP", async () => {
    const h = setup({ WebSocket: undefined, ajaxMode: "jsonp", document: { head: {}, createElement: () => ({}) } });
    h.es.welcome({ session: "S-1" });
    h.client.send("chat", "hi");
    await flush();
    const send = h.http.take("/send");
    assert.equal(send.method, "POST");
    assert.equal(send.session, "S-1");
  });

  test("an event that is not JSON is a bad_json error; the stream goes on", () => {
    const h = setup({ WebSocket: undefined }).record("error");
    h.es.welcome();
    h.es.event("not json");
    assert.equal(h.logged("error")[0].code, "bad_json");
    assert.equal(h.client.transport, "sse");
  });
});
