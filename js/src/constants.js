/**
 * The client's `readyState` values: the numbers a WebSocket uses, so a page
 * can treat a client like one.
 */
export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSING = 2;
export const CLOSED = 3;

/** The transports a client knows, in their default order of preference. */
export const TRANSPORTS = Object.freeze(["websocket", "sse", "ajax"]);
