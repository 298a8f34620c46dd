// Chat broadcast server on Node's `ws` package: the reference peer.
//
// Why it exists: `ws` is the most used Node WebSocket server, so its CPU cost
// per delivered message is the yardstick the benchmark divides by. The
// broadcast is the idiomatic loop from the `ws` README (client.send per open
// client); permessage-deflate is off so no per-client compression is done.
//
// Run: node ws_server.js --port 8080 [--host 127.0.0.1]
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const PEER_NAME = 'ws-node';

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 0 };
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--host') opts.host = argv[++i];
    else if (argv[i] === '--port') opts.port = Number(argv[++i]);
  }
  if (!opts.port) throw new Error('--port is required');
  return opts;
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const wss = new WebSocketServer({
    host: opts.host,
    port: opts.port,
    backlog: 4096,
    perMessageDeflate: false,
    maxPayload: 1 << 20,
    clientTracking: true,
  });

  wss.on('connection', (ws, req) => {
    const peer = `${req.socket.remoteAddress}:${req.socket.remotePort}`;
    ws.on('error', () => {});
    ws.on('message', (raw, isBinary) => {
      if (isBinary) return;
      let msg;
      try {
        msg = JSON.parse(raw.toString('utf8'));
      } catch (e) {
        return;
      }
      if (!msg || msg.type !== 'chat' || typeof msg.data !== 'string') return;
      const out = JSON.stringify({ type: 'chat', data: `Message from ${peer} : ${msg.data}` });
      for (const client of wss.clients) {
        if (client.readyState === WebSocket.OPEN) client.send(out);
      }
    });
  });

  wss.on('listening', () => {
    process.stdout.write(`${PEER_NAME} listening on ${opts.host}:${opts.port}\n`);
  });

  const stop = () => {
    for (const client of wss.clients) client.terminate();
    wss.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
