/**
 * appserver browser client.
 *
 * One API over two transports (WebSocket, and Ajax long polling in JSON or
 * JSONP), with automatic fallback between them, reconnection with jittered
 * exponential backoff, recovery of the messages missed while away, a bounded
 * offline send buffer, request/reply, channels and rooms.
 *
 * Plain page: `<script src="/js/appserver.js"></script>` defines
 * `window.AppServer` (and `$.appserver(options)` when jQuery was loaded
 * first). CommonJS and AMD loaders get the same object as the module value.
 * No dependencies, no build step.
 *
 * The wire protocol is docs/protocol.md; the API reference is docs/client.md.
 */
(function (root, factory) {
  "use strict";
  var AppServer = factory(root);
  if (typeof module === "object" && module && module.exports) {
    module.exports = AppServer;
  } else if (typeof define === "function" && define.amd) {
    define([], function () { return AppServer; });
  } else {
    root.AppServer = AppServer;
  }
  var jQuery = root.jQuery;
  if (typeof jQuery === "function" && !jQuery.appserver) {
    jQuery.appserver = function (options) { return AppServer.connect(options); };
  }
}(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this, function (root) {
  "use strict";

  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSING = 2;
  const CLOSED = 3;

  const TRANSPORTS = ["websocket", "ajax"];

  /** A connection that stayed open this long resets the backoff counter. */
  const STABLE_AFTER_MS = 5000;

  /** Failures without ever opening before leaving a transport that once worked. */
  const FALLBACK_AFTER_FAILURES = 3;

  const DEFAULT_RECONNECT = Object.freeze({initialDelay: 500, maxDelay: 10000, maxRetries: Infinity});

  const DEFAULTS = Object.freeze({
    transports: TRANSPORTS,
    ajaxMode: "json",
    connectTimeout: 5000,
    requestTimeout: 10000,
    ajaxTimeout: 10000,
    pollTimeout: 40000,
    heartbeatInterval: 20000,
    staleTimeout: 10000,
    maxBufferedSends: 100,
    reloadInterval: 0,
    reloadUrl: "/get_client_count",
  });

  /**
   * Envelopes addressed to this connection alone. Their `pos`, if a server
   * ever adds one, is not a stream position: they are never dropped as
   * duplicates and never move the recovery mark.
   */
  const UNPOSITIONED_TYPES = new Set([
    "welcome", "resumed", "reply", "error", "pong", "subscribed", "unsubscribed", "members", "reconnect",
  ]);

  /**
   * The request header that carries an Ajax session's secret on JSON requests
   * (JSONP requests, which cannot set headers, carry it as `session=`).
   */
  const SESSION_HEADER = "X-AppServer-Session";
  /** The poll cursor of a JSON request (JSONP sends `since=` in the query). */
  const SINCE_HEADER = "X-AppServer-Since";

  function noop() {}

  /**
   * An Error with a protocol-style `code` (see docs/protocol.md, "Error codes").
   */
  function appError(code, message, extra) {
    const error = new Error(message || code);
    error.code = code;
    if (extra) {
      Object.assign(error, extra);
    }
    return error;
  }

  /**
   * An error answer of the Ajax site. `sessionLost` means: connect again.
   */
  function ajaxError(code, message, status) {
    const error = appError(code, message, {status: status});
    error.sessionLost = status === 410 || code === "unknown_session";
    return error;
  }

  function reportHandlerError(error) {
    // A throwing handler must not stop the others nor the client itself.
    if (typeof root.reportError === "function") {
      root.reportError(error);
    } else if (root.console && typeof root.console.error === "function") {
      root.console.error(error);
    }
  }

  function withQuery(url, params) {
    const parts = [];
    Object.keys(params).forEach(function (key) {
      const value = params[key];
      if (value !== undefined && value !== null) {
        parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(String(value)));
      }
    });
    if (!parts.length) {
      return url;
    }
    return url + (url.indexOf("?") < 0 ? "?" : "&") + parts.join("&");
  }

  /** A URL fit for an error message: without its query (a JSONP query holds the session secret). */
  function withoutQuery(url) {
    const end = url.search(/[?#]/);
    return end < 0 ? url : url.slice(0, end);
  }

  function resolveUrl(url, base) {
    if (/^[a-z][a-z0-9+.-]*:|^\/\//i.test(url)) {
      return url;
    }
    return base + (url.charAt(0) === "/" ? "" : "/") + url;
  }

  function requireName(value, what) {
    if (typeof value !== "string" || !value) {
      throw new TypeError(what + " must be a non-empty string");
    }
  }

  function mergeDefined(defaults, options) {
    const merged = Object.assign({}, defaults);
    Object.keys(options).forEach(function (key) {
      if (options[key] !== undefined) {
        merged[key] = options[key];
      }
    });
    return merged;
  }

  function normalizeTransports(options) {
    if (options.websockets === false) {
      return ["ajax"];
    }
    const list = Array.isArray(options.transports) ? options.transports.slice() : [options.transports];
    if (!list.length || list.some(function (name) { return TRANSPORTS.indexOf(name) < 0; })) {
      throw new TypeError("transports must list some of " + TRANSPORTS.join(", "));
    }
    return list;
  }

  // JSONP ------------------------------------------------------------------

  /**
   * Callbacks of JSONP requests in flight, reachable as `AppServer._jsonp.NAME`
   * so that the page gets no global besides `AppServer`.
   */
  const jsonpCallbacks = Object.create(null);
  const jsonpPrefix = "appserver" + String(Math.random()).replace(/\D/g, "").slice(0, 12);
  let jsonpNonce = Date.now();

  /**
   * Register a JSONP callback under a fresh name shaped like jQuery's
   * (`prefix_nonce`). When this file is not `window.AppServer` (an AMD or
   * CommonJS load), the callback has to be a global of its own.
   */
  function registerCallback(fn) {
    const name = jsonpPrefix + "_" + (jsonpNonce++);
    const namespaced = root.AppServer === AppServer;
    const slots = namespaced ? jsonpCallbacks : root;
    slots[name] = fn;
    return {
      name: namespaced ? "AppServer._jsonp." + name : name,
      release: function (answered) {
        if (answered) {
          delete slots[name];
        } else {
          // The script may still run later: answer it with a no-op that cleans up.
          slots[name] = function () { delete slots[name]; };
        }
      },
    };
  }

  /**
   * Load `url` as a script with a `callback=` parameter; resolves with the
   * value passed to the callback. The returned promise has an `abort()`.
   */
  function loadJsonp(doc, timers, url, timeoutMs) {
    let finish = null;
    const promise = new Promise(function (resolve, reject) {
      if (!doc || typeof doc.createElement !== "function") {
        reject(appError("unsupported", "JSONP needs a document"));
        return;
      }
      const script = doc.createElement("script");
      let done = false;
      let timer = null;
      const callback = registerCallback(function (value) { finish(null, value); });
      finish = function (error, value) {
        if (done) {
          return;
        }
        done = true;
        timers.clear(timer);
        script.onerror = null;
        if (script.parentNode) {
          script.parentNode.removeChild(script);
        }
        callback.release(!error);
        if (error) {
          reject(error);
        } else {
          resolve(value);
        }
      };
      timer = timers.timeout(function () {
        finish(appError("timeout", "no answer from " + withoutQuery(url) + " within " + timeoutMs + " ms"));
      }, timeoutMs);
      script.async = true;
      script.onerror = function () { finish(appError("network", "could not load " + withoutQuery(url))); };
      script.src = withQuery(url, {callback: callback.name});
      (doc.head || doc.documentElement).appendChild(script);
    });
    promise.abort = function () {
      if (finish) {
        finish(appError("aborted", "request aborted"));
      }
    };
    return promise;
  }

  /**
   * Turn an Ajax answer into its value, or throw the error it carries.
   * JSONP errors arrive with HTTP 200 and the real status inside.
   */
  function checkAnswer(value, httpStatus) {
    if (value && typeof value === "object" && value.error) {
      const status = typeof value.status === "number" ? value.status : httpStatus;
      const error = value.error;
      throw ajaxError(error.code || "http_" + status, error.message || "HTTP " + status, status);
    }
    if (httpStatus >= 400) {
      throw ajaxError("http_" + httpStatus, "HTTP " + httpStatus, httpStatus);
    }
    return value;
  }

  function withAbort(promise, source) {
    promise.abort = source.abort;
    return promise;
  }

  /**
   * The HTTP side of a client: JSON over fetch (CORS) or JSONP, per `ajaxMode`.
   * Every method returns a promise with an `abort()` method.
   */
  class Http {
    constructor(client) {
      this._client = client;
    }

    /**
     * Call an Ajax endpoint (`connect`, `send`, `poll`, `disconnect`).
     *
     * `session` is the session secret from `/connect` (`null` for `connect`
     * itself). JSON requests carry it in the X-AppServer-Session header and
     * never in the URL; JSONP requests, which cannot set headers, carry it as
     * the `session` query parameter.
     */
    endpoint(name, session, params, envelope, timeoutMs) {
      const client = this._client;
      const url = client.ajaxUrl + "/" + name;
      const hasSession = session !== null && session !== undefined;
      if (client._opts.ajaxMode === "jsonp") {
        const query = Object.assign(hasSession ? {session: session} : {}, params);
        if (envelope !== undefined) {
          query.msg = JSON.stringify(envelope);
        }
        return this.jsonp(withQuery(url, query), timeoutMs);
      }
      const method = name === "poll" ? "GET" : "POST";
      // The body goes as a string (text/plain). The session header makes the
      // request non-simple: the browser sends a CORS preflight first, which
      // the Ajax site answers for its allowed origins. Browsers cache a
      // preflight per URL, so a session's requests keep one URL per
      // endpoint: the poll's cursor travels in a header too.
      const body = envelope === undefined ? undefined : JSON.stringify(envelope);
      let headers;
      let query = params;
      if (hasSession) {
        headers = {[SESSION_HEADER]: String(session)};
        if (params && params.since !== undefined) {
          headers[SINCE_HEADER] = String(params.since);
          query = Object.assign({}, params);
          delete query.since;
        }
      }
      return this.fetchJson(withQuery(url, query), method, body, timeoutMs, headers);
    }

    /** GET a URL that answers JSON, in the client's Ajax mode. */
    get(url, timeoutMs) {
      if (this._client._opts.ajaxMode === "jsonp") {
        return this.jsonp(url, timeoutMs);
      }
      return this.fetchJson(url, "GET", undefined, timeoutMs);
    }

    jsonp(url, timeoutMs) {
      const client = this._client;
      const request = loadJsonp(client._doc, client._timers, url, timeoutMs);
      return withAbort(request.then(function (value) { return checkAnswer(value, 200); }), request);
    }

    fetchJson(url, method, body, timeoutMs, headers) {
      const client = this._client;
      const fetchImpl = client._fetch;
      if (typeof fetchImpl !== "function") {
        return withAbort(Promise.reject(appError("unsupported", "no fetch() in this browser")), {abort: noop});
      }
      const controller = new AbortController();
      let failure = null;
      const abort = function (error) {
        failure = failure || error;
        controller.abort();
      };
      const timer = client._timers.timeout(function () {
        abort(appError("timeout", method + " " + url + " took more than " + timeoutMs + " ms", {status: 0}));
      }, timeoutMs);
      const init = {method: method, signal: controller.signal, cache: "no-store"};
      if (body !== undefined) {
        init.body = body;
      }
      if (headers !== undefined) {
        init.headers = headers;
      }
      const request = Promise.resolve()
        .then(function () { return fetchImpl(url, init); })
        .then(function (response) {
          return response.text().then(function (text) {
            let value = null;
            if (text) {
              try {
                value = JSON.parse(text);
              } catch (error) {
                throw ajaxError(response.status >= 400 ? "http_" + response.status : "bad_json",
                  "the answer of " + url + " is not JSON", response.status);
              }
            }
            return checkAnswer(value, response.status);
          });
        })
        .then(function (value) {
          client._timers.clear(timer);
          return value;
        }, function (error) {
          client._timers.clear(timer);
          if (failure) {
            throw failure;
          }
          if (typeof error.status === "number") {
            throw error;
          }
          throw ajaxError("network", method + " " + url + " failed: " + error.message, 0);
        });
      return withAbort(request, {abort: function () { abort(appError("aborted", "request aborted", {status: 0})); }});
    }
  }

  // Transports -------------------------------------------------------------

  /**
   * One WebSocket: frames in and out as envelopes. The first `welcome` is the
   * end of the handshake; everything else goes to the client as it comes.
   */
  class WebSocketConnection {
    constructor(client, WebSocketImpl, url) {
      this.name = "websocket";
      this._client = client;
      this._welcomed = false;
      const socket = this._socket = new WebSocketImpl(url);
      socket.onmessage = (event) => this._receive(event.data);
      // Every error is followed by a close event: that is where the client learns.
      socket.onerror = noop;
      socket.onclose = (event) => this._client._lost(this, {
        code: event.code, reason: event.reason, wasClean: event.wasClean,
      });
    }

    start() {}

    _receive(raw) {
      const client = this._client;
      client._touch(this);
      if (typeof raw !== "string") {
        return; // Binary frames are not part of the protocol.
      }
      let envelope;
      try {
        envelope = JSON.parse(raw);
      } catch (error) {
        client._protocolError(this, "bad_json", "the server sent a frame that is not JSON");
        return;
      }
      if (!this._welcomed && envelope && envelope.type === "welcome") {
        this._welcomed = true;
        client._onHandshake(this, envelope);
        return;
      }
      client._onEnvelope(this, envelope);
    }

    send(envelope) {
      if (this._socket.readyState !== OPEN) {
        return false;
      }
      this._socket.send(JSON.stringify(envelope));
      return true;
    }

    close() {
      const socket = this._socket;
      socket.onmessage = socket.onclose = socket.onerror = null;
      try {
        socket.close(1000);
      } catch (error) {
        // Already closing or closed.
      }
    }
  }

  /**
   * One Ajax session: `connect`, then a loop of long polls, and sends
   * serialized one at a time so the server sees them in order.
   *
   * The connect answer's `session` is a secret that authenticates this
   * session's requests (see Http.endpoint); it is never the client id, which
   * is public and comes from the `welcome` (or the answer's `client_id`).
   *
   * The handshake ends with the first poll: the server queued a `welcome`
   * at connect, and only that envelope carries the stream position the
   * session started at (the connect answer's `position` is the session's
   * own cursor).
   */
  class AjaxConnection {
    constructor(client) {
      this.name = "ajax";
      this._client = client;
      this._http = client._http;
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
      const client = this._client;
      this._track(this._http.endpoint("connect", null, {}, undefined, client._opts.connectTimeout))
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
      this._track(this._http.endpoint("poll", this._session, params, undefined, this._client._opts.pollTimeout))
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
            this._client._onEnvelope(this, messages[i]);
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
      this._client._onHandshake(this, welcome);
      this._pump();
      return welcome === first ? 1 : 0;
    }

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
      this._http.endpoint("send", this._session, {}, envelope, this._client._opts.ajaxTimeout).then(() => {
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
          this._client._onEnvelope(this, {
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

    _end(info, unsent) {
      if (this._closed) {
        return;
      }
      info.unsent = (unsent || []).concat(this._queue);
      this.close(false);
      this._client._lost(this, info);
    }

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
        this._http.endpoint("disconnect", this._session, {}, undefined, this._client._opts.ajaxTimeout)
          .catch(noop);
      }
    }
  }

  // The client -------------------------------------------------------------

  /**
   * @typedef {Object} ClientOptions
   * @property {string} [url] WebSocket URL (default `AppServerConfig.wsUrl`, else `ws(s)://<hostname>:9002/`).
   * @property {string} [ajaxUrl] Base URL of the Ajax site (default `AppServerConfig.ajaxUrl`,
   *   else `http(s)://<hostname>:9001`).
   * @property {string[]} [transports] Transports to try, in order (default `["websocket", "ajax"]`).
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
  class Client {
    constructor(options) {
      options = options || {};
      const opts = mergeDefined(DEFAULTS, options);
      const config = root.AppServerConfig && typeof root.AppServerConfig === "object" ? root.AppServerConfig : {};
      const location = options.location || root.location || null;
      const secure = !!location && location.protocol === "https:";
      const host = (location && location.hostname) || "localhost";

      /** The WebSocket URL. */
      this.url = options.url || config.wsUrl || (secure ? "wss://" : "ws://") + host + ":9002/";
      /** The base URL of the Ajax site, without a trailing slash. */
      this.ajaxUrl = String(options.ajaxUrl || config.ajaxUrl || (secure ? "https://" : "http://") + host + ":9001")
        .replace(/\/+$/, "");

      opts.transports = normalizeTransports(opts);
      if (opts.ajaxMode !== "json" && opts.ajaxMode !== "jsonp") {
        throw new TypeError('ajaxMode must be "json" or "jsonp"');
      }
      opts.reconnect = opts.reconnect === false ? false
        : mergeDefined(DEFAULT_RECONNECT, typeof opts.reconnect === "object" && opts.reconnect ? opts.reconnect : {});
      this._opts = opts;
      this._reloadUrl = opts.reloadInterval > 0 ? resolveUrl(opts.reloadUrl, this.ajaxUrl) : null;

      /** CONNECTING (0), OPEN (1), CLOSING (2) or CLOSED (3), as for a WebSocket. */
      this.readyState = CLOSED;
      /** `"websocket"` or `"ajax"` while open, else `null`. */
      this.transport = null;
      /** The server's id for this connection (from `welcome`), or `null`. */
      this.clientId = null;

      const setTimer = options.setTimeout;
      const clearTimer = options.clearTimeout;
      this._timers = {
        set: function (fn, ms) { return setTimer ? setTimer(fn, ms) : root.setTimeout(fn, ms); },
        /** A deadline: none at all for 0, a negative value or Infinity (a browser would fire at once). */
        timeout: function (fn, ms) { return ms > 0 && ms < 2147483648 ? this.set(fn, ms) : null; },
        clear: function (id) {
          if (id !== null && id !== undefined) {
            if (clearTimer) {
              clearTimer(id);
            } else {
              root.clearTimeout(id);
            }
          }
        },
      };
      this._random = options.random || Math.random;
      this._fetch = options.fetch || (typeof root.fetch === "function" ? root.fetch.bind(root) : null);
      this._doc = options.document || root.document || null;
      this._http = new Http(this);

      this._handlers = Object.create(null);
      this._buffer = [];
      this._pending = new Map();
      this._nextId = 0;
      this._channels = new Set();
      this._rooms = new Map();
      this._controlEnvelopes = new WeakSet();

      // Recovery: the server epoch, the highest stream position delivered,
      // and during a resume the live messages held until the replay is done.
      this._epoch = null;
      this._lastPos = null;
      this._resume = null;

      // Transport choice and backoff.
      this._conn = null;
      this._transportIndex = 0;
      this._strikes = 0;
      this._attempt = 0;
      this._worked = new Set();
      this._tried = new Set();
      this._unavailable = new Set();
      this._lastTransport = null;
      this._announcedDelay = null;

      this._reconnectTimer = null;
      this._handshakeTimer = null;
      this._stableTimer = null;
      this._heartbeatTimer = null;
      this._staleTimer = null;
      this._liveness = false;
      this._reloadRun = null;
      this._reloadTimer = null;
      this._reloadRequest = null;
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

    // Events ---------------------------------------------------------------

    /**
     * Call `handler` for every envelope of `type` (with `(data, envelope)`),
     * or for a lifecycle event: open, close, error, reconnecting, recovery,
     * transport, reload.
     *
     * @param {string} type
     * @param {Function} handler
     * @returns {Client} this client, for chaining
     */
    on(type, handler) {
      return this._addHandler(type, handler, false);
    }

    /**
     * Like `on`, for the next event only.
     *
     * @param {string} type
     * @param {Function} handler
     * @returns {Client}
     */
    once(type, handler) {
      return this._addHandler(type, handler, true);
    }

    /**
     * Remove `handler` from `type`, or every handler of `type` when none is given.
     *
     * @param {string} type
     * @param {Function} [handler]
     * @returns {Client}
     */
    off(type, handler) {
      const list = this._handlers[type];
      if (list) {
        if (handler === undefined) {
          delete this._handlers[type];
        } else {
          this._handlers[type] = list.filter(function (entry) { return entry.fn !== handler; });
        }
      }
      return this;
    }

    _addHandler(type, handler, once) {
      requireName(type, "the event type");
      if (typeof handler !== "function") {
        throw new TypeError("the handler must be a function");
      }
      (this._handlers[type] = this._handlers[type] || []).push({fn: handler, once: once});
      return this;
    }

    _emit(type, data, envelope) {
      const list = this._handlers[type];
      if (!list || !list.length) {
        return;
      }
      for (const entry of list.slice()) {
        const current = this._handlers[type];
        if (!current || current.indexOf(entry) < 0) {
          continue; // Removed by an earlier handler of this same event.
        }
        if (entry.once) {
          this._handlers[type] = current.filter(function (other) { return other !== entry; });
        }
        try {
          entry.fn.call(this, data, envelope);
        } catch (error) {
          reportHandlerError(error);
        }
      }
    }

    _defer(fn) {
      Promise.resolve().then(fn);
    }

    // Connection lifecycle ---------------------------------------------------

    /**
     * Connect (only needed with `autoConnect: false`, or after `close()`).
     *
     * @returns {Client}
     */
    open() {
      if (this.readyState !== CLOSED) {
        return this;
      }
      this.readyState = CONNECTING;
      this._transportIndex = 0;
      this._strikes = 0;
      this._attempt = 0;
      this._tried.clear();
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
     *
     * @returns {Client}
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
      this._buffer = [];
      if (!wasClosed) {
        this._emit("close", {code: 1000, reason: "closed by the client", wasClean: true, willReconnect: false});
      }
      return this;
    }

    _connect() {
      this._reconnectTimer = null;
      const index = this._firstAvailable(this._transportIndex);
      if (index < 0) {
        this._giveUp("no_transport", "no usable transport among " + this._opts.transports.join(", "), true);
        return;
      }
      this._transportIndex = index;
      const name = this._opts.transports[index];
      this._tried.add(name);
      this.readyState = CONNECTING;
      let conn;
      if (name === "websocket") {
        const WebSocketImpl = this._opts.WebSocket || root.WebSocket;
        if (typeof WebSocketImpl !== "function") {
          this._unavailable.add(name);
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
      } else {
        conn = new AjaxConnection(this);
      }
      this._conn = conn;
      this._handshakeTimer = this._timers.timeout(() => {
        this._lost(conn, {code: 1006, reason: "connect timeout", wasClean: false});
      }, this._opts.connectTimeout);
      conn.start();
    }

    _firstAvailable(from) {
      const transports = this._opts.transports;
      for (let i = 0; i < transports.length; i++) {
        const index = (from + i) % transports.length;
        if (!this._unavailable.has(transports[index])) {
          return index;
        }
      }
      return -1;
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
      const resuming = this._epoch !== null;
      const previousEpoch = this._epoch;
      const since = this._lastPos === null ? 0 : this._lastPos;
      const position = typeof welcome.position === "number" ? welcome.position : null;
      if (!resuming || welcome.epoch !== previousEpoch) {
        // A new stream of positions: everything after the current one is new.
        this._lastPos = position;
      }
      if (welcome.epoch !== undefined && welcome.epoch !== null) {
        this._epoch = welcome.epoch;
      }

      this.readyState = OPEN;
      this.transport = name;
      this.clientId = welcome.client_id === undefined ? null : welcome.client_id;
      this._worked.add(name);
      this._tried.clear();
      this._strikes = 0;
      this._stableTimer = this._timers.set(() => {
        this._stableTimer = null;
        this._attempt = 0;
      }, STABLE_AFTER_MS);

      if (resuming) {
        // Live messages (after `position`) wait until the replay of what was
        // missed is done, so the application sees everything in order.
        this._resume = {
          connectedAt: position,
          held: [],
          timer: this._timers.timeout(() => this._finishResume(false, null), this._opts.requestTimeout),
        };
        this._control({type: "resume", data: {
          epoch: previousEpoch, since: since, channels: Array.from(this._channels),
        }});
      } else {
        this._channels.forEach((channel) => this._control({type: "subscribe", data: {channel: channel}}));
      }
      this._rooms.forEach((username, room) => this._control({type: "join", data: {room: room, username: username}}));
      this._flushBuffer();
      this._startLiveness(conn);

      if (name !== this._lastTransport) {
        this._lastTransport = name;
        this._emit("transport", name);
      }
      if (conn === this._conn) {
        this._emit("open", {transport: name, clientId: this.clientId, resumed: resuming});
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
        this._buffer = unsent.concat(this._buffer);
        this._trimBuffer();
      }

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

    _willReconnect() {
      const policy = this._opts.reconnect;
      return !!policy && (this._announcedDelay !== null || this._attempt < policy.maxRetries);
    }

    /**
     * Decide what comes after a lost or failed connection: another transport
     * at once, the same one after a backoff delay, or nothing.
     */
    _scheduleReconnect(failedBeforeOpen) {
      const transports = this._opts.transports;
      if (failedBeforeOpen) {
        const name = transports[this._transportIndex];
        this._strikes += 1;
        const limit = this._worked.has(name) ? FALLBACK_AFTER_FAILURES : 1;
        if (this._unavailable.has(name) || this._strikes >= limit) {
          this._strikes = 0;
          const next = this._firstAvailable((this._transportIndex + 1) % transports.length);
          if (next < 0) {
            this._giveUp("no_transport", "no usable transport among " + transports.join(", "), true);
            return;
          }
          this._transportIndex = next;
          if (!this._tried.has(transports[next])) {
            this._connect(); // Not tried since the last success: no reason to wait.
            return;
          }
        }
      }

      const policy = this._opts.reconnect;
      if (!policy) {
        this._giveUp(failedBeforeOpen ? "connect_failed" : null, "could not connect", failedBeforeOpen);
        return;
      }
      let delay;
      if (this._announcedDelay !== null) {
        // The server said when to come back (shutdown): no backoff on top.
        delay = this._announcedDelay;
        this._announcedDelay = null;
      } else {
        if (this._attempt >= policy.maxRetries) {
          this._giveUp("reconnect_failed", "gave up after " + this._attempt + " attempts", failedBeforeOpen);
          return;
        }
        // Full jitter, drawn anew for every attempt.
        const cap = Math.min(policy.maxDelay, policy.initialDelay * Math.pow(2, this._attempt));
        delay = Math.floor(this._random() * cap);
        this._attempt += 1;
      }
      this.readyState = CONNECTING;
      this._reconnectTimer = this._timers.set(() => this._connect(), delay);
      this._emit("reconnecting", {attempt: this._attempt, delay: delay, transport: transports[this._transportIndex]});
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
      timers.clear(this._heartbeatTimer);
      timers.clear(this._staleTimer);
      if (this._resume) {
        timers.clear(this._resume.timer);
      }
      this._handshakeTimer = this._stableTimer = this._heartbeatTimer = this._staleTimer = null;
      this._resume = null;
      this._liveness = false;
    }

    // Liveness (WebSocket) -------------------------------------------------

    _startLiveness(conn) {
      if (conn.name === "websocket" && this._opts.heartbeatInterval > 0) {
        this._liveness = true;
        this._touch(conn);
      }
    }

    /** Traffic arrived: the connection is alive. */
    _touch(conn) {
      if (conn !== this._conn || !this._liveness) {
        return;
      }
      this._timers.clear(this._staleTimer);
      this._staleTimer = null;
      this._timers.clear(this._heartbeatTimer);
      this._heartbeatTimer = this._timers.set(() => {
        this._heartbeatTimer = null;
        this._probe();
      }, this._opts.heartbeatInterval);
    }

    /** Ping, and declare the connection dead if nothing comes back in time. */
    _probe() {
      const conn = this._conn;
      if (!conn || !this._liveness || this.readyState !== OPEN) {
        return;
      }
      this._control({type: "ping"});
      if (this._staleTimer === null) {
        this._staleTimer = this._timers.timeout(() => {
          this._staleTimer = null;
          this._lost(conn, {code: 1006, reason: "stale connection", wasClean: false});
        }, this._opts.staleTimeout);
      }
    }

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
      if (typeof envelope.pos === "number" && !UNPOSITIONED_TYPES.has(envelope.type)) {
        const resume = this._resume;
        if (resume && resume.connectedAt !== null && envelope.pos > resume.connectedAt) {
          resume.held.push(envelope);
          return;
        }
        this._deliverPositioned(envelope);
        return;
      }
      this._dispatch(envelope);
    }

    _deliverPositioned(envelope) {
      if (this._lastPos !== null && envelope.pos <= this._lastPos) {
        return; // Already delivered (a replay overlapping live traffic).
      }
      this._lastPos = envelope.pos;
      this._dispatch(envelope);
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
      const resume = this._resume;
      this._resume = null;
      if (resume) {
        this._timers.clear(resume.timer);
      }
      const conn = this._conn;
      this._emit("recovery", {recovered: recovered});
      if (envelope) {
        this._emit("resumed", envelope.data, envelope);
      }
      if (resume) {
        resume.held.sort(function (a, b) { return a.pos - b.pos; });
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
     *
     * @param {string} type
     * @param {*} [data]
     * @returns {Client}
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
     *
     * @param {string} type
     * @param {*} [data]
     * @param {{timeout: number}} [options]
     * @returns {Promise<*>}
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
          this._buffer = this._buffer.filter(function (envelope) { return envelope.id !== id; });
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
      const max = Math.max(0, this._opts.maxBufferedSends);
      while (this._buffer.length > max) {
        const dropped = this._buffer.shift();
        if (dropped.id !== undefined) {
          this._settle(dropped.id, appError("buffer_overflow", "dropped from the full offline send buffer"));
        }
        this._emit("error", {
          code: "buffer_overflow",
          message: "the offline send buffer holds " + max + " messages; the oldest was dropped",
          envelope: dropped,
        });
      }
    }

    // Channels and rooms -----------------------------------------------------

    /**
     * Receive the channel's `message` envelopes, now and after every reconnect.
     *
     * @param {string} channel
     * @returns {Client}
     */
    subscribe(channel) {
      requireName(channel, "the channel");
      if (!this._channels.has(channel)) {
        this._channels.add(channel);
        this._controlIfOpen({type: "subscribe", data: {channel: channel}});
      }
      return this;
    }

    /**
     * @param {string} channel
     * @returns {Client}
     */
    unsubscribe(channel) {
      if (this._channels.delete(channel)) {
        this._controlIfOpen({type: "unsubscribe", data: {channel: channel}});
      }
      return this;
    }

    /**
     * Publish `data` on a channel (if the application lets clients publish there).
     *
     * @param {string} channel
     * @param {*} data
     * @returns {Client}
     */
    publish(channel, data) {
      requireName(channel, "the channel");
      return this.send("publish", {channel: channel, data: data});
    }

    /**
     * Enter a room under a display name; kept across reconnects.
     *
     * @param {string} room
     * @param {string} username
     * @returns {Client}
     */
    join(room, username) {
      requireName(room, "the room");
      requireName(username, "the username");
      if (this._rooms.get(room) !== username) {
        this._rooms.set(room, username);
        this._controlIfOpen({type: "join", data: {room: room, username: username}});
      }
      return this;
    }

    /**
     * @param {string} room
     * @returns {Client}
     */
    leave(room) {
      if (this._rooms.delete(room)) {
        this._controlIfOpen({type: "leave", data: {room: room}});
      }
      return this;
    }

    /**
     * The usernames in a room.
     *
     * @param {string} room
     * @returns {Promise<string[]>}
     */
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

    /**
     * The server's connection counts, by JSONP (works cross-port without CORS).
     *
     * @param {string} [room] also count this room's members (`room_count`)
     * @returns {Promise<{client_count: number, time: string, websocket: number, ajax: number}>}
     */
    clientCount(room) {
      const url = withQuery(this.ajaxUrl + "/get_client_count", {room: room});
      return this._http.jsonp(url, this._opts.ajaxTimeout);
    }

    // Polling-refresh mode ---------------------------------------------------

    _startReloading() {
      const run = this._reloadRun = {};
      const interval = this._opts.reloadInterval * 1000;
      const current = () => this._reloadRun === run;
      const tick = () => {
        this._reloadTimer = null;
        if (!current()) {
          return;
        }
        const request = this._reloadRequest = this._http.get(this._reloadUrl, this._opts.ajaxTimeout);
        request.then((result) => {
          if (current() && this.readyState !== OPEN) {
            this.readyState = OPEN;
            this._emit("open", {transport: null, clientId: null, resumed: false});
          }
          if (current()) {
            this._emit("reload", result);
          }
        }, (error) => {
          if (!current()) {
            return;
          }
          const wasOpen = this.readyState === OPEN;
          this.readyState = CONNECTING;
          if (wasOpen) {
            this._emit("close", {code: 1006, reason: error.code, wasClean: false, willReconnect: true});
          }
          if (current()) {
            this._emit("error", {code: error.code, message: error.message});
          }
        }).then(() => {
          if (current()) {
            this._reloadTimer = this._timers.set(tick, interval);
          }
        });
      };
      tick();
    }

    _stopReloading() {
      this._reloadRun = null;
      this._timers.clear(this._reloadTimer);
      this._reloadTimer = null;
      if (this._reloadRequest) {
        this._reloadRequest.abort();
        this._reloadRequest = null;
      }
    }
  }

  Object.assign(Client, {CONNECTING: CONNECTING, OPEN: OPEN, CLOSING: CLOSING, CLOSED: CLOSED});
  Object.assign(Client.prototype, {CONNECTING: CONNECTING, OPEN: OPEN, CLOSING: CLOSING, CLOSED: CLOSED});

  const AppServer = {
    Client: Client,
    /**
     * Create a client (connecting at once unless `autoConnect: false`).
     *
     * @param {ClientOptions} [options]
     * @returns {Client}
     */
    connect: function (options) {
      return new Client(options);
    },
    CONNECTING: CONNECTING,
    OPEN: OPEN,
    CLOSING: CLOSING,
    CLOSED: CLOSED,
    /** JSONP callbacks in flight (internal, but named in request URLs). */
    _jsonp: jsonpCallbacks,
  };

  return AppServer;
}));
