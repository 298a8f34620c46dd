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
import {CONNECTING, OPEN, CLOSING, CLOSED} from "./constants.js";
import {Client} from "./client.js";
import {jsonpCallbacks} from "./jsonp.js";

export {Client, CONNECTING, OPEN, CLOSING, CLOSED};

/**
 * Create a client (connecting at once unless `autoConnect: false`); the
 * same as `new Client(options)`.
 *
 * @param {import("./client.js").ClientOptions} [options]
 * @returns {Client}
 */
export function connect(options) {
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

export default AppServer;
