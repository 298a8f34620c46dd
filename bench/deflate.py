"""permessage-deflate phase: a JSON ticker stream to N subscribers, deflate off and on (issue 17, target 4).

    python bench/deflate.py                       # 1000 subscribers, 20 messages/s for 5 s, each setting twice
    python bench/run.py --deflate --servers appserver --clients 1000 --inflight 1    # the same, after run.py's tables

Why a JSON ticker: it is the kind of stream deflate is for (repetitive keys,
similar numbers).  Each message is ``{"m": MARKER, "quotes": [10 quotes]}``
(``{"symbol":"ABC","bid":101.25,"ask":101.27,"size":300,"ts":...}``, prices in
a random walk), published with ``POST /publish`` on the channel ``ticker``;
every subscriber gets ``{"type":"message","channel":"ticker","data":...,"pos":P}``
through the server's channel fan-out.

The subscribers are ``websockets`` clients (picows does not implement
permessage-deflate) that offer ``permessage-deflate; client_max_window_bits``
and count the bytes their sockets deliver (frames as on the wire).  The
server runs once per setting of ``--permessage-deflate`` (``false``, ``true``;
the option is looked up in ``twistd appserver --help``), interleaved.  When
the server has no such option, it runs with its defaults, and the phase
reports whether the server negotiated the extension at all (the
``Sec-WebSocket-Extensions`` response header) instead of inventing "on"
figures.

Figures per setting: server CPU µs per delivered message (user and system
apart), bytes on the wire per delivered message (received by the clients:
frame headers included, TCP/IP headers not), the decompressed payload per
message, messages lost, the negotiated extension.  The publisher's HTTP
request is server work too: one per message, spread over N deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chatmsg  # noqa: E402
import procstat  # noqa: E402
from httpclient import HttpConnection  # noqa: E402
from idle import IdlePool, appserver_spec  # noqa: E402
from servers import REPO_DIR, SERVER_SPECS, ServerProcess  # noqa: E402

#: The server option under test (the lead's; looked up in `twistd appserver --help`).
DEFLATE_OPTION = "--permessage-deflate"
CHANNEL = "ticker"
SYMBOLS = ["ACME", "GLOBEX", "INITECH", "UMBRELLA", "HOOLI", "STARK", "WAYNE", "WONKA", "TYRELL", "CYBERDYNE",
           "SOYLENT", "MASSIVE", "VANDELAY", "OSCORP", "GRINGOTTS", "MONARCH"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def server_has_option(server_path: Path | None, option: str = DEFLATE_OPTION) -> bool:
    """True if ``twistd appserver --help`` lists ``option``."""
    spec = SERVER_SPECS["appserver"]
    env_path = str(server_path or REPO_DIR / "server")
    import os
    env = dict(os.environ, PYTHONPATH=env_path + (os.pathsep + os.environ["PYTHONPATH"]
                                                   if os.environ.get("PYTHONPATH") else ""))
    try:
        out = subprocess.run([spec.argv[0], "appserver", "--help"], capture_output=True, text=True, env=env,
                             cwd=REPO_DIR, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return option + "=" in out.stdout or option + " " in out.stdout


class Ticker:
    """Quotes in a random walk: one message is the latest quote of ``per_message`` symbols."""

    def __init__(self, per_message: int, seed: int = 17) -> None:
        self.rng = random.Random(seed)
        self.per_message = per_message
        self.mid = {s: round(self.rng.uniform(20, 400), 2) for s in SYMBOLS}
        self.i = 0

    def message(self, msg_id: int) -> dict[str, Any]:
        quotes = []
        now_ms = int(time.time() * 1000)
        for k in range(self.per_message):
            sym = SYMBOLS[(self.i + k) % len(SYMBOLS)]
            mid = self.mid[sym] = round(max(1.0, self.mid[sym] + self.rng.choice((-0.03, -0.01, 0, 0.01, 0.02))), 2)
            spread = self.rng.choice((0.01, 0.02, 0.02, 0.03))
            quotes.append({"symbol": sym, "bid": round(mid - spread / 2, 2), "ask": round(mid + spread / 2, 2),
                           "size": self.rng.choice((100, 200, 300, 500, 1000)), "ts": now_ms + k})
        self.i += self.per_message
        return {"m": chatmsg.make_text(msg_id, time.monotonic_ns(), 0), "quotes": quotes}


@dataclass
class DeflateResult:
    setting: str
    run: int
    subscribers: int = 0
    extensions: dict[str, int] = field(default_factory=dict)
    messages: int = 0
    expected: int = 0
    delivered: int = 0
    duplicates: int = 0
    dropped: int = 0
    window_s: float = 0.0
    server_user_s: float = 0.0
    server_system_s: float = 0.0
    loadgen_cpu_s: float = 0.0
    wire_bytes: int = 0
    payload_bytes: int = 0
    publish_bytes: int = 0
    error: str | None = None

    @property
    def negotiated(self) -> int:
        return sum(v for k, v in self.extensions.items() if "permessage-deflate" in k)

    def per_msg(self, value: float, scale: float = 1.0) -> float | None:
        return value / self.delivered * scale if self.delivered else None


async def measure_setting(setting: str, run: int, cfg: argparse.Namespace) -> DeflateResult:
    """One server start with one setting: subscribe N deflate-offering clients, publish the ticker, count."""
    res = DeflateResult(setting=setting, run=run)
    extra = [] if setting == "default" else [DEFLATE_OPTION, setting]
    server = ServerProcess(appserver_spec(cfg.deflate_clients, cfg.server_path, extra))
    pool: IdlePool | None = None
    http: HttpConnection | None = None
    try:
        await server.start(30)
        pool = await IdlePool.start(cfg.deflate_workers)
        opened = await pool.open(server.ws_url, cfg.deflate_clients, ["127.0.0.2"], 16, 60 + cfg.deflate_clients / 50,
                                 client="websockets", deflate=True, subscribe=CHANNEL)
        res.subscribers, res.extensions = opened["opened"], opened["extensions"]
        if opened["opened"] < cfg.deflate_clients:
            res.error = f"opened {opened['opened']}/{cfg.deflate_clients}: {opened['errors'][:3]}"
            if not opened["opened"]:
                return res
        http = HttpConnection("127.0.0.1", server.ajax_port)
        ticker = Ticker(cfg.quotes)
        # Warm-up publishes (id 0) until every subscriber is on the channel, as the server counts them.
        deadline = time.monotonic() + 15
        subscribers = 0
        while time.monotonic() < deadline:
            status, body = await http.request("POST", "/publish", json.dumps(
                {"channel": CHANNEL, "data": ticker.message(0)}).encode())
            if status != 200:
                raise RuntimeError(f"POST /publish answered {status}: {body[:200]!r}")
            subscribers = int(json.loads(body).get("subscribers", 0))
            if subscribers >= res.subscribers:
                break
            await asyncio.sleep(0.2)
        if subscribers < res.subscribers:
            res.error = f"only {subscribers} of {res.subscribers} clients subscribed to {CHANNEL!r}"
        await asyncio.sleep(0.5)
        st0 = await pool.status()
        await pool.reset()
        n_msgs = max(1, int(cfg.deflate_rate * cfg.deflate_seconds))
        bodies = [json.dumps({"channel": CHANNEL, "data": ticker.message(i)}, separators=(",", ":")).encode()
                  for i in range(1, n_msgs + 1)]
        res.publish_bytes = sum(len(b) for b in bodies) // n_msgs
        cpu0, gen0, t0 = procstat.cpu_times(server.pid), pool.cpu_seconds(), time.monotonic()
        for i, body in enumerate(bodies):
            # Paced open loop: message i leaves at t0 + i / rate.
            delay = t0 + i / cfg.deflate_rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            status, answer = await http.request("POST", "/publish", body)
            if status != 200:
                raise RuntimeError(f"POST /publish answered {status}: {answer[:200]!r}")
        res.messages = n_msgs
        res.expected = n_msgs * res.subscribers
        deadline = time.monotonic() + cfg.deflate_drain
        st = await pool.status()
        while sum(st["received"].values()) < res.expected and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            st = await pool.status()
        cpu1, gen1, t1 = procstat.cpu_times(server.pid), pool.cpu_seconds(), time.monotonic()
        res.window_s = t1 - t0
        res.server_user_s, res.server_system_s = cpu1.user - cpu0.user, cpu1.system - cpu0.system
        res.loadgen_cpu_s = gen1 - gen0
        res.delivered = sum(v for k, v in st["received"].items() if 1 <= k <= n_msgs)
        res.duplicates = st["duplicates"]
        res.dropped = st["dropped"] - st0["dropped"]
        res.wire_bytes, res.payload_bytes = st["wire_bytes"], st["payload_bytes"]
        return res
    except Exception as exc:  # noqa: BLE001 - reported in the table
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    finally:
        if http is not None:
            http.close()
        if pool is not None:
            await pool.stop()
        server.stop()


async def run_phase(cfg: argparse.Namespace) -> tuple[list[DeflateResult], list[str]]:
    """Every setting, ``deflate_runs`` times, interleaved; returns the results and notes."""
    notes: list[str] = []
    if server_has_option(cfg.server_path):
        settings = ["false", "true"]
    else:
        settings = ["default"]
        notes.append(f"appserver has no {DEFLATE_OPTION} option (not in `twistd appserver --help`): measured with "
                     "its defaults only")
    results = []
    for run in range(cfg.deflate_runs):
        for setting in settings:
            log(f"deflate phase run {run + 1}/{cfg.deflate_runs}: {DEFLATE_OPTION} {setting}, "
                f"{cfg.deflate_clients} subscribers")
            r = await asyncio.wait_for(measure_setting(setting, run, cfg),
                                       120 + cfg.deflate_seconds + cfg.deflate_drain + cfg.deflate_clients / 20)
            results.append(r)
            cpu = r.per_msg(r.server_user_s + r.server_system_s, 1e6)
            log(f"  {setting}: {r.delivered}/{r.expected} delivered, "
                f"{cpu or 0:.2f} µs/msg, {r.per_msg(r.wire_bytes) or 0:.0f} B/msg on the wire, "
                f"deflate negotiated by {r.negotiated}/{r.subscribers}" + (f"; {r.error}" if r.error else ""))
    for setting in settings:
        rs = [r for r in results if r.setting == setting]
        if rs and not any(r.negotiated for r in rs):
            notes.append(f"{DEFLATE_OPTION} {setting}: the server answered no client with "
                         "Sec-WebSocket-Extensions: permessage-deflate: not negotiated, so these are uncompressed "
                         "figures" + (" (expected for 'false')" if setting == "false" else ""))
    return results, notes


def render(results: list[DeflateResult], notes: list[str], cfg: argparse.Namespace) -> str:
    import statistics

    def med(vals: list[float | None]) -> float | None:
        v = [x for x in vals if x is not None]
        return statistics.median(v) if v else None

    def f(v: float | None, d: int = 2) -> str:
        return "–" if v is None else f"{v:,.{d}f}"

    lines = ["## permessage-deflate: JSON ticker to N subscribers", "",
             f"{cfg.deflate_clients} `websockets` subscribers offering permessage-deflate on channel `{CHANNEL}`; "
             f"{cfg.deflate_rate:g} messages/s for {cfg.deflate_seconds:g} s by `POST /publish`, {cfg.quotes} quotes "
             f"per message (~{results[0].publish_bytes if results else 0} B publish body); medians of "
             f"{cfg.deflate_runs} run(s) per setting, settings interleaved. Wire bytes: what the clients' sockets "
             "delivered (WebSocket frames, headers included), per delivered message.", "",
             f"| {DEFLATE_OPTION} | negotiated | delivered / expected | CPU µs/msg | user µs/msg | sys µs/msg "
             "| wire B/msg | payload B/msg | wire ÷ payload | loadgen CPU % | lost | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base_cpu = None
    by_setting: dict[str, list[DeflateResult]] = {}
    for r in results:
        by_setting.setdefault(r.setting, []).append(r)
    for setting, rs in by_setting.items():
        cpu = med([r.per_msg(r.server_user_s + r.server_system_s, 1e6) for r in rs])
        wire = med([r.per_msg(r.wire_bytes) for r in rs])
        payload = med([r.per_msg(r.payload_bytes) for r in rs])
        if setting in ("false", "default"):
            base_cpu = cpu
        exts = sorted({k for r in rs for k in r.extensions})
        neg = f"{sum(r.negotiated for r in rs)}/{sum(r.subscribers for r in rs)}"
        lines.append(
            f"| {setting} | {neg} ({'; '.join(exts)[:80]}) | {sum(r.delivered for r in rs):,} / "
            f"{sum(r.expected for r in rs):,} | {f(cpu)} | "
            f"{f(med([r.per_msg(r.server_user_s, 1e6) for r in rs]))} | "
            f"{f(med([r.per_msg(r.server_system_s, 1e6) for r in rs]))} | {f(wire, 0)} | {f(payload, 0)} | "
            f"{f(wire / payload if wire and payload else None)} | "
            f"{f(med([100 * r.loadgen_cpu_s / r.window_s for r in rs if r.window_s]), 0)} | "
            f"{sum(r.expected - r.delivered for r in rs):,}"
            + (f" (+{sum(r.dropped for r in rs)} dropped conns)" if any(r.dropped for r in rs) else "")
            + f" | {len(rs)} |")
    if "true" in by_setting and base_cpu:
        on = med([r.per_msg(r.server_user_s + r.server_system_s, 1e6) for r in by_setting["true"]])
        if on:
            notes = [*notes, f"CPU with deflate ÷ without: {on / base_cpu:.2f}×"]
    lines.append("")
    errs = [f"{r.setting} run {r.run + 1}: {r.error}" for r in results if r.error]
    if notes or errs:
        lines += [f"- {n}" for n in notes + errs]
        lines.append("")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deflate-clients", type=int, default=1000, help="subscribers (default 1000)")
    p.add_argument("--deflate-rate", type=float, default=20.0, help="ticker messages per second (default 20)")
    p.add_argument("--deflate-seconds", type=float, default=5.0, help="seconds of publishing (default 5)")
    p.add_argument("--deflate-runs", type=int, default=2, help="runs per setting (default 2)")
    p.add_argument("--deflate-workers", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--deflate-drain", type=float, default=30.0,
                   help="seconds to wait for the last deliveries (default 30)")
    p.add_argument("--quotes", type=int, default=10, help="quotes per ticker message (default 10)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="permessage-deflate off vs on for a JSON ticker (bench/README.md)")
    add_arguments(p)
    p.add_argument("--server-path", type=Path, help="a checkout's server/ directory instead of this one's")
    p.add_argument("--out", type=Path, help="also write the Markdown report here")
    p.add_argument("--json", dest="json_out", type=Path, help="write the raw figures as JSON")
    cfg = p.parse_args(argv)
    results, notes = asyncio.run(run_phase(cfg))
    text = render(results, notes, cfg)
    print(text)
    if cfg.out:
        cfg.out.write_text(text + "\n")
    if cfg.json_out:
        from dataclasses import asdict
        cfg.json_out.write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    return 0 if results and not any(r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
