/*!
 * appserver-client 0.1.0: the CommonJS entry of the npm package.
 * Generated from js/src/ by js/build.mjs (rollup): do not edit; edit the
 * sources and run `make js-build`. API: docs/client.md; wire protocol: docs/protocol.md.
 */
'use strict';

Object.defineProperties(exports, { __esModule: { value: true }, [Symbol.toStringTag]: { value: 'Module' } });

/**
 * The client's `readyState` values: the numbers a WebSocket uses, so a page
 * can treat a client like one.
 */
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

/** The transports a client knows, in their default order of preference. */
const TRANSPORTS = Object.freeze(["websocket", "sse", "ajax"]);

/**
 * The errors the client rejects promises with and reports in `error`
 * events: plain Errors with a protocol-style `code` (docs/protocol.md,
 * "Error codes"), so an application switches on `error.code`.
 */

/** An Error with a `code`, and any `extra` fields copied onto it. */
function appError(code, message, extra) {
  const error = new Error(message || code);
  error.code = code;
  if (extra) {
    Object.assign(error, extra);
  }
  return error;
}

/**
 * An error answer of the Ajax site, with its HTTP `status`. `sessionLost`
 * means the session is gone (expired, or the secret is unknown): connect again.
 */
function ajaxError(code, message, status) {
  const error = appError(code, message, {status: status});
  error.sessionLost = status === 410 || code === "unknown_session";
  return error;
}

/**
 * Handlers by event name, for the client's envelopes and lifecycle events.
 * Like a DOM EventTarget, a handler that throws stops neither the other
 * handlers nor the client: its error is reported and the dispatch goes on.
 */

/** Report a handler's exception the way the page reports uncaught ones. */
function reportHandlerError(error) {
  const root = globalThis;
  if (typeof root.reportError === "function") {
    root.reportError(error);
  } else if (root.console && typeof root.console.error === "function") {
    root.console.error(error);
  }
}

/** A name for something the caller must give: a non-empty string. */
function requireName(value, what) {
  if (typeof value !== "string" || !value) {
    throw new TypeError(what + " must be a non-empty string");
  }
}

class Emitter {
  constructor() {
    this._handlers = Object.create(null);
  }

  /**
   * Call `handler` for every envelope of `type` (with `(data, envelope)`),
   * or for a lifecycle event: open, close, error, reconnecting, recovery,
   * transport, reload.
   */
  on(type, handler) {
    return this._addHandler(type, handler, false);
  }

  /** Like `on`, for the next event only. */
  once(type, handler) {
    return this._addHandler(type, handler, true);
  }

  /** Remove `handler` from `type`, or every handler of `type` when none is given. */
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

  /**
   * Run the handlers of `type` registered when the event starts, skipping
   * those an earlier handler removed; each runs with `this` the emitter.
   */
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
}

/**
 * Reconnect delays: exponential, capped, with "full jitter" drawn anew for
 * every attempt, so that thousands of clients dropped at once by a server
 * restart do not come back at the same instant.
 */

/** A connection that stayed open this long resets the attempt counter. */
const STABLE_AFTER_MS = 5000;

const DEFAULT_RECONNECT = Object.freeze({initialDelay: 500, maxDelay: 10000, maxRetries: Infinity});

class Backoff {
  /**
   * @param {{initialDelay: number, maxDelay: number, maxRetries: number}|false} policy
   *   `false`: the client never reconnects, and this only counts.
   * @param {function(): number} random a source in [0, 1)
   */
  constructor(policy, random) {
    this.policy = policy;
    this._random = random;
    /** Delays drawn since the last stable connection. */
    this.attempt = 0;
  }

  /** Whether `maxRetries` delays were drawn already. */
  get exhausted() {
    return !this.policy || this.attempt >= this.policy.maxRetries;
  }

  /** The delay before the next attempt: random in [0, min(maxDelay, initialDelay * 2^attempt)). */
  next() {
    const policy = this.policy;
    const cap = Math.min(policy.maxDelay, policy.initialDelay * Math.pow(2, this.attempt));
    this.attempt += 1;
    return Math.floor(this._random() * cap);
  }

  /** Start counting again (a connection stayed up, or the page called open()). */
  reset() {
    this.attempt = 0;
  }
}

/**
 * Which transport to try next. The client moves on to the next transport
 * at once when one does not exist or fails before opening; once a transport
 * has worked, reconnects stay on it until it fails
 * FALLBACK_AFTER_FAILURES times in a row without opening.
 */

/** Failures without ever opening before leaving a transport that once worked. */
const FALLBACK_AFTER_FAILURES = 3;

class TransportChoice {
  /** @param {string[]} names the transports to try, in order */
  constructor(names) {
    this.names = names;
    /** Index in `names` of the transport tried last (or to try next). */
    this.index = 0;
    this._strikes = 0;
    this._worked = new Set();
    this._tried = new Set();
    this._unavailable = new Set();
  }

  /** The transport at `index`. */
  get current() {
    return this.names[this.index];
  }

  /** Start again from the first transport (the page called open()). */
  restart() {
    this.index = 0;
    this._strikes = 0;
    this._tried.clear();
  }

  /** The transport to try now, marked as tried; null when none is usable. */
  pick() {
    const index = this._firstAvailable(this.index);
    if (index < 0) {
      return null;
    }
    this.index = index;
    this._tried.add(this.names[index]);
    return this.names[index];
  }

  /** This browser lacks `name` (no WebSocket): never try it again. */
  markUnavailable(name) {
    this._unavailable.add(name);
  }

  /** `name` opened: stay on it. */
  markOpened(name) {
    this._worked.add(name);
    this._tried.clear();
    this._strikes = 0;
  }

  /**
   * The current transport failed before opening. Returns `"next"` to try
   * the next transport at once (it was not tried since the last success),
   * `"wait"` to try again after a backoff delay, or `"none"` when no
   * transport is usable.
   */
  failedBeforeOpen() {
    const name = this.names[this.index];
    this._strikes += 1;
    const limit = this._worked.has(name) ? FALLBACK_AFTER_FAILURES : 1;
    if (this._unavailable.has(name) || this._strikes >= limit) {
      this._strikes = 0;
      const next = this._firstAvailable((this.index + 1) % this.names.length);
      if (next < 0) {
        return "none";
      }
      this.index = next;
      if (!this._tried.has(this.names[next])) {
        return "next";
      }
    }
    return "wait";
  }

  _firstAvailable(from) {
    const names = this.names;
    for (let i = 0; i < names.length; i++) {
      const index = (from + i) % names.length;
      if (!this._unavailable.has(names[index])) {
        return index;
      }
    }
    return -1;
  }
}

/** The few URL manipulations the client needs, without `URL` (old browsers, odd bases). */

/** `url` with `params` appended as a query; `undefined` and `null` values are left out. */
function withQuery(url, params) {
  const parts = [];
  Object.keys(params || {}).forEach(function (key) {
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

/** An absolute URL as is; a path, relative to `base`. */
function resolveUrl(url, base) {
  if (/^[a-z][a-z0-9+.-]*:|^\/\//i.test(url)) {
    return url;
  }
  return base + (url.charAt(0) === "/" ? "" : "/") + url;
}

/**
 * JSONP: a script tag whose answer calls a named function. It works across
 * origins without CORS, on browsers and networks where fetch cannot.
 */

/**
 * Callbacks of JSONP requests in flight. The plain-script build exposes this
 * table as `AppServer._jsonp`, so a page gets no global besides `AppServer`.
 */
const jsonpCallbacks = Object.create(null);

const jsonpPrefix = "appserver" + String(Math.random()).replace(/\D/g, "").slice(0, 12);
let jsonpNonce = Date.now();

/** Whether the page global `AppServer` is the object that exposes this table. */
function namespacedOnPage() {
  const page = globalThis.AppServer;
  return !!page && page._jsonp === jsonpCallbacks;
}

/**
 * Register a JSONP callback under a fresh name shaped like jQuery's
 * (`prefix_nonce`). When this module is not reachable as `window.AppServer`
 * (an import, or a CommonJS or AMD load), the callback has to be a global of
 * its own.
 */
function registerCallback(fn) {
  const name = jsonpPrefix + "_" + (jsonpNonce++);
  const namespaced = namespacedOnPage();
  const slots = namespaced ? jsonpCallbacks : globalThis;
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
 * Error messages leave the query out: it may hold the session secret.
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
 * The HTTP side of a client: JSON over fetch (CORS) or JSONP, per `ajaxMode`.
 * Every method returns a promise with an `abort()` method.
 */

/**
 * The request header that carries an Ajax session's secret on JSON requests
 * (JSONP requests, which cannot set headers, carry it as `session=`).
 */
const SESSION_HEADER = "X-AppServer-Session";
/** The poll cursor of a JSON request (JSONP sends `since=` in the query). */
const SINCE_HEADER = "X-AppServer-Since";

function noop$3() {}

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

class Http {
  /**
   * @param {{baseUrl: string, mode: string, fetch: Function|null, document: Object|null, timers: Object}} env
   *   `baseUrl` is the Ajax site, `mode` `"json"` or `"jsonp"`.
   */
  constructor(env) {
    this._baseUrl = env.baseUrl;
    this._mode = env.mode;
    this._fetch = env.fetch;
    this._doc = env.document;
    this._timers = env.timers;
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
    const url = this._baseUrl + "/" + name;
    const hasSession = session !== null && session !== undefined;
    if (this._mode === "jsonp") {
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
    if (this._mode === "jsonp") {
      return this.jsonp(url, timeoutMs);
    }
    return this.fetchJson(url, "GET", undefined, timeoutMs);
  }

  /** GET a URL by JSONP, whatever the mode. */
  jsonp(url, timeoutMs) {
    const request = loadJsonp(this._doc, this._timers, url, timeoutMs);
    return withAbort(request.then(function (value) { return checkAnswer(value, 200); }), request);
  }

  fetchJson(url, method, body, timeoutMs, headers) {
    const timers = this._timers;
    const fetchImpl = this._fetch;
    if (typeof fetchImpl !== "function") {
      return withAbort(Promise.reject(appError("unsupported", "no fetch() in this browser")), {abort: noop$3});
    }
    const controller = new AbortController();
    let failure = null;
    const abort = function (error) {
      failure = failure || error;
      controller.abort();
    };
    const timer = timers.timeout(function () {
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
        timers.clear(timer);
        return value;
      }, function (error) {
        timers.clear(timer);
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

/**
 * Liveness of a WebSocket: a TCP connection can die without either side
 * noticing for minutes. After `interval` ms with no incoming traffic, ping;
 * if still nothing arrives within `staleTimeout` ms, the connection is dead.
 * (On Ajax the long poll itself is the liveness signal.)
 */
class Liveness {
  /**
   * @param {Object} timers
   * @param {number} interval ms of silence before a ping
   * @param {number} staleTimeout ms after a ping before `dead()`
   * @param {{silent: function(): void, ping: function(): void, dead: function(): void}} owner
   *   `silent`: the interval passed with no traffic (the owner decides whether to probe);
   *   `ping`: send a ping; `dead`: no traffic came back in time.
   */
  constructor(timers, interval, staleTimeout, owner) {
    this._timers = timers;
    this._interval = interval;
    this._staleTimeout = staleTimeout;
    this._owner = owner;
    this._heartbeatTimer = null;
    this._staleTimer = null;
  }

  /** Traffic arrived: the connection is alive; ping again after the next silence. */
  touch() {
    const timers = this._timers;
    timers.clear(this._staleTimer);
    this._staleTimer = null;
    timers.clear(this._heartbeatTimer);
    this._heartbeatTimer = timers.set(() => {
      this._heartbeatTimer = null;
      this._owner.silent();
    }, this._interval);
  }

  /** Ping now, and declare the connection dead if nothing comes back in time. */
  probe() {
    this._owner.ping();
    if (this._staleTimer === null) {
      this._staleTimer = this._timers.timeout(() => {
        this._staleTimer = null;
        this._owner.dead();
      }, this._staleTimeout);
    }
  }

  stop() {
    this._timers.clear(this._heartbeatTimer);
    this._timers.clear(this._staleTimer);
    this._heartbeatTimer = this._staleTimer = null;
  }
}

/**
 * The client's options: defaults, checks, and the URLs derived from
 * `window.AppServerConfig` or the page's location. Globals are read when a
 * client is made, never when the module loads.
 */

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

/**
 * Check `options` and fill in the defaults.
 *
 * @returns {{opts: Object, url: string, ajaxUrl: string, reloadUrl: (string|null)}}
 *   `opts.reconnect` is the full policy or `false`; `reloadUrl` is set only
 *   in polling-refresh mode.
 * @throws {TypeError} for unknown transports or Ajax mode
 */
function resolveOptions(options) {
  const root = globalThis;
  const opts = mergeDefined(DEFAULTS, options);
  const config = root.AppServerConfig && typeof root.AppServerConfig === "object" ? root.AppServerConfig : {};
  const location = options.location || root.location || null;
  const secure = !!location && location.protocol === "https:";
  const host = (location && location.hostname) || "localhost";

  const url = options.url || config.wsUrl || (secure ? "wss://" : "ws://") + host + ":9002/";
  const ajaxUrl = String(options.ajaxUrl || config.ajaxUrl || (secure ? "https://" : "http://") + host + ":9001")
    .replace(/\/+$/, "");

  opts.transports = normalizeTransports(opts);
  if (opts.ajaxMode !== "json" && opts.ajaxMode !== "jsonp") {
    throw new TypeError('ajaxMode must be "json" or "jsonp"');
  }
  opts.reconnect = opts.reconnect === false ? false
    : mergeDefined(DEFAULT_RECONNECT, typeof opts.reconnect === "object" && opts.reconnect ? opts.reconnect : {});
  const reloadUrl = opts.reloadInterval > 0 ? resolveUrl(opts.reloadUrl, ajaxUrl) : null;
  return {opts: opts, url: url, ajaxUrl: ajaxUrl, reloadUrl: reloadUrl};
}

/**
 * Recovery positions: the server's epoch, the highest stream position
 * delivered to the application, and, while a resume runs, the live
 * messages held back until the replay of what was missed is done. This is
 * what lets the client deliver every broadcast once and in order across
 * reconnects.
 */

/**
 * Envelopes addressed to this connection alone. Their `pos`, if a server
 * ever adds one, is not a stream position: they are never dropped as
 * duplicates and never move the recovery mark.
 */
const UNPOSITIONED_TYPES = new Set([
  "welcome", "resumed", "reply", "error", "pong", "subscribed", "unsubscribed", "members", "reconnect",
]);

/** Whether `envelope` has a place in the stream (and so may be a duplicate). */
function isPositioned(envelope) {
  return typeof envelope.pos === "number" && !UNPOSITIONED_TYPES.has(envelope.type);
}

class Recovery {
  constructor() {
    this.epoch = null;
    /** The highest position delivered, or null before any. */
    this.lastPos = null;
    /** During a resume: `{connectedAt, held, timer}`. */
    this.resume = null;
  }

  /**
   * A connection was welcomed. Returns whether it resumes an earlier one,
   * with the epoch and position to resume from, and the stream position
   * the new connection starts at.
   */
  welcome(welcome) {
    const resuming = this.epoch !== null;
    const previousEpoch = this.epoch;
    const since = this.lastPos === null ? 0 : this.lastPos;
    const position = typeof welcome.position === "number" ? welcome.position : null;
    if (!resuming || welcome.epoch !== previousEpoch) {
      // A new stream of positions: everything after the current one is new.
      this.lastPos = position;
    }
    if (welcome.epoch !== undefined && welcome.epoch !== null) {
      this.epoch = welcome.epoch;
    }
    return {resuming: resuming, previousEpoch: previousEpoch, since: since, position: position};
  }

  /**
   * Where a new event stream resumes: `EPOCH:POSITION` of the highest
   * position delivered (an event id, docs/protocol.md), or null before any.
   */
  resumeId() {
    return this.epoch === null || this.lastPos === null ? null : this.epoch + ":" + this.lastPos;
  }

  /** Hold live messages after `position` until finishResume(); `timer` is the caller's deadline. */
  startResume(position, timer) {
    this.resume = {connectedAt: position, held: [], timer: timer};
  }

  /** Keep `envelope` for after the replay when it is live traffic; true if held. */
  hold(envelope) {
    const resume = this.resume;
    if (resume && resume.connectedAt !== null && envelope.pos > resume.connectedAt) {
      resume.held.push(envelope);
      return true;
    }
    return false;
  }

  /** Record a positioned envelope as delivered; false for one delivered already. */
  advance(envelope) {
    if (this.lastPos !== null && envelope.pos <= this.lastPos) {
      return false; // A replay overlapping live traffic.
    }
    this.lastPos = envelope.pos;
    return true;
  }

  /** End the resume; returns it (its `held` sorted by position), or null if none ran. */
  finishResume() {
    const resume = this.resume;
    this.resume = null;
    if (resume) {
      resume.held.sort(function (a, b) { return a.pos - b.pos; });
    }
    return resume;
  }
}

/**
 * The offline send buffer: what the page sends while the client is not
 * open waits here, in order, up to a bound. When full, the oldest goes:
 * a page that sends while offline for long must not grow without limit.
 */
class SendBuffer {
  /** @param {number} limit how many envelopes it holds at most (negative counts as 0) */
  constructor(limit) {
    this.limit = Math.max(0, limit);
    this._items = [];
  }

  get length() {
    return this._items.length;
  }

  push(envelope) {
    this._items.push(envelope);
  }

  /** Put envelopes back in front, in their order (sends a lost connection never made). */
  prepend(envelopes) {
    this._items = envelopes.concat(this._items);
  }

  shift() {
    return this._items.shift();
  }

  unshift(envelope) {
    this._items.unshift(envelope);
  }

  /** Forget the request with this id (it was settled before it was sent). */
  removeId(id) {
    this._items = this._items.filter(function (envelope) { return envelope.id !== id; });
  }

  clear() {
    this._items = [];
  }

  /** Drop the oldest envelopes past the bound, calling `dropped(envelope)` for each as it goes. */
  trim(dropped) {
    while (this._items.length > this.limit) {
      dropped(this._items.shift());
    }
  }
}

/**
 * The client's clock: injected `setTimeout`/`clearTimeout` (tests use a
 * fake clock), else the page's own, looked up when used so that importing
 * this module touches no browser global.
 */
function makeTimers(setTimer, clearTimer) {
  return {
    set: function (fn, ms) { return setTimer ? setTimer(fn, ms) : globalThis.setTimeout(fn, ms); },
    /** A deadline: none at all for 0, a negative value or Infinity (a browser would fire at once). */
    timeout: function (fn, ms) { return ms > 0 && ms < 2147483648 ? this.set(fn, ms) : null; },
    clear: function (id) {
      if (id !== null && id !== undefined) {
        if (clearTimer) {
          clearTimer(id);
        } else {
          globalThis.clearTimeout(id);
        }
      }
    },
  };
}

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

function noop$2() {}

class AjaxConnection {
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
        .catch(noop$2);
    }
  }
}

/**
 * Polling-refresh mode (`reloadInterval`): no connection at all, a GET of
 * one URL at once and then every interval, counted from the end of the
 * previous fetch. For pages that must never hold a connection open.
 */
class ReloadLoop {
  /**
   * @param {{http: Object, timers: Object, url: string, intervalMs: number, timeoutMs: number,
   *          loaded: function(*): void, failed: function(Error): void}} settings
   *   `loaded` and `failed` run for each fetch while the loop is running.
   */
  constructor(settings) {
    this._http = settings.http;
    this._timers = settings.timers;
    this._url = settings.url;
    this._intervalMs = settings.intervalMs;
    this._timeoutMs = settings.timeoutMs;
    this._loaded = settings.loaded;
    this._failed = settings.failed;
    this.running = false;
    this._timer = null;
    this._request = null;
  }

  start() {
    this.running = true;
    this._tick();
  }

  _tick() {
    this._timer = null;
    if (!this.running) {
      return;
    }
    const request = this._request = this._http.get(this._url, this._timeoutMs);
    request.then((result) => {
      if (this.running) {
        this._loaded(result);
      }
    }, (error) => {
      if (this.running) {
        this._failed(error);
      }
    }).then(() => {
      if (this.running) {
        this._timer = this._timers.set(() => this._tick(), this._intervalMs);
      }
    });
  }

  stop() {
    this.running = false;
    this._timers.clear(this._timer);
    this._timer = null;
    if (this._request) {
      this._request.abort();
      this._request = null;
    }
  }
}

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

function noop$1() {}

/** EventSource.readyState values. */
const ES_CONNECTING = 0;
const ES_CLOSED = 2;

class SseConnection {
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
      this._http.endpoint("disconnect", session, {}, undefined, this._settings.ajaxTimeout).catch(noop$1);
    }
  }
}

/**
 * The WebSocket transport: frames in and out as envelopes, one per text
 * frame. The first `welcome` ends the handshake; everything else goes to
 * the owner as it comes.
 *
 * Like every transport it reports to its owner (the client) through
 * `_onHandshake(conn, welcome)`, `_onEnvelope(conn, envelope)`,
 * `_lost(conn, info)`, `_touch(conn)` and `_protocolError(conn, code, message)`;
 * the owner ignores a connection that is no longer its current one.
 */

function noop() {}

class WebSocketConnection {
  /**
   * @param {Object} owner the client
   * @param {Function} WebSocketImpl a WebSocket constructor (the browser's, or a test's fake)
   * @param {string} url
   */
  constructor(owner, WebSocketImpl, url) {
    this.name = "websocket";
    this._owner = owner;
    this._welcomed = false;
    const socket = this._socket = new WebSocketImpl(url);
    socket.onmessage = (event) => this._receive(event.data);
    // Every error is followed by a close event: that is where the owner learns.
    socket.onerror = noop;
    socket.onclose = (event) => this._owner._lost(this, {
      code: event.code, reason: event.reason, wasClean: event.wasClean,
    });
  }

  /** Nothing to do: the constructor already opened the socket. */
  start() {}

  _receive(raw) {
    const owner = this._owner;
    owner._touch(this);
    if (typeof raw !== "string") {
      return; // Binary frames are not part of the protocol.
    }
    let envelope;
    try {
      envelope = JSON.parse(raw);
    } catch (error) {
      owner._protocolError(this, "bad_json", "the server sent a frame that is not JSON");
      return;
    }
    if (!this._welcomed && envelope && envelope.type === "welcome") {
      this._welcomed = true;
      owner._onHandshake(this, envelope);
      return;
    }
    owner._onEnvelope(this, envelope);
  }

  /** Send now, or return false when the socket is not open. */
  send(envelope) {
    if (this._socket.readyState !== OPEN) {
      return false;
    }
    this._socket.send(JSON.stringify(envelope));
    return true;
  }

  /** Close quietly: the owner hears nothing more from this socket. */
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
 * The client facade: a connection to an appserver that survives network
 * trouble. It picks a transport and falls back between them, reconnects
 * with backoff, recovers what it missed, buffers sends while offline, and
 * turns envelopes into events.
 *
 * The wire protocol is docs/protocol.md; the API reference is docs/client.md.
 */

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
class Client extends Emitter {
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

/**
 * appserver-client: the browser client of appserver.
 *
 *     import { connect } from "appserver-client";
 *     const client = connect({ url: "wss://rt.example/", ajaxUrl: "https://rt.example:9001" });
 *     client.on("chat", (text) => console.log(text));
 *
 * Importing this module touches no browser global: the page's `WebSocket`,
 * `fetch`, `document`, `location` and timers are looked up when a client is
 * made, unless injected through its options. The plain-script build
 * (js/appserver.js) is this same API as `window.AppServer`.
 */

/**
 * Create a client (connecting at once unless `autoConnect: false`); the
 * same as `new Client(options)`.
 *
 * @param {import("./client.js").ClientOptions} [options]
 * @returns {Client}
 */
function connect(options) {
  return new Client(options);
}

/** The whole API as one object: what a plain `<script>` defines as `window.AppServer`. */
const AppServer = {
  Client: Client,
  connect: connect,
  CONNECTING: CONNECTING,
  OPEN: OPEN,
  CLOSING: CLOSING,
  CLOSED: CLOSED,
  /** JSONP callbacks in flight (internal, but named in request URLs). */
  _jsonp: jsonpCallbacks,
};

exports.CLOSED = CLOSED;
exports.CLOSING = CLOSING;
exports.CONNECTING = CONNECTING;
exports.Client = Client;
exports.OPEN = OPEN;
exports.connect = connect;
exports.default = AppServer;
