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
 *   Demo.needsGallery(error)
 *                          when a request failed because the server runs an
 *                          application without the gallery's handlers
 *                          (error code unknown_type, or a 404 route), say so
 *                          at the top of the page; true if it did
 *   Demo.expectPush(client, channel, seconds)
 *                          the same note when the channel stays silent
 *
 * The demos' server side is the gallery application, appserver's default
 * --app; a server started with another application serves these pages too,
 * and they then say what they need instead of waiting forever.
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

  var GALLERY = "appserver.apps.gallery:app";

  function needsGallery(error) {
    var missing = error && (error.code === "unknown_type" || error.status === 404 ||
                            /\b404\b/.test(String(error.message || "")));
    if (!missing) { return false; }
    if (document.getElementById("needs-gallery")) { return true; }
    var note = el("section", null, "needs");
    note.id = "needs-gallery";
    note.setAttribute("role", "alert");
    note.appendChild(el("h2", "This demo needs the gallery application"));
    var text = el("p");
    text.appendChild(document.createTextNode("The server runs another application, without this demo's " +
      "handlers. Start it with the default application (plain "));
    text.appendChild(el("code", "appserver"));
    text.appendChild(document.createTextNode("), or with "));
    text.appendChild(el("code", "--app " + GALLERY));
    text.appendChild(document.createTextNode(", or include it in your application."));
    note.appendChild(text);
    var main = document.querySelector("main");
    if (main) { main.insertBefore(note, main.firstChild); }
    return true;
  }

  function expectPush(client, channel, seconds) {
    var heard = false;
    client.on("message", function (data, envelope) {
      if (envelope.channel === channel) { heard = true; }
    });
    client.on("open", function () {
      setTimeout(function () {
        if (!heard && client.readyState === AppServer.OPEN) {
          needsGallery({code: "unknown_type"});
        }
      }, seconds * 1000);
    });
  }

  window.Demo = {connect: connect, el: el, time: time, needsGallery: needsGallery, expectPush: expectPush};
}());
