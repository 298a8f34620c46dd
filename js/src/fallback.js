/**
 * Which transport to try next. The client moves on to the next transport
 * at once when one does not exist or fails before opening; once a transport
 * has worked, reconnects stay on it until it fails
 * FALLBACK_AFTER_FAILURES times in a row without opening.
 */

/** Failures without ever opening before leaving a transport that once worked. */
export const FALLBACK_AFTER_FAILURES = 3;

export class TransportChoice {
  /** @param {string[]} names the transports to try, in order */
  constructor(names) {
    this.names = names;
    /** Index in `names` of the transport tried last (or to try next). */
    this.index = 0;
    this._strikes = 0;
    this._worked = new Set();
    this._tried = new Set();
    this._unavailable = new Set();
  }

  /** The transport at `index`. */
  get current() {
    return this.names[this.index];
  }

  /** Start again from the first transport (the page called open()). */
  restart() {
    this.index = 0;
    this._strikes = 0;
    this._tried.clear();
  }

  /** The transport to try now, marked as tried; null when none is usable. */
  pick() {
    const index = this._firstAvailable(this.index);
    if (index < 0) {
      return null;
    }
    this.index = index;
    this._tried.add(this.names[index]);
    return this.names[index];
  }

  /** This browser lacks `name` (no WebSocket): never try it again. */
  markUnavailable(name) {
    this._unavailable.add(name);
  }

  /** `name` opened: stay on it. */
  markOpened(name) {
    this._worked.add(name);
    this._tried.clear();
    this._strikes = 0;
  }

  /**
   * The current transport failed before opening. Returns `"next"` to try
   * the next transport at once (it was not tried since the last success),
   * `"wait"` to try again after a backoff delay, or `"none"` when no
   * transport is usable.
   */
  failedBeforeOpen() {
    const name = this.names[this.index];
    this._strikes += 1;
    const limit = this._worked.has(name) ? FALLBACK_AFTER_FAILURES : 1;
    if (this._unavailable.has(name) || this._strikes >= limit) {
      this._strikes = 0;
      const next = this._firstAvailable((this.index + 1) % this.names.length);
      if (next < 0) {
        return "none";
      }
      this.index = next;
      if (!this._tried.has(this.names[next])) {
        return "next";
      }
    }
    return "wait";
  }

  _firstAvailable(from) {
    const names = this.names;
    for (let i = 0; i < names.length; i++) {
      const index = (from + i) % names.length;
      if (!this._unavailable.has(names[index])) {
        return index;
      }
    }
    return -1;
  }
}
