/**
 * The event stream transport (Server-Sent Events): `GET /events` read by an
 * EventSource, one envelope per event; sends go by `POST /send` with the
 * stream's secret, one at a time so the server sees them in order. It
 * reports to its owner like the WebSocket transport.
 *
 * The wire contract is docs/protocol.md, "Event stream":
 *
 * - the URL names the channels (`channel=`, repeated) and, when the client
 *   comes from another transport or reopens its stream, where to resume
 *   (`lastEventId=EPOCH:POS`);
 * - the first envelope of every stream is a `welcome` carrying the stream's
 *   secret (`session`); every stream, a reconnection included, is a new
 *   client with a new id and a new secret;
 * - when a stream drops, the browser reconnects by itself with the last
 *   event id it saw (`Last-Event-ID`); the server answers `welcome`, the
 *   missed messages in order, then `resumed`. The owner hears of the drop
 *   (`_interrupted`) and of the new welcome (`_onHandshake` again), so it
 *   rejoins rooms and resends what was waiting;
 * - a `reconnect` envelope (a server shutting down, or a refusal that
 *   passes as a short stream) closes the stream: the owner comes back after
 *   the announced delay.
 *
 * The secret stays inside this object, as the Ajax transport's does.
 */
import {withQuery} from "../urls.js";

function noop() {}

/** EventSource.readyState values. */
const ES_CONNECTING = 0;
const ES_CLOSED = 2;

export class SseConnection {
  /**
   * @param {Object} owner the client
   * @param {Function} EventSourceImpl an EventSource constructor (the browser's, or a test's fake)
   * @param {import("../http.js").Http} http JSON over fetch, for `/send` and `/disconnect`
   * @param {{baseUrl: string, channels: function(): string[], resumeFrom: (string|null), ajaxTimeout: number}} settings
   *   `channels()` gives the channels to follow when a stream opens;
   *   `resumeFrom` is `EPOCH:POS` when the client has delivered messages before.
   */
  constructor(owner, EventSourceImpl, http, settings) {
    this.name = "sse";
    this._owner = owner;
    this._EventSource = EventSourceImpl;
    this._http = http;
    this._settings = settings;
    /** The id a new stream resumes from: the last event id seen, or null. */
    this.lastEventId = settings.resumeFrom || null;
    /** Whether the stream being opened resumes (the server replays, then says `resumed`). */
    this.resumesOnOpen = false;
    /** The channels of the current stream's URL. */
    this.channels = [];
    this._source = null;
    this._session = null;
    this._welcomed = false;
    this._queue = [];
    this._inFlight = null;
    this._requests = new Set();
    this._closed = false;
  }

  start() {
    this._open();
  }

  _open() {
    this.channels = this._settings.channels().slice();
    this.resumesOnOpen = this.lastEventId !== null;
    this._welcomed = false;
    this._session = null;
    let url = this._settings.baseUrl + "/events";
    this.channels.forEach(function (channel) {
      url = withQuery(url, {channel: channel});
    });
    url = withQuery(url, {lastEventId: this.lastEventId});
    let source;
    try {
      source = this._source = new this._EventSource(url);
    } catch (error) {
      // For example a SecurityError for a URL the page may not open.
      this._end({code: 1006, reason: "refused", wasClean: false, error: error});
      return;
    }
    source.onmessage = (event) => this._receive(event);
    source.onerror = () => this._error(source);
  }

  _receive(event) {
    const owner = this._owner;
    let envelope;
    try {
      envelope = JSON.parse(event.data);
    } catch (error) {
      owner._protocolError(this, "bad_json", "the server sent an event that is not JSON");
      return;
    }
    if (!envelope || typeof envelope !== "object") {
      owner._onEnvelope(this, envelope);
      return;
    }
    const data = envelope.data || {};
    if (envelope.type === "welcome" && !this._welcomed) {
      this._welcomed = true;
      this._session = typeof data.session === "string" && data.session ? data.session : null;
      if (!this.resumesOnOpen && data.epoch !== undefined && typeof data.position === "number") {
        this.lastEventId = data.epoch + ":" + data.position;
      }
      // The owner sees the welcome without the secret.
      const welcome = Object.assign({}, envelope, {data: Object.assign({}, data)});
      delete welcome.data.session;
      owner._onHandshake(this, welcome);
      this._pump();
      return;
    }
    if (envelope.type === "resumed" && data.epoch !== undefined && typeof data.position === "number") {
      this.lastEventId = data.epoch + ":" + data.position;
    } else if (event.lastEventId && typeof envelope.pos === "number") {
      this.lastEventId = event.lastEventId;
    }
    owner._onEnvelope(this, envelope);
    if (envelope.type === "reconnect" && !this._closed) {
      // The owner noted the delay; it, not the browser, comes back.
      this._end({code: 1001, reason: "the server asked to reconnect", wasClean: true});
    }
  }

  _error(source) {
    if (this._closed || source !== this._source) {
      return;
    }
    if (source.readyState === ES_CONNECTING && this._welcomed) {
      // The stream dropped after it opened: the browser reconnects by
      // itself with Last-Event-ID, to a new client with a new secret.
      this._interrupt({code: 1006, reason: "stream interrupted", wasClean: false});
      return;
    }
    // Refused with an error status (CLOSED: the browser gives up), or a
    // stream that failed before its welcome.
    const status = source.readyState === ES_CLOSED ? "refused" : "network";
    this._end({code: 1006, reason: status, wasClean: false});
  }

  /** Between two streams: what was sent on the old one gets its answers there, or never. */
  _interrupt(info) {
    this._welcomed = false;
    this._session = null;
    this.resumesOnOpen = this.lastEventId !== null;
    this._abortRequests();
    info.unsent = this._queue;
    this._queue = [];
    this._owner._interrupted(this, info);
  }

  /**
   * Open a new stream at once with the owner's current channels, resuming
   * from the last event id (the browser's own reconnect asks for the old
   * URL's channels only).
   */
  reopen(reason) {
    if (this._closed) {
      return;
    }
    this._closeSource(true);
    this._interrupt({code: 1000, reason: reason || "reopening", wasClean: true});
    if (!this._closed) {
      this._open();
    }
  }

  /** Queue `envelope` for `POST /send`; false once this connection is closed. */
  send(envelope) {
    if (this._closed) {
      return false;
    }
    this._queue.push(envelope);
    this._pump();
    return true;
  }

  _pump() {
    if (this._closed || this._inFlight || !this._session || !this._queue.length) {
      return;
    }
    const envelope = this._inFlight = this._queue.shift();
    const session = this._session;
    const request = this._track(this._http.endpoint("send", session, {}, envelope, this._settings.ajaxTimeout));
    request.then(() => {
      if (this._inFlight === envelope) {
        this._inFlight = null;
        this._pump();
      }
    }, (error) => {
      if (this._closed || this._inFlight !== envelope) {
        return; // Aborted: the stream it was sent for is gone.
      }
      this._inFlight = null;
      if (error.sessionLost) {
        // The stream is gone (410 unknown_session): it never reached a client.
        this._end({code: 1006, reason: error.code || "unknown_session", wasClean: false, error: error}, [envelope]);
      } else if (error.status >= 400 && error.status < 500) {
        // The server refused this envelope; the stream goes on.
        this._owner._onEnvelope(this, {
          type: "error",
          id: envelope.id === undefined ? null : envelope.id,
          data: {code: error.code, message: error.message},
        });
        this._pump();
      } else {
        // Lost in transit: whether the server got it is unknown, so it counts as sent.
        this._end({code: 1006, reason: error.code || "network", wasClean: false, error: error});
      }
    });
  }

  /** Keep `request` abortable until it settles. */
  _track(request) {
    this._requests.add(request);
    const forget = () => { this._requests.delete(request); };
    request.then(forget, forget);
    return request;
  }

  _abortRequests() {
    this._inFlight = null;
    this._requests.forEach(function (request) { request.abort(); });
    this._requests.clear();
  }

  /** The connection is over: tell the owner, handing back what was never sent. */
  _end(info, unsent) {
    if (this._closed) {
      return;
    }
    info.unsent = (unsent || []).concat(this._queue);
    this.close(false);
    this._owner._lost(this, info);
  }

  _closeSource(quietly) {
    const source = this._source;
    if (!source) {
      return;
    }
    this._source = null;
    if (quietly) {
      source.onmessage = source.onerror = null;
    }
    try {
      source.close();
    } catch (error) {
      // Already closed.
    }
  }

  /** Close the stream; `byClient` also tells the server at once (`POST /disconnect`). */
  close(byClient) {
    if (this._closed) {
      return;
    }
    this._closed = true;
    const session = this._session;
    this._queue = [];
    this._closeSource(true);
    this._abortRequests();
    if (byClient && session) {
      this._http.endpoint("disconnect", session, {}, undefined, this._settings.ajaxTimeout).catch(noop);
    }
  }
}
