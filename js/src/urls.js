/** The few URL manipulations the client needs, without `URL` (old browsers, odd bases). */

/** `url` with `params` appended as a query; `undefined` and `null` values are left out. */
export function withQuery(url, params) {
  const parts = [];
  Object.keys(params || {}).forEach(function (key) {
    const value = params[key];
    if (value !== undefined && value !== null) {
      parts.push(encodeURIComponent(key) + "=" + encodeURIComponent(String(value)));
    }
  });
  if (!parts.length) {
    return url;
  }
  return url + (url.indexOf("?") < 0 ? "?" : "&") + parts.join("&");
}

/** A URL fit for an error message: without its query (a JSONP query holds the session secret). */
export function withoutQuery(url) {
  const end = url.search(/[?#]/);
  return end < 0 ? url : url.slice(0, end);
}

/** An absolute URL as is; a path, relative to `base`. */
export function resolveUrl(url, base) {
  if (/^[a-z][a-z0-9+.-]*:|^\/\//i.test(url)) {
    return url;
  }
  return base + (url.charAt(0) === "/" ? "" : "/") + url;
}
