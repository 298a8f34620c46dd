/**
 * Polling-refresh mode (`reloadInterval`): no connection at all, a GET of
 * one URL at once and then every interval, counted from the end of the
 * previous fetch. For pages that must never hold a connection open.
 */
export class ReloadLoop {
  /**
   * @param {{http: Object, timers: Object, url: string, intervalMs: number, timeoutMs: number,
   *          loaded: function(*): void, failed: function(Error): void}} settings
   *   `loaded` and `failed` run for each fetch while the loop is running.
   */
  constructor(settings) {
    this._http = settings.http;
    this._timers = settings.timers;
    this._url = settings.url;
    this._intervalMs = settings.intervalMs;
    this._timeoutMs = settings.timeoutMs;
    this._loaded = settings.loaded;
    this._failed = settings.failed;
    this.running = false;
    this._timer = null;
    this._request = null;
  }

  start() {
    this.running = true;
    this._tick();
  }

  _tick() {
    this._timer = null;
    if (!this.running) {
      return;
    }
    const request = this._request = this._http.get(this._url, this._timeoutMs);
    request.then((result) => {
      if (this.running) {
        this._loaded(result);
      }
    }, (error) => {
      if (this.running) {
        this._failed(error);
      }
    }).then(() => {
      if (this.running) {
        this._timer = this._timers.set(() => this._tick(), this._intervalMs);
      }
    });
  }

  stop() {
    this.running = false;
    this._timers.clear(this._timer);
    this._timer = null;
    if (this._request) {
      this._request.abort();
      this._request = null;
    }
  }
}
