"""Counters, gauges and histograms, and their Prometheus text exposition (format 0.0.4).

Theory of operation. A `Registry` holds metric families; a family has a name, a HELP
text, a type and label names, and one child per combination of label values. A
child is a plain object whose number is an attribute, so the loop updates it with
one addition: `child.value += n` or `child.inc(n)` for counters and gauges,
`child.observe(seconds)` for histograms. Take a child once (`family.labels(...)`)
and keep it where it is used; an unlabelled family's only child is `family.labels()`.

Nothing is computed between scrapes. `Registry.render()` first runs the callbacks
given to `on_scrape()` (figures read at scrape time: the process's CPU and memory,
or gauges the service knows better than any counter), then writes every family:

    # HELP name text            (backslash and newline escaped)
    # TYPE name counter|gauge|histogram
    name{label="value"} 42      (backslash, double quote and newline escaped)
    name_bucket{le="0.005"} 3   (histograms: cumulative buckets up to le="+Inf",
    name_sum 0.0123              then _sum and _count)
    name_count 3

Counts only, ever: the central's metrics never carry a name, a document or any
other field of a bet (they are personal data); label values are agency numbers,
error-code names and fixed words.
"""

from __future__ import annotations

import math
import os
import re
from bisect import bisect_left
from typing import Callable, Iterable, Sequence

from protocol import ErrorCode

from .status import DRAW_STATES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def _format_value(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class CounterValue:
    """One counter's number: it only goes up (a scrape-time collector may set it)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class GaugeValue:
    """One gauge's number: set, or moved either way."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramValue:
    """One histogram's observations: a count per bucket, their sum and their number."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ascending, the last one +Inf
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: cumulated when rendered
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # bucket `le` counts values <= le
        self.sum += value
        self.count += 1


class Family:
    """One metric family: its name, HELP, TYPE and label names, and a child per
    combination of label values (created on first use, kept for good)."""

    __slots__ = ("name", "help", "type", "labelnames", "_make_child", "_children")

    def __init__(
        self, name: str, help: str, type: str, labelnames: Sequence[str], make_child: Callable[[], object]
    ) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__") or (type == "histogram" and label == "le"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.type = type
        self.labelnames = tuple(labelnames)
        self._make_child = make_child
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self.labels()  # an unlabelled family shows its 0 from the start

    def labels(self, *values: object):
        """The child for these label values (str() of each), in `labelnames` order."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {len(values)} values")
        key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._make_child()
        return child

    def remove(self, *values: object) -> None:
        """Drops a child: its series disappears from the next scrape."""
        self._children.pop(tuple(str(value) for value in values), None)

    def render(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {_escape_help(self.help)}\n")
        out.append(f"# TYPE {self.name} {self.type}\n")
        for key, child in self._children.items():
            labels = [f'{name}="{_escape_label_value(value)}"' for name, value in zip(self.labelnames, key)]
            if self.type == "histogram":
                self._render_histogram(out, labels, child)
            else:
                out.append(f"{self.name}{_braces(labels)} {_format_value(child.value)}\n")

    def _render_histogram(self, out: list[str], labels: list[str], child: HistogramValue) -> None:
        cumulative = 0
        for bound, count in zip(child.bounds, child.counts):
            cumulative += count
            le = f'le="{_format_value(bound)}"'
            out.append(f"{self.name}_bucket{_braces(labels + [le])} {cumulative}\n")
        out.append(f"{self.name}_sum{_braces(labels)} {_format_value(child.sum)}\n")
        out.append(f"{self.name}_count{_braces(labels)} {child.count}\n")


def _braces(labels: list[str]) -> str:
    return "{" + ",".join(labels) + "}" if labels else ""


class Registry:
    """The metric families of one process, in the order they were declared, and
    the callbacks that refresh scrape-time figures before each render."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}
        self._on_scrape: list[Callable[[], None]] = []

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Family:
        return self._add(Family(name, help, "counter", labelnames, CounterValue))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Family:
        return self._add(Family(name, help, "gauge", labelnames, GaugeValue))

    def histogram(self, name: str, help: str, buckets: Iterable[float], labelnames: Sequence[str] = ()) -> Family:
        bounds = sorted(float(bound) for bound in buckets)
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(bound) for bound in bounds):
            raise ValueError(f"{name}: buckets must be distinct numbers")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        frozen = tuple(bounds)
        return self._add(Family(name, help, "histogram", labelnames, lambda: HistogramValue(frozen)))

    def on_scrape(self, callback: Callable[[], None]) -> None:
        """Runs `callback` at the start of every `render()`."""
        self._on_scrape.append(callback)

    def render(self) -> str:
        """Every family in the text exposition format 0.0.4."""
        for callback in self._on_scrape:
            callback()
        out: list[str] = []
        for family in self._families.values():
            family.render(out)
        return "".join(out)

    def _add(self, family: Family) -> Family:
        if family.name in self._families:
            raise ValueError(f"metric {family.name} is declared twice")
        self._families[family.name] = family
        return family


# --- the process, read at scrape time -------------------------------------------------

def read_process_figures(proc: str = "/proc") -> dict[str, float]:
    """CPU seconds, resident bytes, open descriptors and start time of this process.

    Read from `proc` (Linux's /proc) as Prometheus's own clients do; where a
    figure cannot be read (another OS, a restricted /proc) it is left out, except
    CPU time, which `os.times()` gives everywhere.
    """
    figures: dict[str, float] = {}
    times = os.times()
    figures["process_cpu_seconds_total"] = times.user + times.system
    try:
        with open(f"{proc}/self/stat", "rb") as file:
            stat = file.read()
        # Fields after the command name, which sits in parentheses and may hold spaces.
        fields = stat[stat.rindex(b")") + 2 :].split()
        ticks = os.sysconf("SC_CLK_TCK")
        figures["process_resident_memory_bytes"] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        with open(f"{proc}/stat", "rb") as file:
            boot_time = next(int(line.split()[1]) for line in file if line.startswith(b"btime "))
        figures["process_start_time_seconds"] = boot_time + int(fields[19]) / ticks
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        figures["process_open_fds"] = len(os.listdir(f"{proc}/self/fd"))
    except OSError:
        pass
    return figures


_PROCESS_HELP = {
    "process_cpu_seconds_total": ("counter", "Total user and system CPU time spent in seconds."),
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_open_fds": ("gauge", "Number of open file descriptors."),
    "process_start_time_seconds": ("gauge", "Start time of the process since unix epoch in seconds."),
}


def add_process_metrics(registry: Registry, read: Callable[[], dict[str, float]] = read_process_figures) -> None:
    """Declares the standard process_* families and refreshes them at every scrape;
    a figure `read` cannot give shows as a family without a sample."""
    families = {
        name: (registry.counter if kind == "counter" else registry.gauge)(name, help)
        for name, (kind, help) in _PROCESS_HELP.items()
    }

    def refresh() -> None:
        figures = read()
        for name, family in families.items():
            if name in figures:
                family.labels().value = figures[name]
            else:
                family.remove()

    registry.on_scrape(refresh)


# --- the central's own metrics ----------------------------------------------------------

DRAW_STATE_VALUES = {state: number for number, state in enumerate(DRAW_STATES)}  # open 0, drawing 1, done 2
BATCH_RESULTS = ("ack", "error")

# Group commits take about a millisecond with fsync and stay far below a second; a
# loop turn is budgeted to stay under 50 ms (issue #7), so both need fine buckets there.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
TURN_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class CentralMetrics:
    """The central's metric families, and the children the loop updates.

    Labelled families are attributes named after what they count; take a child
    with `.labels(...)` and keep it (e.g. one per agency session). Unlabelled
    ones are their single child already, so an update is one attribute addition.
    Update them per batch or per turn, never per bet.
    """

    def __init__(self, version: str, *, process: bool = True) -> None:
        self.registry = registry = Registry()
        self.bets_stored = registry.counter(
            "lottery_bets_stored_total", "Bets stored (committed) per agency, those recovered at start included.", ["agency"]
        )
        self.batches = registry.counter(
            "lottery_batches_total", "BETS batches answered: ack (stored, or a resend) or error.", ["result"]
        )
        self.batches_acked = self.batches.labels("ack")
        self.batches_refused = self.batches.labels("error")
        self.errors_sent = registry.counter(
            "lottery_errors_sent_total", "ERROR frames sent, by their PROTOCOL.md code name.", ["code"]
        )
        for code in ErrorCode:
            self.errors_sent.labels(code.name)
        self.connections = registry.gauge("lottery_connections", "Agency connections open now.").labels()
        self.connections_accepted = registry.counter(
            "lottery_connections_accepted_total", "Agency connections accepted."
        ).labels()
        self.connections_refused = registry.counter(
            "lottery_connections_refused_total", "Agency connections refused, by reason.", ["reason"]
        )
        self.bytes_received = registry.counter(
            "lottery_bytes_received_total", "Bytes read from connections (agencies and admin)."
        ).labels()
        self.bytes_sent = registry.counter("lottery_bytes_sent_total", "Bytes sent to connections (agencies and admin).").labels()
        self.commit_duration = registry.histogram(
            "lottery_commit_duration_seconds", "Duration of each group commit of the store.", COMMIT_BUCKETS
        ).labels()
        self.loop_turn_duration = registry.histogram(
            "lottery_loop_turn_duration_seconds", "Duration of each turn of the event loop.", TURN_BUCKETS
        ).labels()
        self.agencies_expected = registry.gauge(
            "lottery_agencies_expected", "Agencies the draw waits for."
        ).labels()
        self.agencies_done = registry.gauge("lottery_agencies_done", "Agencies that sent DONE.").labels()
        self.draw_state = registry.gauge("lottery_draw_state", "The draw: 0 open, 1 drawing, 2 done.").labels()
        self.log_lines_dropped = registry.counter(
            "lottery_log_lines_dropped_total", "Log lines dropped because stdout could not take them."
        ).labels()
        registry.gauge("lottery_build_info", "The central's version; the value is always 1.", ["version"]).labels(
            version
        ).set(1)
        if process:
            add_process_metrics(registry)

    def set_draw_state(self, state: str) -> None:
        """`state` is open, drawing or done, as in status.json."""
        self.draw_state.value = DRAW_STATE_VALUES[state]

    def render(self) -> str:
        return self.registry.render()

