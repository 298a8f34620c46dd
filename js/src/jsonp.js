/**
 * JSONP: a script tag whose answer calls a named function. It works across
 * origins without CORS, on browsers and networks where fetch cannot.
 */
import {appError} from "./errors.js";
import {withQuery, withoutQuery} from "./urls.js";

/**
 * Callbacks of JSONP requests in flight. The plain-script build exposes this
 * table as `AppServer._jsonp`, so a page gets no global besides `AppServer`.
 */
export const jsonpCallbacks = Object.create(null);

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
export function loadJsonp(doc, timers, url, timeoutMs) {
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
