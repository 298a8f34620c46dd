// What the packaging tests share: where js/ is, and the npm-installed tools
// (rollup, tsc) that `npm ci --prefix js` puts in js/node_modules.
//
// `node --test tests/js/` on a checkout without js/node_modules skips the
// tests that need those tools, saying so; `make test-js` installs them and
// sets JS_TOOLS_REQUIRED=1, which turns every such skip into a failure.

import { existsSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

export const JS_DIR = fileURLToPath(new URL("../../js/", import.meta.url));
export const TESTS_DIR = fileURLToPath(new URL(".", import.meta.url));

/** The path of an installed tool (`rollup`, `tsc`), or null. */
export function tool(name) {
  const file = path.join(JS_DIR, "node_modules", ".bin", name);
  return existsSync(file) ? file : null;
}

/**
 * Skip `t` when `what` is missing, unless JS_TOOLS_REQUIRED is set: then the
 * test fails. Returns true when the test may go on.
 */
export function needs(t, what, present) {
  if (present) {
    return true;
  }
  const message = `${what} is not installed: run \`npm ci --prefix js\` (make test-js does)`;
  if (process.env.JS_TOOLS_REQUIRED) {
    throw new Error(message);
  }
  t.skip(message);
  return false;
}

/** Run a command to completion within `timeout` ms; returns spawnSync's result, throwing on failure. */
export function run(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: "utf8", timeout: 60000, ...options });
  if (result.error) {
    throw result.error;
  }
  if (result.status !== 0) {
    throw new Error(`${command} ${args.join(" ")} exited with ${result.status}:\n${result.stdout}\n${result.stderr}`);
  }
  return result;
}
