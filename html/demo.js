/*
 * Small helpers shared by the gallery's demo pages (after /js/appserver.js).
 * Defines window.Demo and nothing else.
 *
 *   Demo.connect(options)  AppServer.connect(options), with the header's
 *                          status dot kept up to date
 *   Demo.el(tag, text, className)
 *                          a new element whose text is set with textContent:
 *                          text from other users never becomes HTML
 *   Demo.time(seconds)     "HH:MM:SS" of a Unix time, in the page's zone
 */
(function () {
  "use strict";

  function el(tag, text, className) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) {
      node.textContent = String(text);
    }
    if (className) {
      node.className = className;
    }
    return node;
  }

  function connect(options) {
    var client = AppServer.connect(options || {});
    var dot = document.getElementById("status-dot");
    var label = document.getElementById("status");
    function show() {
      var open = client.readyState === AppServer.OPEN;
      if (dot) { dot.classList.toggle("on", open); }
      if (label) { label.textContent = open ? "connected over " + client.transport : "reconnecting…"; }
    }
    client.on("open", show);
    client.on("close", show);
    client.on("error", function (error) {
      if (window.console) { console.warn("appserver:", error.code, error.message); }
    });
    return client;
  }

  function time(seconds) {
    var date = new Date(seconds * 1000);
    function two(n) { return (n < 10 ? "0" : "") + n; }
    return two(date.getHours()) + ":" + two(date.getMinutes()) + ":" + two(date.getSeconds());
  }

  window.Demo = {connect: connect, el: el, time: time};
}());
