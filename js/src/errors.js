/**
 * The errors the client rejects promises with and reports in `error`
 * events: plain Errors with a protocol-style `code` (docs/protocol.md,
 * "Error codes"), so an application switches on `error.code`.
 */

/** An Error with a `code`, and any `extra` fields copied onto it. */
export function appError(code, message, extra) {
  const error = new Error(message || code);
  error.code = code;
  if (extra) {
    Object.assign(error, extra);
  }
  return error;
}

/**
 * An error answer of the Ajax site, with its HTTP `status`. `sessionLost`
 * means the session is gone (expired, or the secret is unknown): connect again.
 */
export function ajaxError(code, message, status) {
  const error = appError(code, message, {status: status});
  error.sessionLost = status === 410 || code === "unknown_session";
  return error;
}
