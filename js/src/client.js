/**
 * The client facade: a connection to an appserver that survives network
 * trouble. It picks a transport and falls back between them, reconnects
 * with backoff, recovers what it missed, buffers sends while offline, and
 * turns envelopes into events.
 *
 * The wire protocol is docs/protocol.md; the API reference is docs/client.md.
 */
import {CONNECTING, OPEN, CLOSING, CLOSED} from "./constants.js";
import {appError} from "./errors.js";
import {Emitter, requireName} from "./events.js";
import {Backoff, STABLE_AFTER_MS} from "./backoff.js";
import {TransportChoice} from "./fallback.js";
import {Http} from "./http.js";
import {Liveness} from "./liveness.js";
import {resolveOptions} from "./options.js";
import {Recovery, isPositioned} from "./recovery.js";
import {SendBuffer} from "./send-buffer.js";
import {makeTimers} from "./timers.js";
import {withQuery} from "./urls.js";
import {AjaxConnection} from "./transports/ajax.js";
import {ReloadLoop} from "./transports/reload.js";
import {SseConnection} from "./transports/sse.js";
import {WebSocketConnection} from "./transports/websocket.js";

/**
 * @typedef {Object} ClientOptions
 * @property {string} [url] WebSocket URL (default `AppServerConfig.wsUrl`, else `ws(s)://<hostname>:9002/`).
 * @property {string} [ajaxUrl] Base URL of the Ajax site (default `AppServerConfig.ajaxUrl`,
 *   else `http(s)://<hostname>:9001`).
 * @property {string[]} [transports] Transports to try, in order (default `["websocket", "sse", "ajax"]`).
 * @property {boolean} [websockets] `false` is shorthand for `transports: ["ajax"]`.
 * @property {"json"|"jsonp"} [ajaxMode] How the Ajax transport talks (default `"json"`).
 * @property {boolean} [autoConnect] `false` to connect only when `open()` is called.
 * @property {number} [connectTimeout] ms a connection may take to open (default 5000).
 * @property {(Object|boolean)} [reconnect] `{initialDelay: 500, maxDelay: 10000, maxRetries: Infinity}`
 *   or `false`.
 * @property {number} [maxBufferedSends] Bound of the offline send buffer (default 100).
 * @property {number} [heartbeatInterval] ms without traffic before a ping (default 20000).
 * @property {number} [staleTimeout] ms after a ping before the connection is declared dead (default 10000).
 * @property {number} [requestTimeout] Default `request()` timeout in ms (default 10000).
 * @property {number} [ajaxTimeout] Timeout in ms of Ajax sends, JSONP calls and reloads (default 10000).
 * @property {number} [pollTimeout] ms a long poll may take before it counts as failed (default 40000).
 * @property {number} [reloadInterval] Seconds: polling-refresh mode (no connection), see docs.
 * @property {string} [reloadUrl] URL fetched in that mode (default `ajaxUrl + "/get_client_count"`).
 * @property {Function} [WebSocket] WebSocket constructor (default `window.WebSocket`).
 * @property {Function} [EventSource] EventSource constructor (default `window.EventSource`).
 * @property {Function} [fetch] fetch implementation (default `window.fetch`).
 * @property {Document} [document] Document for JSONP and visibility (default `window.document`).
 * @property {Location} [location] Where default URLs are derived from (default `window.location`).
 * @property {Function} [setTimeout] Timer function (default `window.setTimeout`).
 * @property {Function} [clearTimeout] Timer function (default `window.clearTimeout`).
 * @property {Function} [random] Random source in [0, 1) for the backoff jitter (default `Math.random`).
 */

/**
 * A connection to an appserver that survives network trouble: it falls back
 * between transports, reconnects, and recovers what it missed.
 *
 * @param {ClientOptions} [options]
 */
export class Client extends Emitter {
  constructor(options) {
    super();
    options = options || {};
    const resolved = resolveOptions(options);
    const opts = this._opts = resolved.opts;

    /** The WebSocket URL. */
    this.url = resolved.url;
    /** The base URL of the Ajax site, without a trailing slash. */
    this.ajaxUrl = resolved.ajaxUrl;
    this._reloadUrl = resolved.reloadUrl;

    /** CONNECTING (0), OPEN (1), CLOSING (2) or CLOSED (3), as for a WebSocket. */
    this.readyState = CLOSED;
    /** `"websocket"`, `"sse"` or `"ajax"` while open, else `null`. */
    this.transport = null;
    /** The server's id for this connection (from `welcome`), or `null`. */
    this.clientId = null;

    const root = globalThis;
    this._timers = makeTimers(options.setTimeout, options.clearTimeout);
    this._doc = options.document || root.document || null;
    const httpEnv = {
      baseUrl: this.ajaxUrl,
      mode: opts.ajaxMode,
      fetch: options.fetch || (typeof root.fetch === "function" ? root.fetch.bind(root) : null),
      document: this._doc,
      timers: this._timers,
    };
    this._http = new Http(httpEnv);
    // The event stream sends by POST whatever the Ajax mode (an EventSource
    // needs CORS anyway).
    this._jsonHttp = opts.ajaxMode === "json" ? this._http : new Http(Object.assign({}, httpEnv, {mode: "json"}));

    this._buffer = new SendBuffer(opts.maxBufferedSends);
    this._pending = new Map();
    this._nextId = 0;
    this._channels = new Set();
    this._rooms = new Map();
    this._controlEnvelopes = new WeakSet();
    this._recovery = new Recovery();

    // Transport choice and backoff.
    this._conn = null;
    this._choice = new TransportChoice(opts.transports);
    this._backoff = new Backoff(opts.reconnect, options.random || Math.random);
    this._lastTransport = null;
    this._announcedDelay = null;

    this._reconnectTimer = null;
    this._reopenQueued = false;
    this._handshakeTimer = null;
    this._stableTimer = null;
    this._liveness = null;
    this._reload = null;
    this._visibilityListener = () => {
      if (this._doc && this._doc.visibilityState === "visible") {
        this._probe();
      }
    };
    this._listening = false;

    if (opts.autoConnect !== false) {
      this.open();
    }
  }

  _defer(fn) {
    Promise.resolve().then(fn);
  }

  // Connection lifecycle ---------------------------------------------------

  /** Connect (only needed with `autoConnect: false`, or after `close()`). */
  open() {
    if (this.readyState !== CLOSED) {
      return this;
    }
    this.readyState = CONNECTING;
    this._choice.restart();
    this._backoff.reset();
    this._announcedDelay = null;
    this._listenVisibility(true);
    if (this._reloadUrl) {
      this._startReloading();
    } else {
      this._connect();
    }
    return this;
  }

  /**
   * Close for good: no reconnect, buffered sends are discarded and pending
   * requests are rejected with code `"closed"`.
   */
  close() {
    const wasClosed = this.readyState === CLOSED;
    const conn = this._conn;
    this._conn = null;
    this._timers.clear(this._reconnectTimer);
    this._reconnectTimer = null;
    this._stopConnectionTimers();
    this._stopReloading();
    this._listenVisibility(false);
    if (conn) {
      conn.close(true);
    }
    this.readyState = CLOSED;
    this.transport = null;
    this._announcedDelay = null;
    this._rejectAll("closed", "the client was closed");
    this._buffer.clear();
    if (!wasClosed) {
      this._emit("close", {code: 1000, reason: "closed by the client", wasClean: true, willReconnect: false});
    }
    return this;
  }

  _connect() {
    this._reconnectTimer = null;
    const name = this._choice.pick();
    if (name === null) {
      this._giveUp("no_transport", "no usable transport among " + this._opts.transports.join(", "), true);
      return;
    }
    this.readyState = CONNECTING;
    let conn;
    if (name === "websocket") {
      const WebSocketImpl = this._opts.WebSocket || globalThis.WebSocket;
      if (typeof WebSocketImpl !== "function") {
        this._choice.markUnavailable(name);
        this._scheduleReconnect(true);
        return;
      }
      try {
        conn = new WebSocketConnection(this, WebSocketImpl, this.url);
      } catch (error) {
        // For example a SecurityError for a port the browser refuses.
        this._scheduleReconnect(true);
        return;
      }
    } else if (name === "sse") {
      const EventSourceImpl = this._opts.EventSource || globalThis.EventSource;
      if (typeof EventSourceImpl !== "function") {
        this._choice.markUnavailable(name);
        this._scheduleReconnect(true);
        return;
      }
      conn = new SseConnection(this, EventSourceImpl, this._jsonHttp, {
        baseUrl: this.ajaxUrl,
        channels: () => Array.from(this._channels),
        resumeFrom: this._recovery.resumeId(),
        ajaxTimeout: this._opts.ajaxTimeout,
      });
    } else {
      conn = new AjaxConnection(this, this._http, this._opts);
    }
    this._conn = conn;
    this._handshakeTimer = this._timers.timeout(() => {
      this._lost(conn, {code: 1006, reason: "connect timeout", wasClean: false});
    }, this._opts.connectTimeout);
    conn.start();
  }

  /** The transport finished its handshake: the connection is open. */
  _onHandshake(conn, envelope) {
    if (conn !== this._conn) {
      return;
    }
    this._timers.clear(this._handshakeTimer);
    this._handshakeTimer = null;
    const welcome = envelope.data || {};
    const name = conn.name;
    const start = this._recovery.welcome(welcome);

    this.readyState = OPEN;
    this.transport = name;
    this.clientId = welcome.client_id === undefined ? null : welcome.client_id;
    this._choice.markOpened(name);
    this._stableTimer = this._timers.set(() => {
      this._stableTimer = null;
      this._backoff.reset();
    }, STABLE_AFTER_MS);

    // An event stream opened with an id is resumed by the server itself
    // (welcome, the replay, `resumed`); its channels are those of its URL.
    const stream = name === "sse";
    if (start.resuming) {
      // Live messages (after `position`) wait until the replay of what was
      // missed is done, so the application sees everything in order.
      this._recovery.startResume(start.position,
        this._timers.timeout(() => this._finishResume(false, null), this._opts.requestTimeout));
      if (!(stream && conn.resumesOnOpen)) {
        this._control({type: "resume", data: {
          epoch: start.previousEpoch, since: start.since, channels: stream ? conn.channels : Array.from(this._channels),
        }});
      }
    } else if (!stream) {
      this._channels.forEach((channel) => this._control({type: "subscribe", data: {channel: channel}}));
    }
    if (stream) {
      this._reopenIfChannelsChanged();
    }
    this._rooms.forEach((username, room) => this._control({type: "join", data: {room: room, username: username}}));
    this._flushBuffer();
    this._startLiveness(conn);

    if (name !== this._lastTransport) {
      this._lastTransport = name;
      this._emit("transport", name);
    }
    if (conn === this._conn) {
      this._emit("open", {transport: name, clientId: this.clientId, resumed: start.resuming});
    }
    if (conn === this._conn) {
      this._emit("welcome", envelope.data, envelope);
    }
  }

  /** The connection ended or failed to open. */
  _lost(conn, info) {
    if (conn !== this._conn) {
      return;
    }
    this._conn = null;
    conn.close(false);
    const wasOpen = this.readyState === OPEN;
    this._stopConnectionTimers();
    this.transport = null;
    this._connectionDown(info);

    this.readyState = CONNECTING;
    if (wasOpen) {
      this._emit("close", {
        code: info.code, reason: info.reason, wasClean: !!info.wasClean, willReconnect: this._willReconnect(),
      });
      if (this._conn || this.readyState !== CONNECTING || this._reconnectTimer !== null) {
        return; // A close handler closed or reopened the client.
      }
    }
    this._scheduleReconnect(!wasOpen);
  }

  /**
   * An event stream dropped and comes back by itself (the browser's
   * reconnect, or a new stream for new channels): the same connection
   * object, but a new client on the server, welcomed again. It has
   * `connectTimeout` to do so; after that it counts as lost.
   */
  _interrupted(conn, info) {
    if (conn !== this._conn) {
      return;
    }
    const wasOpen = this.readyState === OPEN;
    this._stopConnectionTimers();
    this.transport = null;
    this._connectionDown(info);
    this.readyState = CONNECTING;
    this._handshakeTimer = this._timers.timeout(() => {
      this._lost(conn, {code: 1006, reason: "connect timeout", wasClean: false});
    }, this._opts.connectTimeout);
    if (wasOpen) {
      this._emit("close", {code: info.code, reason: info.reason, wasClean: !!info.wasClean, willReconnect: true});
    }
  }

  /** Requests sent on a connection that went down will get no reply; what was never sent waits. */
  _connectionDown(info) {
    const unsent = (info.unsent || []).filter((envelope) => !this._controlEnvelopes.has(envelope));
    const unsentIds = new Set();
    unsent.forEach(function (envelope) {
      if (envelope.id !== undefined) {
        unsentIds.add(envelope.id);
      }
    });
    this._pending.forEach((entry, id) => {
      if (unsentIds.has(id)) {
        entry.sent = false;
      } else if (entry.sent) {
        this._settle(id, appError("disconnected", "the connection was lost before the reply"));
      }
    });
    if (unsent.length) {
      this._buffer.prepend(unsent);
      this._trimBuffer();
    }
  }

  _willReconnect() {
    return !!this._opts.reconnect && (this._announcedDelay !== null || !this._backoff.exhausted);
  }

  /**
   * Decide what comes after a lost or failed connection: another transport
   * at once, the same one after a backoff delay, or nothing.
   */
  _scheduleReconnect(failedBeforeOpen) {
    // A server that said when to come back (a refusal answered as a short
    // event stream) refused for now: the transport itself works.
    if (failedBeforeOpen && this._announcedDelay === null) {
      const next = this._choice.failedBeforeOpen();
      if (next === "none") {
        this._giveUp("no_transport", "no usable transport among " + this._opts.transports.join(", "), true);
        return;
      }
      if (next === "next") {
        this._connect(); // Not tried since the last success: no reason to wait.
        return;
      }
    }

    if (!this._opts.reconnect) {
      this._giveUp(failedBeforeOpen ? "connect_failed" : null, "could not connect", failedBeforeOpen);
      return;
    }
    let delay;
    if (this._announcedDelay !== null) {
      // The server said when to come back (shutdown): no backoff on top.
      delay = this._announcedDelay;
      this._announcedDelay = null;
    } else {
      if (this._backoff.exhausted) {
        this._giveUp("reconnect_failed", "gave up after " + this._backoff.attempt + " attempts", failedBeforeOpen);
        return;
      }
      delay = this._backoff.next();
    }
    this.readyState = CONNECTING;
    this._reconnectTimer = this._timers.set(() => this._connect(), delay);
    this._emit("reconnecting", {attempt: this._backoff.attempt, delay: delay, transport: this._choice.current});
  }

  _giveUp(code, message, emitClose) {
    this._stopConnectionTimers();
    this._listenVisibility(false);
    this.readyState = CLOSED;
    this.transport = null;
    this._rejectAll("disconnected", "the client stopped reconnecting");
    this._defer(() => {
      if (code) {
        this._emit("error", {code: code, message: message});
      }
      if (emitClose) {
        this._emit("close", {code: 1006, reason: code || "", wasClean: false, willReconnect: false});
      }
    });
  }

  _stopConnectionTimers() {
    const timers = this._timers;
    timers.clear(this._handshakeTimer);
    timers.clear(this._stableTimer);
    this._handshakeTimer = this._stableTimer = null;
    if (this._liveness) {
      this._liveness.stop();
      this._liveness = null;
    }
    const resume = this._recovery.finishResume();
    if (resume) {
      timers.clear(resume.timer);
    }
  }

  // Liveness (WebSocket) -------------------------------------------------

  _startLiveness(conn) {
    if (conn.name === "websocket" && this._opts.heartbeatInterval > 0) {
      this._liveness = new Liveness(this._timers, this._opts.heartbeatInterval, this._opts.staleTimeout, {
        silent: () => this._probe(),
        ping: () => this._control({type: "ping"}),
        dead: () => this._lost(conn, {code: 1006, reason: "stale connection", wasClean: false}),
      });
      this._touch(conn);
    }
  }

  /** Traffic arrived: the connection is alive. */
  _touch(conn) {
    if (conn !== this._conn || !this._liveness) {
      return;
    }
    this._liveness.touch();
  }

  /** Ping, and declare the connection dead if nothing comes back in time. */
  _probe() {
    if (!this._conn || !this._liveness || this.readyState !== OPEN) {
      return;
    }
    this._liveness.probe();
  }

  /** A page coming back to view (a laptop waking up) checks its connection at once. */
  _listenVisibility(on) {
    const doc = this._doc;
    if (!doc || typeof doc.addEventListener !== "function" || on === this._listening) {
      return;
    }
    this._listening = on;
    if (on) {
      doc.addEventListener("visibilitychange", this._visibilityListener);
    } else {
      doc.removeEventListener("visibilitychange", this._visibilityListener);
    }
  }

  // Incoming envelopes -----------------------------------------------------

  _protocolError(conn, code, message) {
    if (conn === this._conn) {
      this._emit("error", {code: code, message: message});
    }
  }

  _onEnvelope(conn, envelope) {
    if (conn !== this._conn) {
      return;
    }
    if (!envelope || typeof envelope !== "object" || typeof envelope.type !== "string") {
      this._emit("error", {code: "bad_envelope", message: "the server sent a message without a type"});
      return;
    }
    if (isPositioned(envelope)) {
      if (!this._recovery.hold(envelope)) {
        this._deliverPositioned(envelope);
      }
      return;
    }
    this._dispatch(envelope);
  }

  _deliverPositioned(envelope) {
    if (this._recovery.advance(envelope)) {
      this._dispatch(envelope);
    }
  }

  _dispatch(envelope) {
    const type = envelope.type;
    const data = envelope.data === undefined ? null : envelope.data;
    const id = envelope.id;
    if (id !== undefined && id !== null && this._pending.has(id)) {
      if (type === "error") {
        const info = data || {};
        this._settle(id, appError(info.code || "error", info.message, {data: info}));
        return;
      }
      this._settle(id, null, data);
      if (type === "reply") {
        return;
      }
    }
    switch (type) {
      case "welcome":
        return; // Only the first of a connection counts; it was handled.
      case "resumed":
        this._finishResume(!!(data && data.recovered), envelope);
        return;
      case "gap":
        // The server could not bridge a Redis outage: messages up to
        // `position` may never come. The live form of `recovered: false`.
        this._emit("recovery", {
          recovered: false, live: true,
          position: data && typeof data.position === "number" ? data.position : null,
          channel: data && typeof data.channel === "string" ? data.channel : null,
        });
        break;
      case "reconnect": {
        const after = Number(data && data.after_ms);
        if (isFinite(after) && after >= 0) {
          this._announcedDelay = after;
        }
        break;
      }
      default:
        break;
    }
    this._emit(type, data, envelope);
  }

  _finishResume(recovered, envelope) {
    const resume = this._recovery.finishResume();
    if (resume) {
      this._timers.clear(resume.timer);
    }
    const conn = this._conn;
    this._emit("recovery", {recovered: recovered});
    if (envelope) {
      this._emit("resumed", envelope.data, envelope);
    }
    if (resume) {
      for (const held of resume.held) {
        if (this._conn !== conn) {
          break;
        }
        this._deliverPositioned(held);
      }
    }
  }

  // Sending ----------------------------------------------------------------

  /**
   * Send an envelope `{type, data}`. While the client is not open it waits
   * in the offline buffer (bounded by `maxBufferedSends`).
   */
  send(type, data) {
    requireName(type, "the message type");
    const envelope = {type: type};
    if (data !== undefined) {
      envelope.data = data;
    }
    this._enqueue(envelope);
    return this;
  }

  /**
   * Send an acknowledged request; resolves with the `data` of the reply.
   * Rejects with an Error whose `code` is the server's error code, or
   * `"timeout"`, `"disconnected"` (sent, then the connection was lost),
   * `"buffer_overflow"` or `"closed"`.
   */
  request(type, data, options) {
    return new Promise((resolve, reject) => {
      requireName(type, "the message type");
      this._requireConnection();
      const timeout = options && options.timeout !== undefined ? options.timeout : this._opts.requestTimeout;
      const id = ++this._nextId;
      const entry = {resolve: resolve, reject: reject, sent: false, timer: null};
      entry.timer = this._timers.timeout(() => {
        this._settle(id, appError("timeout", "no reply to " + type + " within " + timeout + " ms"));
      }, timeout);
      this._pending.set(id, entry);
      const envelope = {type: type, id: id};
      if (data !== undefined) {
        envelope.data = data;
      }
      this._enqueue(envelope);
    });
  }

  _settle(id, error, value) {
    const entry = this._pending.get(id);
    if (!entry) {
      return;
    }
    this._pending.delete(id);
    this._timers.clear(entry.timer);
    if (error) {
      if (!entry.sent) {
        this._buffer.removeId(id);
      }
      entry.reject(error);
    } else {
      entry.resolve(value);
    }
  }

  _rejectAll(code, message) {
    Array.from(this._pending.keys()).forEach((id) => this._settle(id, appError(code, message)));
  }

  _requireConnection() {
    if (this._reloadUrl) {
      throw appError("unsupported", "a client in reloadInterval mode has no connection to send on");
    }
  }

  _enqueue(envelope) {
    this._requireConnection();
    if (this.readyState === OPEN && this._conn && this._write(envelope)) {
      return;
    }
    this._buffer.push(envelope);
    this._trimBuffer();
  }

  _write(envelope) {
    if (!this._conn.send(envelope)) {
      return false;
    }
    if (envelope.id !== undefined) {
      const entry = this._pending.get(envelope.id);
      if (entry) {
        entry.sent = true;
      }
    }
    return true;
  }

  /** Protocol housekeeping: sent now or never, rebuilt on every connection. */
  _control(envelope) {
    this._controlEnvelopes.add(envelope);
    if (this._conn) {
      this._conn.send(envelope);
    }
  }

  _controlIfOpen(envelope) {
    if (this.readyState === OPEN) {
      this._control(envelope);
    }
  }

  _flushBuffer() {
    while (this._buffer.length && this.readyState === OPEN && this._conn) {
      const envelope = this._buffer.shift();
      if (!this._write(envelope)) {
        this._buffer.unshift(envelope);
        return;
      }
    }
  }

  _trimBuffer() {
    const max = this._buffer.limit;
    this._buffer.trim((dropped) => {
      if (dropped.id !== undefined) {
        this._settle(dropped.id, appError("buffer_overflow", "dropped from the full offline send buffer"));
      }
      this._emit("error", {
        code: "buffer_overflow",
        message: "the offline send buffer holds " + max + " messages; the oldest was dropped",
        envelope: dropped,
      });
    });
  }

  // Channels and rooms -----------------------------------------------------

  /** Receive the channel's `message` envelopes, now and after every reconnect. */
  subscribe(channel) {
    requireName(channel, "the channel");
    if (!this._channels.has(channel)) {
      this._channels.add(channel);
      this._channelsChanged({type: "subscribe", data: {channel: channel}});
    }
    return this;
  }

  unsubscribe(channel) {
    if (this._channels.delete(channel)) {
      this._channelsChanged({type: "unsubscribe", data: {channel: channel}});
    }
    return this;
  }

  /**
   * An event stream follows the channels of its URL, which the browser's
   * own reconnect asks for again: a change opens a new stream with the
   * whole list, resuming from the last event id. Changes made in one go
   * (several subscribe() calls in a row) open one stream.
   */
  _channelsChanged(envelope) {
    if (this._conn && this._conn.name === "sse") {
      this._reopenIfChannelsChanged();
    } else {
      this._controlIfOpen(envelope);
    }
  }

  _reopenIfChannelsChanged() {
    if (this._reopenQueued) {
      return;
    }
    this._reopenQueued = true;
    this._defer(() => {
      this._reopenQueued = false;
      const conn = this._conn;
      if (!conn || conn.name !== "sse" || this.readyState !== OPEN) {
        return; // Not open: the next welcome checks again.
      }
      const current = conn.channels;
      const wanted = this._channels;
      if (current.length !== wanted.size || current.some((channel) => !wanted.has(channel))) {
        conn.reopen("channels changed");
      }
    });
  }

  /** Publish `data` on a channel (if the application lets clients publish there). */
  publish(channel, data) {
    requireName(channel, "the channel");
    return this.send("publish", {channel: channel, data: data});
  }

  /** Enter a room under a display name; kept across reconnects. */
  join(room, username) {
    requireName(room, "the room");
    requireName(username, "the username");
    if (this._rooms.get(room) !== username) {
      this._rooms.set(room, username);
      this._controlIfOpen({type: "join", data: {room: room, username: username}});
    }
    return this;
  }

  leave(room) {
    if (this._rooms.delete(room)) {
      this._controlIfOpen({type: "leave", data: {room: room}});
    }
    return this;
  }

  /** The usernames in a room. */
  members(room) {
    requireName(room, "the room");
    return this.request("members", {room: room}).then(function (data) {
      if (Array.isArray(data)) {
        return data;
      }
      if (data && Array.isArray(data.members)) {
        return data.members;
      }
      throw appError("bad_answer", "the members answer has no member list");
    });
  }

  /** The server's connection counts, by JSONP (works cross-port without CORS). */
  clientCount(room) {
    const url = withQuery(this.ajaxUrl + "/get_client_count", {room: room});
    return this._http.jsonp(url, this._opts.ajaxTimeout);
  }

  // Polling-refresh mode ---------------------------------------------------

  _startReloading() {
    const loop = this._reload = new ReloadLoop({
      http: this._http,
      timers: this._timers,
      url: this._reloadUrl,
      intervalMs: this._opts.reloadInterval * 1000,
      timeoutMs: this._opts.ajaxTimeout,
      loaded: (result) => {
        if (this.readyState !== OPEN) {
          this.readyState = OPEN;
          this._emit("open", {transport: null, clientId: null, resumed: false});
        }
        if (loop.running) {
          this._emit("reload", result);
        }
      },
      failed: (error) => {
        const wasOpen = this.readyState === OPEN;
        this.readyState = CONNECTING;
        if (wasOpen) {
          this._emit("close", {code: 1006, reason: error.code, wasClean: false, willReconnect: true});
        }
        if (loop.running) {
          this._emit("error", {code: error.code, message: error.message});
        }
      },
    });
    loop.start();
  }

  _stopReloading() {
    if (this._reload) {
      this._reload.stop();
      this._reload = null;
    }
  }
}

Object.assign(Client, {CONNECTING: CONNECTING, OPEN: OPEN, CLOSING: CLOSING, CLOSED: CLOSED});
Object.assign(Client.prototype, {CONNECTING: CONNECTING, OPEN: OPEN, CLOSING: CLOSING, CLOSED: CLOSED});
