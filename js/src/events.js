/**
 * Handlers by event name, for the client's envelopes and lifecycle events.
 * Like a DOM EventTarget, a handler that throws stops neither the other
 * handlers nor the client: its error is reported and the dispatch goes on.
 */

/** Report a handler's exception the way the page reports uncaught ones. */
export function reportHandlerError(error) {
  const root = globalThis;
  if (typeof root.reportError === "function") {
    root.reportError(error);
  } else if (root.console && typeof root.console.error === "function") {
    root.console.error(error);
  }
}

/** A name for something the caller must give: a non-empty string. */
export function requireName(value, what) {
  if (typeof value !== "string" || !value) {
    throw new TypeError(what + " must be a non-empty string");
  }
}

export class Emitter {
  constructor() {
    this._handlers = Object.create(null);
  }

  /**
   * Call `handler` for every envelope of `type` (with `(data, envelope)`),
   * or for a lifecycle event: open, close, error, reconnecting, recovery,
   * transport, reload.
   */
  on(type, handler) {
    return this._addHandler(type, handler, false);
  }

  /** Like `on`, for the next event only. */
  once(type, handler) {
    return this._addHandler(type, handler, true);
  }

  /** Remove `handler` from `type`, or every handler of `type` when none is given. */
  off(type, handler) {
    const list = this._handlers[type];
    if (list) {
      if (handler === undefined) {
        delete this._handlers[type];
      } else {
        this._handlers[type] = list.filter(function (entry) { return entry.fn !== handler; });
      }
    }
    return this;
  }

  _addHandler(type, handler, once) {
    requireName(type, "the event type");
    if (typeof handler !== "function") {
      throw new TypeError("the handler must be a function");
    }
    (this._handlers[type] = this._handlers[type] || []).push({fn: handler, once: once});
    return this;
  }

  /**
   * Run the handlers of `type` registered when the event starts, skipping
   * those an earlier handler removed; each runs with `this` the emitter.
   */
  _emit(type, data, envelope) {
    const list = this._handlers[type];
    if (!list || !list.length) {
      return;
    }
    for (const entry of list.slice()) {
      const current = this._handlers[type];
      if (!current || current.indexOf(entry) < 0) {
        continue; // Removed by an earlier handler of this same event.
      }
      if (entry.once) {
        this._handlers[type] = current.filter(function (other) { return other !== entry; });
      }
      try {
        entry.fn.call(this, data, envelope);
      } catch (error) {
        reportHandlerError(error);
      }
    }
  }
}
