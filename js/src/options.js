/**
 * The client's options: defaults, checks, and the URLs derived from
 * `window.AppServerConfig` or the page's location. Globals are read when a
 * client is made, never when the module loads.
 */
import {TRANSPORTS} from "./constants.js";
import {DEFAULT_RECONNECT} from "./backoff.js";
import {resolveUrl} from "./urls.js";

export const DEFAULTS = Object.freeze({
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
export function resolveOptions(options) {
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
