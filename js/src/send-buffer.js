/**
 * The offline send buffer: what the page sends while the client is not
 * open waits here, in order, up to a bound. When full, the oldest goes:
 * a page that sends while offline for long must not grow without limit.
 */
export class SendBuffer {
  /** @param {number} limit how many envelopes it holds at most (negative counts as 0) */
  constructor(limit) {
    this.limit = Math.max(0, limit);
    this._items = [];
  }

  get length() {
    return this._items.length;
  }

  push(envelope) {
    this._items.push(envelope);
  }

  /** Put envelopes back in front, in their order (sends a lost connection never made). */
  prepend(envelopes) {
    this._items = envelopes.concat(this._items);
  }

  shift() {
    return this._items.shift();
  }

  unshift(envelope) {
    this._items.unshift(envelope);
  }

  /** Forget the request with this id (it was settled before it was sent). */
  removeId(id) {
    this._items = this._items.filter(function (envelope) { return envelope.id !== id; });
  }

  clear() {
    this._items = [];
  }

  /** Drop the oldest envelopes past the bound, calling `dropped(envelope)` for each as it goes. */
  trim(dropped) {
    while (this._items.length > this.limit) {
      dropped(this._items.shift());
    }
  }
}
