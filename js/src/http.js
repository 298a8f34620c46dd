/**
 * The HTTP side of a client: JSON over fetch (CORS) or JSONP, per `ajaxMode`.
 * Every method returns a promise with an `abort()` method.
 */
import {ajaxError, appError} from "./errors.js";
import {loadJsonp} from "./jsonp.js";
import {withQuery} from "./urls.js";

/**
 * The request header that carries an Ajax session's secret on JSON requests
 * (JSONP requests, which cannot set headers, carry it as `session=`).
 */
export const SESSION_HEADER = "X-AppServer-Session";
/** The poll cursor of a JSON request (JSONP sends `since=` in the query). */
export const SINCE_HEADER = "X-AppServer-Since";

function noop() {}

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

export class Http {
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
      return withAbort(Promise.reject(appError("unsupported", "no fetch() in this browser")), {abort: noop});
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
