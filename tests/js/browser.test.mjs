// js/appserver.js, the plain-script build of js/src, loaded the way a page
// loads it: as a plain <script>, run here in a fresh VM context standing in
// for `window` (and, as before the build existed, by CommonJS and AMD loaders).

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

const SOURCE_PATH = new URL("../../js/appserver.js", import.meta.url);
const source = readFileSync(SOURCE_PATH, "utf8");

function loadAsScript(window) {
  const context = vm.createContext(window);
  const before = new Set(Object.keys(context));
  vm.runInContext(source, context, { filename: "appserver.js" });
  const added = Object.keys(context).filter((key) => !before.has(key));
  return { context, added };
}

test("a plain script defines window.AppServer and no other global", () => {
  const { context, added } = loadAsScript({ console });
  assert.deepEqual(added, ["AppServer"]);
  assert.equal(typeof context.AppServer.connect, "function");
  assert.equal(typeof context.AppServer.Client, "function");
  assert.deepEqual(
    [context.AppServer.CONNECTING, context.AppServer.OPEN, context.AppServer.CLOSING, context.AppServer.CLOSED],
    [0, 1, 2, 3],
  );
});

test("with jQuery on the page, $.appserver(options) returns a client", () => {
  function jQuery() {}
  const { context, added } = loadAsScript({ console, jQuery, $: jQuery });
  assert.deepEqual(added, ["AppServer"]);
  const client = jQuery.appserver({ autoConnect: false, url: "ws://h:1/", ajaxUrl: "http://h:2" });
  assert.ok(client instanceof context.AppServer.Client);
  assert.equal(client.readyState, context.AppServer.CLOSED);
  assert.equal(client.url, "ws://h:1/");
});

test("without options the URLs come from window.AppServerConfig", () => {
  const { context } = loadAsScript({
    console,
    location: { protocol: "http:", hostname: "page.example" },
    AppServerConfig: { wsUrl: "wss://rt.example/", ajaxUrl: "https://rt.example:9001/" },
  });
  const client = context.AppServer.connect({ autoConnect: false });
  assert.equal(client.url, "wss://rt.example/");
  assert.equal(client.ajaxUrl, "https://rt.example:9001");
});

test("under CommonJS the script is the module value and defines no global", () => {
  const module = { exports: {} };
  const { context, added } = loadAsScript({ console, module, exports: module.exports });
  assert.deepEqual(added, []);
  assert.equal(typeof module.exports.connect, "function");
  assert.equal(context.AppServer, undefined);
});

test("under an AMD loader the script defines an anonymous module and no global", () => {
  const defined = [];
  function define(factory) {
    defined.push(factory());
  }
  define.amd = {};
  const { added } = loadAsScript({ console, define });
  assert.deepEqual(added, []);
  assert.equal(defined.length, 1);
  assert.equal(typeof defined[0].Client, "function");
});

test("the client never builds HTML from strings", () => {
  assert.doesNotMatch(source, /innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function/);
});
