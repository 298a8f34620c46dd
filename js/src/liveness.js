/**
 * Liveness of a WebSocket: a TCP connection can die without either side
 * noticing for minutes. After `interval` ms with no incoming traffic, ping;
 * if still nothing arrives within `staleTimeout` ms, the connection is dead.
 * (On Ajax the long poll itself is the liveness signal.)
 */
export class Liveness {
  /**
   * @param {Object} timers
   * @param {number} interval ms of silence before a ping
   * @param {number} staleTimeout ms after a ping before `dead()`
   * @param {{silent: function(): void, ping: function(): void, dead: function(): void}} owner
   *   `silent`: the interval passed with no traffic (the owner decides whether to probe);
   *   `ping`: send a ping; `dead`: no traffic came back in time.
   */
  constructor(timers, interval, staleTimeout, owner) {
    this._timers = timers;
    this._interval = interval;
    this._staleTimeout = staleTimeout;
    this._owner = owner;
    this._heartbeatTimer = null;
    this._staleTimer = null;
  }

  /** Traffic arrived: the connection is alive; ping again after the next silence. */
  touch() {
    const timers = this._timers;
    timers.clear(this._staleTimer);
    this._staleTimer = null;
    timers.clear(this._heartbeatTimer);
    this._heartbeatTimer = timers.set(() => {
      this._heartbeatTimer = null;
      this._owner.silent();
    }, this._interval);
  }

  /** Ping now, and declare the connection dead if nothing comes back in time. */
  probe() {
    this._owner.ping();
    if (this._staleTimer === null) {
      this._staleTimer = this._timers.timeout(() => {
        this._staleTimer = null;
        this._owner.dead();
      }, this._staleTimeout);
    }
  }

  stop() {
    this._timers.clear(this._heartbeatTimer);
    this._timers.clear(this._staleTimer);
    this._heartbeatTimer = this._staleTimer = null;
  }
}
