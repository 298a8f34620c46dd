/**
 * Reconnect delays: exponential, capped, with "full jitter" drawn anew for
 * every attempt, so that thousands of clients dropped at once by a server
 * restart do not come back at the same instant.
 */

/** A connection that stayed open this long resets the attempt counter. */
export const STABLE_AFTER_MS = 5000;

export const DEFAULT_RECONNECT = Object.freeze({initialDelay: 500, maxDelay: 10000, maxRetries: Infinity});

export class Backoff {
  /**
   * @param {{initialDelay: number, maxDelay: number, maxRetries: number}|false} policy
   *   `false`: the client never reconnects, and this only counts.
   * @param {function(): number} random a source in [0, 1)
   */
  constructor(policy, random) {
    this.policy = policy;
    this._random = random;
    /** Delays drawn since the last stable connection. */
    this.attempt = 0;
  }

  /** Whether `maxRetries` delays were drawn already. */
  get exhausted() {
    return !this.policy || this.attempt >= this.policy.maxRetries;
  }

  /** The delay before the next attempt: random in [0, min(maxDelay, initialDelay * 2^attempt)). */
  next() {
    const policy = this.policy;
    const cap = Math.min(policy.maxDelay, policy.initialDelay * Math.pow(2, this.attempt));
    this.attempt += 1;
    return Math.floor(this._random() * cap);
  }

  /** Start counting again (a connection stayed up, or the page called open()). */
  reset() {
    this.attempt = 0;
  }
}
