"""Chat broadcast server on the ``websockets`` library (asyncio implementation).

Why it exists: a widely used Python WebSocket library with a dedicated
``broadcast()`` that frames once per connection without awaiting, measured in
the same run as appserver so the two are compared on the same noisy machine.
Compression is off (the clients never offer it anyway) and keepalive pings are
off so no background traffic enters the measured window.

Run: ``python websockets_server.py --port 8080 [--host 127.0.0.1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal

from websockets.asyncio.server import ServerConnection, broadcast, serve

PEER_NAME = "websockets"


class ChatServer:
    """Keeps the open connections and broadcasts every chat message to all of them."""

    def __init__(self) -> None:
        self.clients: set[ServerConnection] = set()

    async def handler(self, ws: ServerConnection) -> None:
        host, port = ws.remote_address[:2]
        peer = f"{host}:{port}"
        self.clients.add(ws)
        try:
            async for raw in ws:
                if not isinstance(raw, str):
                    continue
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.get("type") == "chat" and isinstance(msg.get("data"), str):
                    out = json.dumps({"type": "chat", "data": f"Message from {peer} : {msg['data']}"})
                    broadcast(self.clients, out)
        finally:
            self.clients.discard(ws)


def raise_nofile_limit() -> None:
    """Many connections need many descriptors: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main_async(host: str, port: int) -> None:
    chat = ChatServer()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        chat.handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=1 << 20,
        backlog=4096,
    ):
        print(f"{PEER_NAME} listening on {host}:{port}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile_limit()
    asyncio.run(main_async(args.host, args.port))


if __name__ == "__main__":
    main()
