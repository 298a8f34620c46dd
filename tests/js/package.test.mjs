// The npm package as a front-end project gets it: `npm pack` in js/, then
// `npm install <tarball>` into a fresh project (offline: the package has no
// dependencies), then `import` and `require` in Node, with no browser
// global touched at import time, and the types found through `exports`.

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

import { JS_DIR, needs, run, tool } from "./tools.mjs";

const pkg = JSON.parse(readFileSync(path.join(JS_DIR, "package.json"), "utf8"));
let project;
let packed;

/** npm with no network, no audit, and a cache of its own (nothing else is fetched). */
function npm(args, cwd) {
  return run("npm", [...args, "--offline", "--no-audit", "--no-fund", "--cache", path.join(project, ".npm")], { cwd });
}

before(() => {
  project = mkdtempSync(path.join(tmpdir(), "appserver-client-"));
  packed = JSON.parse(npm(["pack", "--json", "--pack-destination", project], JS_DIR).stdout)[0];
  writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "consumer", private: true }));
  npm(["install", path.join(project, packed.filename)], project);
});

after(() => {
  if (project) {
    rmSync(project, { recursive: true, force: true });
  }
});

/** Run `source` with node in the project; returns the JSON lines it printed, parsed. */
function node(args, source) {
  const { stdout } = run(process.execPath, [...args, source], { cwd: project, timeout: 20000 });
  return stdout.trim().split("\n").map((line) => JSON.parse(line));
}

// Browser globals an import must not read: each is a getter that records the read.
const WATCH = `
  const touched = [];
  for (const name of ["window", "self", "document", "location", "navigator", "WebSocket", "fetch",
                      "jQuery", "$", "AppServer", "AppServerConfig", "setTimeout", "clearTimeout"]) {
    const had = Object.getOwnPropertyDescriptor(globalThis, name);
    Object.defineProperty(globalThis, name, {
      configurable: true,
      get() { touched.push(name); return had && ("value" in had ? had.value : had.get.call(globalThis)); },
    });
  }
`;
const REPORT = `
  const seen = touched.slice();
  const client = lib.connect({ autoConnect: false, url: "ws://h:1/", ajaxUrl: "http://h:2/" });
  console.log(JSON.stringify({
    touched: seen,
    connect: typeof lib.connect,
    isClient: client instanceof lib.Client,
    readyState: client.readyState,
    closed: lib.CLOSED,
    ajaxUrl: client.ajaxUrl,
    defaultConnect: typeof lib.default.connect,
  }));
`;
const EXPECTED = {
  touched: [], connect: "function", isClient: true, readyState: 3, closed: 3, ajaxUrl: "http://h:2",
  defaultConnect: "function",
};

test("the tarball holds the sources, the builds and the types, and nothing else", () => {
  const files = packed.files.map((file) => file.path).sort();
  assert.equal(packed.name, pkg.name);
  for (const file of ["package.json", "README.md", "appserver.js", "appserver.cjs", "appserver.d.ts",
    "appserver.d.cts", "src/index.js", "src/client.js", "src/transports/websocket.js"]) {
    assert.ok(files.includes(file), `${file} is missing from the tarball`);
  }
  assert.deepEqual(files.filter((file) => !/^(src\/.*\.js|[^/]+)$/.test(file)), []);
  assert.deepEqual(files.filter((file) => /node_modules|build\.mjs|package-lock/.test(file)), []);
});

test("import { connect } from the package works in Node, touching no browser global", () => {
  const source = `${WATCH} const lib = await import("${pkg.name}"); ${REPORT}
    console.log(JSON.stringify(import.meta.resolve ? import.meta.resolve("${pkg.name}") : null));`;
  const [report, entry] = node(["--input-type=module", "-e"], source);
  assert.deepEqual(report, EXPECTED);
  if (entry !== null) { // import.meta.resolve: Node 20 and later
    assert.match(entry, /\/node_modules\/appserver-client\/src\/index\.js$/);
  }
});

test("require(the package).connect works in Node, touching no browser global", () => {
  const source = `${WATCH} const lib = require("${pkg.name}"); ${REPORT}
    console.log(JSON.stringify(require.resolve("${pkg.name}")));`;
  const [report, entry] = node(["--input-type=commonjs", "-e"], source);
  assert.deepEqual(report, EXPECTED);
  assert.match(entry, /\/node_modules\/appserver-client\/appserver\.cjs$/);
});

test("TypeScript finds the types through exports, for import and require, without the DOM library", (t) => {
  const tsc = tool("tsc");
  if (!needs(t, "typescript", tsc)) {
    return;
  }
  writeFileSync(path.join(project, "esm.mts"), `
    import AppServer, { connect, Client, type ClientOptions } from "${pkg.name}";
    const options: ClientOptions = { autoConnect: false, transports: ["ajax"] };
    const client: Client = connect(options);
    client.on("chat", (text) => text.toUpperCase()).close();
    export const state: 0 | 1 | 2 | 3 = AppServer.connect().readyState;
  `);
  writeFileSync(path.join(project, "cjs.cts"), `
    import lib = require("${pkg.name}");
    const client: lib.Client = lib.connect({ autoConnect: false });
    client.members("lobby").then((names: string[]) => names.length);
    export const closed: 3 = lib.CLOSED;
  `);
  writeFileSync(path.join(project, "tsconfig.json"), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, module: "nodenext", moduleResolution: "nodenext", target: "es2022",
      lib: ["es2022"], types: [],
    },
    files: ["esm.mts", "cjs.cts"],
  }));
  run(tsc, ["--strict", "--noEmit", "-p", project], { cwd: project });
});
