/**
 * The WebSocket transport: frames in and out as envelopes, one per text
 * frame. The first `welcome` ends the handshake; everything else goes to
 * the owner as it comes.
 *
 * Like every transport it reports to its owner (the client) through
 * `_onHandshake(conn, welcome)`, `_onEnvelope(conn, envelope)`,
 * `_lost(conn, info)`, `_touch(conn)` and `_protocolError(conn, code, message)`;
 * the owner ignores a connection that is no longer its current one.
 */
import {OPEN} from "../constants.js";

function noop() {}

export class WebSocketConnection {
  /**
   * @param {Object} owner the client
   * @param {Function} WebSocketImpl a WebSocket constructor (the browser's, or a test's fake)
   * @param {string} url
   */
  constructor(owner, WebSocketImpl, url) {
    this.name = "websocket";
    this._owner = owner;
    this._welcomed = false;
    const socket = this._socket = new WebSocketImpl(url);
    socket.onmessage = (event) => this._receive(event.data);
    // Every error is followed by a close event: that is where the owner learns.
    socket.onerror = noop;
    socket.onclose = (event) => this._owner._lost(this, {
      code: event.code, reason: event.reason, wasClean: event.wasClean,
    });
  }

  /** Nothing to do: the constructor already opened the socket. */
  start() {}

  _receive(raw) {
    const owner = this._owner;
    owner._touch(this);
    if (typeof raw !== "string") {
      return; // Binary frames are not part of the protocol.
    }
    let envelope;
    try {
      envelope = JSON.parse(raw);
    } catch (error) {
      owner._protocolError(this, "bad_json", "the server sent a frame that is not JSON");
      return;
    }
    if (!this._welcomed && envelope && envelope.type === "welcome") {
      this._welcomed = true;
      owner._onHandshake(this, envelope);
      return;
    }
    owner._onEnvelope(this, envelope);
  }

  /** Send now, or return false when the socket is not open. */
  send(envelope) {
    if (this._socket.readyState !== OPEN) {
      return false;
    }
    this._socket.send(JSON.stringify(envelope));
    return true;
  }

  /** Close quietly: the owner hears nothing more from this socket. */
  close() {
    const socket = this._socket;
    socket.onmessage = socket.onclose = socket.onerror = null;
    try {
      socket.close(1000);
    } catch (error) {
      // Already closing or closed.
    }
  }
}
