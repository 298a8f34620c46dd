"""What the backplane costs: a benchmark, not a test (docs/scaling.md).

    python bench/cluster.py hot-path [--clients 1000] [--publishes 2000]
        The local fan-out with the memory backplane, against the tracker
        of another checkout (--baseline DIR, e.g. `git worktree add` of the
        commit before the backplane): CPU per publish and per delivery.

    python bench/cluster.py redis [--publishes 20000] [--clients 0]
        One node in this process on a throw-away redis-server: CPU per
        publish in the node (script call, reply, the message coming back
        from the bus) and in redis-server, against the memory backplane.

    python bench/cluster.py fanout [--nodes 1,2,3] [--clients 300] [--messages 300]
        N twistd nodes on one redis-server, the clients spread over them,
        chat messages sent through node 1: delivered messages per second and
        server CPU (all nodes + Redis) per delivered message.

Every process is started on a free loopback port and stopped by its pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process, from /proc.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.process = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", self.dir],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# hot-path ------------------------------------------------------------------------

HOT_PATH = r"""
import sys, time
from appserver._core.tracker import ClientTracker, TrackerLimits
from appserver._core.client import Client

class Sink(Client):
    transport = "websocket"
    __slots__ = ("count",)
    def __init__(self, tracker):
        super().__init__(peer="bench", limits=tracker.limits, events=tracker.events)
        self.count = 0
    def write(self, message):
        self.count += 1
    def close(self, code=1000, reason=""):
        self.closed = True

clients, publishes = int(sys.argv[1]), int(sys.argv[2])
tracker = ClientTracker(TrackerLimits(history_size=1000), epoch="bench")
for _ in range(clients):
    tracker.register(Sink(tracker))
tracker.subscribe(next(iter(tracker.clients.values())), "one")
best_b = best_p = float("inf")
for _ in range(5):
    started = time.process_time()
    for i in range(publishes):
        tracker.broadcast("chat", "hello")
    best_b = min(best_b, (time.process_time() - started) / publishes)
    started = time.process_time()
    for i in range(publishes * 20):
        tracker.publish("one", i)
    best_p = min(best_p, (time.process_time() - started) / (publishes * 20))
print(best_b, best_p)
"""


def hot_path(args: argparse.Namespace) -> None:
    trees = [("this checkout", ROOT / "server")]
    if args.baseline:
        trees.append((f"baseline {args.baseline}", Path(args.baseline) / "server"))
    print(f"| tracker | broadcast to {args.clients} clients, us | per delivery, ns | publish to 1 subscriber, us |")
    print("|---|---|---|---|")
    for label, tree in trees:
        out = subprocess.run([sys.executable, "-c", HOT_PATH, str(args.clients), str(args.publishes)],
                             env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                             check=True, timeout=600).stdout.split()
        broadcast, publish = float(out[0]), float(out[1])
        print(f"| {label} | {broadcast * 1e6:.1f} | {broadcast / args.clients * 1e9:.0f} | {publish * 1e6:.2f} |")


# redis -----------------------------------------------------------------------------

def redis_cost(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT / "server"))
    from twisted.internet import defer, task

    from appserver._core.memory import MemoryBackplane
    from appserver._redis.backplane import RedisBackplane, parse_redis_url
    from appserver._core.tracker import ClientTracker, TrackerLimits

    redis = Redis()

    async def run(reactor) -> None:
        try:
            memory = ClientTracker(TrackerLimits(), clock=reactor.seconds, backplane=MemoryBackplane())
            started = time.process_time()
            for i in range(args.publishes):
                memory.broadcast("chat", "hello from the benchmark")
            memory_cpu = (time.process_time() - started) / args.publishes

            backplane = RedisBackplane(parse_redis_url(redis.url), "bench", reactor)
            tracker = ClientTracker(TrackerLimits(), clock=reactor.seconds, backplane=backplane)
            backplane.start()
            while backplane.not_ready():
                await task.deferLater(reactor, 0.05, lambda: None)
            for window in (args.inflight,):
                redis_before = cpu_seconds(redis.process.pid)
                started_cpu, started = time.process_time(), time.monotonic()
                pending: list = []
                last = 0
                for i in range(args.publishes):
                    pending.append(tracker.broadcast("chat", "hello from the benchmark"))
                    if len(pending) >= window or i == args.publishes - 1:
                        last = max(message.pos for message in await defer.gatherResults(pending))
                        pending = []
                # Wait for the last message to come back from the bus.
                while tracker.position < last:
                    await task.deferLater(reactor, 0.001, lambda: None)
                elapsed = time.monotonic() - started
                node_cpu = (time.process_time() - started_cpu) / args.publishes
                redis_cpu = (cpu_seconds(redis.process.pid) - redis_before) / args.publishes
                print("| backplane | node CPU per publish, us | redis-server CPU per publish, us | publishes/s |")
                print("|---|---|---|---|")
                print(f"| memory | {memory_cpu * 1e6:.1f} | - | {1 / memory_cpu:.0f} (CPU bound) |")
                print(f"| redis, {window} in flight | {node_cpu * 1e6:.1f} | {redis_cpu * 1e6:.1f} | "
                      f"{args.publishes / elapsed:.0f} |")
            yield_ = backplane.stop()
            if yield_ is not None:
                await yield_
        finally:
            redis.stop()

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


# fanout ------------------------------------------------------------------------------

class Node:
    def __init__(self, redis: Redis | None, name: str, workdir: Path) -> None:
        self.log_path = workdir / f"{name}.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--pidfile=", "-n", "appserver",
             "--app", "appserver.apps.chat:app",
             "--listen", "tcp:0:interface=127.0.0.1", "--backplane", redis.url if redis else "memory://",
             "--node-id", name,
             "--access-log", "false", "--rate-limit", "0", "--max-connections-per-ip", "0"],
            stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(r"single site listening on port (\d+)", self.log_path.read_text(errors="replace"))
            if found:
                self.port = int(found.group(1))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("node did not start: " + self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


async def _fanout_once(nodes: list[Node], clients: int, messages: int,
                       redis: Redis | None) -> tuple[float, float, int]:
    import websockets

    received = 0
    everyone = clients * messages
    done = asyncio.Event()

    async def listen(ws) -> None:
        nonlocal received
        async for frame in ws:
            if b'"chat"' in (frame if isinstance(frame, bytes) else frame.encode()):
                received += 1
                if received >= everyone:
                    done.set()

    sockets = []
    for i in range(clients):
        ws = await websockets.connect(f"ws://127.0.0.1:{nodes[i % len(nodes)].port}/ws", max_size=None)
        await ws.recv()  # welcome
        sockets.append(ws)
    listeners = [asyncio.ensure_future(listen(ws)) for ws in sockets]
    sender = await websockets.connect(f"ws://127.0.0.1:{nodes[0].port}/ws")
    await sender.recv()
    pids = [node.process.pid for node in nodes] + ([redis.process.pid] if redis else [])
    before = sum(cpu_seconds(pid) for pid in pids)
    started = time.monotonic()
    for i in range(messages):
        await sender.send(json.dumps({"type": "chat", "data": f"m{i}"}))
        await asyncio.sleep(0)
    try:
        await asyncio.wait_for(done.wait(), 60)
    except asyncio.TimeoutError:
        pass
    elapsed = time.monotonic() - started
    cpu = sum(cpu_seconds(pid) for pid in pids) - before
    for task_ in listeners:
        task_.cancel()
    for ws in [*sockets, sender]:
        await ws.close()
    return elapsed, cpu, received


def fanout(args: argparse.Namespace) -> None:
    print(f"| nodes | clients | messages | delivered/s | server CPU per delivery, us | delivered |")
    print("|---|---|---|---|---|---|")
    for count in [0, *args.nodes]:
        # 0: one node on the memory backplane, for comparison.
        redis = Redis() if count else None
        workdir = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
        nodes: list[Node] = []
        try:
            nodes = [Node(redis, f"n{i}", workdir) for i in range(max(count, 1))]
            elapsed, cpu, received = asyncio.run(_fanout_once(nodes, args.clients, args.messages, redis))
            label = f"{count} (Redis)" if count else "1 (memory)"
            print(f"| {label} | {args.clients} | {args.messages} | {received / elapsed:.0f} | "
                  f"{cpu / max(received, 1) * 1e6:.1f} | {received}/{args.clients * args.messages} |")
        finally:
            for node in nodes:
                node.stop()
            if redis is not None:
                redis.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    hot = sub.add_parser("hot-path")
    hot.add_argument("--clients", type=int, default=1000)
    hot.add_argument("--publishes", type=int, default=2000)
    hot.add_argument("--baseline", help="another checkout's root, to compare with")
    cost = sub.add_parser("redis")
    cost.add_argument("--publishes", type=int, default=20000)
    cost.add_argument("--inflight", type=int, default=64)
    fan = sub.add_parser("fanout")
    fan.add_argument("--nodes", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 3])
    fan.add_argument("--clients", type=int, default=300)
    fan.add_argument("--messages", type=int, default=300)
    args = parser.parse_args()
    {"hot-path": hot_path, "redis": redis_cost, "fanout": fanout}[args.command](args)


if __name__ == "__main__":
    main()
