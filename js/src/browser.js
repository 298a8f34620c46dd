/**
 * The entry of the plain-script build (js/appserver.js): the bundler wraps
 * it so that a `<script>` tag defines `window.AppServer` and nothing else,
 * while CommonJS and AMD loaders get the same object as the module value.
 * When jQuery is on the page, `$.appserver(options)` creates a client too.
 */
import AppServer from "./index.js";

const jQuery = globalThis.jQuery;
if (typeof jQuery === "function" && !jQuery.appserver) {
  jQuery.appserver = function (options) { return AppServer.connect(options); };
}

export default AppServer;
