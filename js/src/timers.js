/**
 * The client's clock: injected `setTimeout`/`clearTimeout` (tests use a
 * fake clock), else the page's own, looked up when used so that importing
 * this module touches no browser global.
 */
export function makeTimers(setTimer, clearTimer) {
  return {
    set: function (fn, ms) { return setTimer ? setTimer(fn, ms) : globalThis.setTimeout(fn, ms); },
    /** A deadline: none at all for 0, a negative value or Infinity (a browser would fire at once). */
    timeout: function (fn, ms) { return ms > 0 && ms < 2147483648 ? this.set(fn, ms) : null; },
    clear: function (id) {
      if (id !== null && id !== undefined) {
        if (clearTimer) {
          clearTimer(id);
        } else {
          globalThis.clearTimeout(id);
        }
      }
    },
  };
}
