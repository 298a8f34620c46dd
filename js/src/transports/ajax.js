/**
 * The Ajax transport: one session on the Ajax site (`connect`, then a loop
 * of long polls), with sends serialized one at a time so the server sees
 * them in order. It reports to its owner like the WebSocket transport.
 *
 * The connect answer's `session` is a secret that authenticates this
 * session's requests (see Http.endpoint); it stays inside this object and
 * is never the client id, which is public and comes from the `welcome` (or
 * the answer's `client_id`).
 *
 * The handshake ends with the first poll: the server queued a `welcome` at
 * connect, and only that envelope carries the stream position the session
 * started at (the connect answer's `position` is the session's own cursor).
 */
import {ajaxError} from "../errors.js";

function noop() {}

export class AjaxConnection {
  /**
   * @param {Object} owner the client
   * @param {import("../http.js").Http} http
   * @param {{connectTimeout: number, pollTimeout: number, ajaxTimeout: number}} timeouts
   */
  constructor(owner, http, timeouts) {
    this.name = "ajax";
    this._owner = owner;
    this._http = http;
    this._timeouts = timeouts;
    this._session = null;
    this._connectAnswer = null;
    this._welcomed = false;
    this._cursor = 0;
    this._queue = [];
    this._inFlight = null;
    this._requests = new Set();
    this._closed = false;
  }

  start() {
    this._track(this._http.endpoint("connect", null, {}, undefined, this._timeouts.connectTimeout))
      .then((answer) => {
        if (this._closed) {
          return;
        }
        if (!answer || typeof answer.session !== "string" || !answer.session) {
          throw ajaxError("bad_answer", "/connect answered without a session", 0);
        }
        this._session = answer.session;
        this._connectAnswer = answer;
        this._poll();
      })
      .catch((error) => this._fail(error));
  }

  /** Keep `request` abortable by close() until it settles. */
  _track(request) {
    this._requests.add(request);
    const forget = () => { this._requests.delete(request); };
    request.then(forget, forget);
    return request;
  }

  _poll() {
    if (this._closed) {
      return;
    }
    const params = {since: this._cursor};
    this._track(this._http.endpoint("poll", this._session, params, undefined, this._timeouts.pollTimeout))
      .then((answer) => {
        if (this._closed) {
          return;
        }
        if (answer && typeof answer.position === "number") {
          this._cursor = answer.position;
        }
        const messages = answer && Array.isArray(answer.messages) ? answer.messages : [];
        let next = 0;
        if (!this._welcomed) {
          next = this._handshake(messages[0]);
        }
        for (let i = next; i < messages.length && !this._closed; i++) {
          this._owner._onEnvelope(this, messages[i]);
        }
        if (this._closed) {
          return;
        }
        const closed = answer && answer.closed;
        if (closed) {
          // The server ended the session (shutdown, slow consumer, expiry).
          this._end({code: closed.code || 1000, reason: closed.reason || "session closed", wasClean: true});
        } else {
          this._poll();
        }
      }, (error) => this._fail(error));
  }

  /** Complete the handshake; returns how many messages it consumed. */
  _handshake(first) {
    this._welcomed = true;
    let welcome = first && first.type === "welcome" ? first : null;
    if (!welcome) {
      // A server that queued no welcome: the connect answer says the same, less the position.
      const answer = this._connectAnswer;
      welcome = {type: "welcome", data: {
        client_id: answer.client_id, epoch: answer.epoch, position: null, transport: "ajax",
      }};
    }
    this._owner._onHandshake(this, welcome);
    this._pump();
    return welcome === first ? 1 : 0;
  }

  /** Queue `envelope` for the session; false once this connection is closed. */
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
    this._http.endpoint("send", this._session, {}, envelope, this._timeouts.ajaxTimeout).then(() => {
      if (!this._closed) {
        this._inFlight = null;
        this._pump();
      }
    }, (error) => {
      if (this._closed) {
        return;
      }
      this._inFlight = null;
      if (error.sessionLost) {
        // It never reached a session: send it again on the next one.
        this._fail(error, [envelope]);
      } else if (error.status >= 400 && error.status < 500) {
        // The server refused this envelope; the session goes on.
        this._owner._onEnvelope(this, {
          type: "error",
          id: envelope.id === undefined ? null : envelope.id,
          data: {code: error.code, message: error.message},
        });
        this._pump();
      } else {
        // Lost in transit: whether the server got it is unknown, so it counts as sent.
        this._fail(error);
      }
    });
  }

  _fail(error, unsent) {
    this._end({code: 1006, reason: error.code || "network", wasClean: false, error: error}, unsent);
  }

  /** The session is over: tell the owner, handing back what was never sent. */
  _end(info, unsent) {
    if (this._closed) {
      return;
    }
    info.unsent = (unsent || []).concat(this._queue);
    this.close(false);
    this._owner._lost(this, info);
  }

  /** Stop every request; `byClient` also ends the session on the server. */
  close(byClient) {
    if (this._closed) {
      return;
    }
    this._closed = true;
    this._queue = [];
    this._requests.forEach(function (request) { request.abort(); });
    this._requests.clear();
    if (byClient && this._session) {
      // Courtesy: free the session now rather than at its idle timeout.
      this._http.endpoint("disconnect", this._session, {}, undefined, this._timeouts.ajaxTimeout)
        .catch(noop);
    }
  }
}
