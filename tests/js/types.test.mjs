// js/appserver.d.ts, the hand-written declarations of the client: checked
// by the TypeScript compiler against an example that uses every documented
// part of the API (types-example.ts), and compared with what the modules
// really export, so neither can drift from the other unnoticed.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";

import * as api from "../../js/src/index.js";
import { JS_DIR, TESTS_DIR, needs, run, tool } from "./tools.mjs";

const declarations = readFileSync(path.join(JS_DIR, "appserver.d.ts"), "utf8");

/** The members a `declare class Client { ... }` body declares. */
function declaredClientMembers() {
  const body = declarations.match(/export declare class Client \{([\s\S]*?)\n\}/)[1];
  const members = new Set();
  for (const match of body.matchAll(/^ {2}(?:static )?(?:readonly )?([A-Za-z_$][\w$]*)[<(?:]/gm)) {
    members.add(match[1]);
  }
  return members;
}

test("tsc --strict accepts the example that uses the whole documented API", (t) => {
  const tsc = tool("tsc");
  if (!needs(t, "typescript", tsc)) {
    return;
  }
  run(tsc, ["--strict", "--noEmit", "-p", TESTS_DIR], { cwd: TESTS_DIR });
});

test("the declarations name exactly the module's exports", () => {
  const declared = new Set();
  for (const match of declarations.matchAll(/^export declare (?:class|function|const) ([A-Za-z_$][\w$]*)/gm)) {
    declared.add(match[1]);
  }
  if (/^export default /m.test(declarations)) {
    declared.add("default");
  }
  assert.deepEqual([...declared].sort(), Object.keys(api).sort());
});

test("the declared Client has every public method and property of the real one, and no other", () => {
  const client = new api.Client({ autoConnect: false, url: "ws://h:1/", ajaxUrl: "http://h:2" });
  const methods = [];
  for (let proto = api.Client.prototype; proto !== Object.prototype; proto = Object.getPrototypeOf(proto)) {
    methods.push(...Object.getOwnPropertyNames(proto));
  }
  const real = new Set([
    ...methods,
    ...Object.keys(client),
    ...Object.keys(api.Client),
  ].filter((name) => !name.startsWith("_")));
  assert.deepEqual([...declaredClientMembers()].sort(), [...real].sort());
});

test("the declared AppServer object has the real default export's public keys", () => {
  const body = declarations.match(/export interface AppServerStatic \{([\s\S]*?)\n\}/)[1];
  const declared = [...body.matchAll(/^ {2}(?:readonly )?([A-Za-z_$][\w$]*):/gm)].map((match) => match[1]);
  assert.deepEqual(declared.sort(), Object.keys(api.default).filter((name) => !name.startsWith("_")).sort());
});

test("the CommonJS declarations are the same as the ES module ones", () => {
  const cjs = readFileSync(path.join(JS_DIR, "appserver.d.cts"), "utf8");
  assert.equal(cjs.slice(cjs.indexOf("\n") + 1), declarations);
});
