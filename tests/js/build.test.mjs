// The generated files in js/ (the plain script, the CommonJS entry and the
// CommonJS declarations) must be what js/src builds to: the plain script is
// what the server ships and what the Chromium tests load, so a source
// change without a rebuild would go untested and unshipped.

import { test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";

import { JS_DIR, needs, run, tool } from "./tools.mjs";

test("the committed build is what js/src builds to", (t) => {
  if (!needs(t, "rollup", tool("rollup"))) {
    return;
  }
  const result = run(process.execPath, [path.join(JS_DIR, "build.mjs"), "--check"], { cwd: JS_DIR });
  assert.match(result.stdout, /up to date/);
});
