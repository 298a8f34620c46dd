"""Turn raw measurement groups into medians, ratios and a Markdown report.

Why ratios are medians of per-run ratios (not ratios of medians): a run
measures every server at one client count back to back, so dividing within a
run cancels most of the machine's slow drift; the median then drops the odd
disturbed run.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from loadgen import LevelResult

NOISY_OTHER_CPU_PCT = 25.0
#: Issue 17: server user CPU per delivery at most this many µs (one broadcast in flight).
USER_US_TARGET = 2.5


@dataclass
class GroupResult:
    """One server at one client count in one run: idle memory plus one LevelResult per in-flight level."""

    server: str
    transport: str  # "ws", "longpoll" or "sse"
    clients: int
    run: int
    levels: list[LevelResult] = field(default_factory=list)
    mem_per_conn_bytes: float | None = None
    open_s: float | None = None
    error: str | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> GroupResult:
        """Inverse of :meth:`to_json` (derived figures are recomputed, not read)."""
        names = {f.name for f in fields(LevelResult)}
        levels = [LevelResult(**{k: v for k, v in lv.items() if k in names}) for lv in obj["levels"]]
        return cls(server=obj["server"], transport=obj["transport"], clients=obj["clients"], run=obj["run"],
                   levels=levels, mem_per_conn_bytes=obj.get("mem_per_conn_bytes"), open_s=obj.get("open_s"),
                   error=obj.get("error"))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = [
            dict(asdict(lv), msgs_per_s=lv.msgs_per_s, cpu_us_per_msg=lv.cpu_us_per_msg,
                 user_us_per_msg=lv.user_us_per_msg, system_us_per_msg=lv.system_us_per_msg,
                 server_cpu_pct=lv.server_cpu_pct, loadgen_cpu_pct=lv.loadgen_cpu_pct,
                 other_cpu_pct=lv.other_cpu_pct)
            for lv in self.levels
        ]
        return out


@dataclass(frozen=True)
class Cell:
    """Median figures of one (server, transport, clients, in-flight) cell over the runs."""

    server: str
    transport: str
    clients: int
    inflight: int
    runs: int
    msgs_per_s: float
    cpu_us_per_msg: float | None
    user_us_per_msg: float | None
    system_us_per_msg: float | None
    server_cpu_pct: float
    loadgen_cpu_pct: float
    softirq_pct: float
    other_cpu_pct: float
    p50_us: float | None
    p99_us: float | None
    lost: int
    dropped: int
    stalled: int
    ratios: dict[str, float | None]


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _level(group: GroupResult, inflight: int) -> LevelResult | None:
    for lv in group.levels:
        if lv.inflight == inflight:
            return lv
    return None


def build_cells(groups: Sequence[GroupResult], references: Sequence[str]) -> list[Cell]:
    """Aggregate the runs of every cell; ratios divide CPU/msg by each reference server's, per run."""
    index: dict[tuple[str, str, int, int], dict[int, LevelResult]] = {}
    order: list[tuple[str, str, int, int]] = []
    for g in groups:
        for lv in g.levels:
            key = (g.server, g.transport, g.clients, lv.inflight)
            if key not in index:
                index[key] = {}
                order.append(key)
            index[key][g.run] = lv
    cells = []
    for key in order:
        server, transport, clients, inflight = key
        by_run = index[key]
        levels = list(by_run.values())
        ratios: dict[str, float | None] = {}
        for ref in references:
            ref_runs = index.get((ref, "ws", clients, inflight), {})
            per_run = []
            for run, lv in by_run.items():
                ref_lv = ref_runs.get(run)
                if ref_lv is not None and lv.cpu_us_per_msg and ref_lv.cpu_us_per_msg:
                    per_run.append(lv.cpu_us_per_msg / ref_lv.cpu_us_per_msg)
            ratios[ref] = _median(per_run)
        cells.append(Cell(
            server=server, transport=transport, clients=clients, inflight=inflight, runs=len(levels),
            msgs_per_s=_median(lv.msgs_per_s for lv in levels) or 0.0,
            cpu_us_per_msg=_median(lv.cpu_us_per_msg for lv in levels),
            user_us_per_msg=_median(lv.user_us_per_msg for lv in levels),
            system_us_per_msg=_median(lv.system_us_per_msg for lv in levels),
            server_cpu_pct=_median(lv.server_cpu_pct for lv in levels) or 0.0,
            loadgen_cpu_pct=_median(lv.loadgen_cpu_pct for lv in levels) or 0.0,
            softirq_pct=_median(100.0 * lv.softirq_s / lv.window_s for lv in levels if lv.window_s) or 0.0,
            other_cpu_pct=_median(lv.other_cpu_pct for lv in levels) or 0.0,
            p50_us=_median(lv.p50_us for lv in levels),
            p99_us=_median(lv.p99_us for lv in levels),
            lost=sum(lv.lost for lv in levels),
            dropped=sum(lv.dropped for lv in levels),
            stalled=sum(lv.stalled for lv in levels),
            ratios=ratios,
        ))
    return cells


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if abs(value) >= 1000 and digits <= 1:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ms(us: float | None) -> str:
    return "–" if us is None else f"{us / 1000:.2f}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


#: Issue 15's target: SSE CPU per delivered message at most this many times WebSocket's, by broadcasts in flight.
SSE_TARGETS = {1: 1.5, 32: 2.0}


def _same_run_ratio(groups: Sequence[GroupResult], server: str, transport: str, clients: int,
                    inflight: int) -> float | None:
    """Median over runs of transport's CPU µs/msg ÷ WebSocket's, each run divided by its own WebSocket group."""
    def by_run(kind: str) -> dict[int, Any]:
        out = {}
        for g in groups:
            if g.server == server and g.transport == kind and g.clients == clients:
                for lv in g.levels:
                    if lv.inflight == inflight and lv.cpu_us_per_msg:
                        out[g.run] = lv.cpu_us_per_msg
        return out
    mine, ws = by_run(transport), by_run("ws")
    return _median(mine[run] / ws[run] for run in mine if run in ws)


def _sse_table(sse_cells: Sequence[Cell], ws_cells: Sequence[Cell], lp_cells: Sequence[Cell],
               groups: Sequence[GroupResult]) -> list[str]:
    """SSE next to WebSocket and long poll at the same N and in-flight level, with the issue's target."""
    ws_index = {(c.server, c.clients, c.inflight): c for c in ws_cells}
    lp_index = {(c.server, c.clients, c.inflight): c for c in lp_cells}
    lines = ["## Event stream (SSE)", "",
             "Target (issue 15): SSE CPU µs/msg at most 1.5× WebSocket's at 1 in flight, 2× at 32; "
             "the ratios divide figures of the same run.", "",
             "| N clients | in flight | server | msgs/s | CPU µs/msg SSE | CPU µs/msg WebSocket | "
             "CPU µs/msg long poll | SSE / WebSocket | long poll / WebSocket | target | p50 ms | p99 ms | lost | runs |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(sse_cells, key=lambda c: (c.clients, c.inflight)):
        key = (c.server, c.clients, c.inflight)
        ws, lp = ws_index.get(key), lp_index.get(key)
        ratio = _same_run_ratio(groups, c.server, "sse", c.clients, c.inflight)
        lp_ratio = _same_run_ratio(groups, c.server, "longpoll", c.clients, c.inflight)
        target = SSE_TARGETS.get(c.inflight)
        verdict = "–" if target is None else f"≤ {target:g}×" + (
            "" if ratio is None else (" met" if ratio <= target else " missed"))
        lost = str(c.lost) + (f" (+{c.dropped} dropped conns)" if c.dropped else "")
        lines.append(f"| {c.clients} | {c.inflight} | {c.server} | {_fmt(c.msgs_per_s, 0)} "
                     f"| {_fmt(c.cpu_us_per_msg, 2)} | {_fmt(ws.cpu_us_per_msg if ws else None, 2)} "
                     f"| {_fmt(lp.cpu_us_per_msg if lp else None, 2)} | {_ratio(ratio)} | {_ratio(lp_ratio)} "
                     f"| {verdict} | {_ms(c.p50_us)} | {_ms(c.p99_us)} | {lost} | {c.runs} |")
    lines.append("")
    return lines


def render_markdown(groups: Sequence[GroupResult], servers: Sequence[str], references: Sequence[str],
                    header: Sequence[str], notes: Sequence[str]) -> str:
    """The whole report: context lines, WebSocket table, memory table, long-poll table, notes."""
    cells = build_cells(groups, references)
    rank = {name: i for i, name in enumerate(servers)}
    lines: list[str] = ["# Broadcast fan-out benchmark", ""]
    lines += [f"- {h}" for h in header]
    lines.append("")

    ws_cells = sorted((c for c in cells if c.transport == "ws"),
                      key=lambda c: (c.clients, c.inflight, rank.get(c.server, 99)))
    refs_present = [r for r in references if any(c.server == r for c in ws_cells)]
    lines += ["## WebSocket broadcast", "",
              f"user / sys µs/msg: the server's user-mode and kernel-mode CPU per delivered message (their sum is "
              f"CPU µs/msg, up to rounding of the medians); issue 17's target is user ≤ {USER_US_TARGET:g} µs "
              f"at 1 in flight.", ""]
    cols = ["N clients", "in flight", "server", "msgs/s", "CPU µs/msg", "user µs/msg", "sys µs/msg", "server CPU %", "loadgen CPU %",
            "softirq %", "other CPU %", "p50 ms", "p99 ms", "lost"] + [f"CPU ×{r}" for r in refs_present] + ["runs"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "|".join("---" if i < 3 else "---:" for i in range(len(cols))) + "|")
    for c in ws_cells:
        lost = str(c.lost) + (f" (+{c.dropped} dropped conns)" if c.dropped else "")
        row = [str(c.clients), str(c.inflight), c.server, _fmt(c.msgs_per_s, 0), _fmt(c.cpu_us_per_msg, 2),
               _fmt(c.user_us_per_msg, 2), _fmt(c.system_us_per_msg, 2), _fmt(c.server_cpu_pct, 0), _fmt(c.loadgen_cpu_pct, 0), _fmt(c.softirq_pct, 0),
               _fmt(c.other_cpu_pct, 0), _ms(c.p50_us), _ms(c.p99_us), lost]
        row += [_ratio(c.ratios.get(r)) for r in refs_present]
        row.append(str(c.runs))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    mem_rows: dict[tuple[str, str, int], list[GroupResult]] = {}
    for g in groups:
        if g.mem_per_conn_bytes is not None:
            mem_rows.setdefault((g.server, g.transport, g.clients), []).append(g)
    if mem_rows:
        lines += ["## Idle connections", "",
                  "| N clients | server | transport | RSS KiB per idle conn | open time s (N conns) |",
                  "|---|---|---|---:|---:|"]
        for (server, transport, clients), gs in sorted(mem_rows.items(),
                                                       key=lambda kv: (kv[0][2], kv[0][1], rank.get(kv[0][0], 99))):
            mem = _median(g.mem_per_conn_bytes for g in gs)
            lines.append(f"| {clients} | {server} | {transport} | {_fmt(None if mem is None else mem / 1024, 1)} "
                         f"| {_fmt(_median(g.open_s for g in gs), 2)} |")
        lines.append("")

    lp_cells = [c for c in cells if c.transport == "longpoll"]
    if lp_cells:
        ws_index = {(c.server, c.clients, c.inflight): c for c in ws_cells}
        lines += ["## Long poll (Ajax transport)", "",
                  "| N clients | in flight | server | msgs/s | CPU µs/msg long-poll | CPU µs/msg WebSocket (same N) "
                  "| long-poll / WebSocket | p50 ms | p99 ms | lost | runs |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for c in sorted(lp_cells, key=lambda c: (c.clients, c.inflight)):
            ws = ws_index.get((c.server, c.clients, c.inflight))
            ws_cpu = ws.cpu_us_per_msg if ws else None
            ratio = c.cpu_us_per_msg / ws_cpu if (c.cpu_us_per_msg and ws_cpu) else None
            lines.append(f"| {c.clients} | {c.inflight} | {c.server} | {_fmt(c.msgs_per_s, 0)} "
                         f"| {_fmt(c.cpu_us_per_msg, 2)} | {_fmt(ws_cpu, 2)} | {_ratio(ratio)} "
                         f"| {_ms(c.p50_us)} | {_ms(c.p99_us)} | {c.lost} | {c.runs} |")
        lines.append("")

    sse_cells = [c for c in cells if c.transport == "sse"]
    if sse_cells:
        lines += _sse_table(sse_cells, ws_cells, lp_cells, groups)

    problems = [f"{g.server} {g.transport} N={g.clients} run {g.run + 1}: {g.error}" for g in groups if g.error]
    problems += [f"{c.server} N={c.clients} in-flight {c.inflight}: {c.stalled} broadcasts never reached every "
                 f"client (the closed loop moved on without them)" for c in cells if c.stalled]
    windows = [lv for g in groups for lv in g.levels]
    noisy = [lv for lv in windows if lv.other_cpu_pct > NOISY_OTHER_CPU_PCT]
    if noisy:
        problems.append(f"noisy machine: during {len(noisy)} of {len(windows)} measured windows other processes "
                        f"used more than {NOISY_OTHER_CPU_PCT:.0f}% of a core (worst "
                        f"{max(lv.other_cpu_pct for lv in noisy):.0f}%); msgs/s and latency suffer most, "
                        "CPU µs/msg least")
    if problems or notes:
        lines += ["## Notes", ""]
        lines += [f"- {n}" for n in list(notes) + problems]
        lines.append("")
    return "\n".join(lines)
