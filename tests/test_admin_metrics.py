"""The metrics registry and the central's families, read back by the Prometheus
project's own parser (prometheus_client, a test-only dependency)."""

from __future__ import annotations

import math
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from protocol import ErrorCode
from reactor.metrics import CentralMetrics, Registry, add_process_metrics, read_process_figures


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of an exposition, parsed by Prometheus's parser."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def families(text: str) -> dict[str, tuple[str, str]]:
    """{family name: (type, help)}; the parser names a counter family without `_total`."""
    return {family.name: (family.type, family.documentation) for family in text_string_to_metric_families(text)}


def test_counters_gauges_and_labels_read_back_as_recorded():
    registry = Registry()
    stored = registry.counter("bets_stored_total", "Bets.", ["agency"])
    stored.labels(1).inc(150)
    stored.labels(1).inc(150)
    stored.labels("2").value += 7  # the hot-path form: one attribute addition
    open_now = registry.gauge("open_connections", "Open.").labels()
    open_now.inc(3)
    open_now.dec()
    ratio = registry.gauge("ratio", "A float.").labels()
    ratio.set(0.25)
    parsed = samples(registry.render())
    assert parsed == {
        ("bets_stored_total", (("agency", "1"),)): 300,
        ("bets_stored_total", (("agency", "2"),)): 7,
        ("open_connections", ()): 2,
        ("ratio", ()): 0.25,
    }


def test_every_family_has_help_and_type_even_without_samples():
    registry = Registry()
    registry.counter("refused_total", "Refused, by reason.", ["reason"])
    text = registry.render()
    assert text == "# HELP refused_total Refused, by reason.\n# TYPE refused_total counter\n"
    assert families(text) == {"refused": ("counter", "Refused, by reason.")}


def test_a_histogram_has_cumulative_buckets_sum_and_count():
    registry = Registry()
    turn = registry.histogram("turn_seconds", "Turns.", [0.01, 0.1, 1]).labels()
    for value in (0.005, 0.01, 0.05, 0.5, 3.0):
        turn.observe(value)
    parsed = samples(registry.render())
    buckets = {dict(labels)["le"]: value for (name, labels), value in parsed.items() if name == "turn_seconds_bucket"}
    assert buckets == {"0.01": 2, "0.1": 3, "1.0": 4, "+Inf": 5}  # le counts values <= le
    assert parsed[("turn_seconds_count", ())] == 5
    assert parsed[("turn_seconds_sum", ())] == pytest.approx(3.565)


def test_label_values_and_help_are_escaped():
    registry = Registry()
    weird = 'back\\slash "quoted"\nnew line'
    registry.counter("odd_total", 'Help with \\ and\na newline and "quotes".', ["reason"]).labels(weird).inc()
    text = registry.render()
    assert '# HELP odd_total Help with \\\\ and\\na newline and "quotes".\n' in text
    assert 'odd_total{reason="back\\\\slash \\"quoted\\"\\nnew line"} 1\n' in text
    assert samples(text) == {("odd_total", (("reason", weird),)): 1}
    assert families(text)["odd"][1] == 'Help with \\ and\na newline and "quotes".'


# The parser strips each line's surrounding whitespace, so a HELP text is drawn without any.
@given(st.text(max_size=30), st.text(max_size=60).filter(lambda text: text == text.strip()))
def test_any_label_value_and_help_survive_the_parser(value, help_text):
    registry = Registry()
    registry.gauge("any_value", help_text, ["label"]).labels(value).set(1)
    text = registry.render()
    assert samples(text) == {("any_value", (("label", value),)): 1}
    assert families(text)["any_value"] == ("gauge", help_text)


def test_special_float_values():
    registry = Registry()
    for name, value in (("pos", math.inf), ("neg", -math.inf), ("nan", math.nan)):
        registry.gauge(name, name).labels().set(value)
    parsed = samples(registry.render())
    assert parsed[("pos", ())] == math.inf and parsed[("neg", ())] == -math.inf and math.isnan(parsed[("nan", ())])


@pytest.mark.parametrize(
    "declare",
    [
        lambda r: r.counter("bad-name", "x"),
        lambda r: r.counter("ok_total", "x", ["bad-label"]),
        lambda r: r.counter("ok_total", "x", ["__reserved"]),
        lambda r: r.histogram("h_seconds", "x", [1], ["le"]),
        lambda r: r.histogram("h_seconds", "x", []),
        lambda r: r.histogram("h_seconds", "x", [1, 1]),
    ],
)
def test_invalid_declarations_are_refused(declare):
    with pytest.raises(ValueError):
        declare(Registry())


def test_a_family_is_declared_once_and_takes_its_labels():
    registry = Registry()
    family = registry.counter("once_total", "x", ["agency"])
    with pytest.raises(ValueError):
        registry.gauge("once_total", "y")
    with pytest.raises(ValueError):
        family.labels()
    with pytest.raises(ValueError):
        family.labels(1).inc(-1)  # a counter only goes up


def test_scrape_callbacks_run_before_each_render():
    registry = Registry()
    gauge = registry.gauge("scraped", "Set at scrape time.").labels()
    seen = iter([5, 6])
    registry.on_scrape(lambda: gauge.set(next(seen)))
    assert samples(registry.render())[("scraped", ())] == 5
    assert samples(registry.render())[("scraped", ())] == 6


REQUIRED_FAMILIES = {
    "lottery_bets_stored": "counter",
    "lottery_batches": "counter",
    "lottery_errors_sent": "counter",
    "lottery_connections": "gauge",
    "lottery_connections_accepted": "counter",
    "lottery_connections_refused": "counter",
    "lottery_bytes_received": "counter",
    "lottery_bytes_sent": "counter",
    "lottery_commit_duration_seconds": "histogram",
    "lottery_loop_turn_duration_seconds": "histogram",
    "lottery_agencies_expected": "gauge",
    "lottery_agencies_done": "gauge",
    "lottery_draw_state": "gauge",
    "lottery_log_lines_dropped": "counter",
    "lottery_build_info": "gauge",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_start_time_seconds": "gauge",
}


def test_the_central_declares_every_family_of_issue_13_with_help():
    declared = families(CentralMetrics("0.1.0").render())
    assert {name: kind for name, (kind, _) in declared.items()} == REQUIRED_FAMILIES
    assert all(help_text for _, help_text in declared.values())


def test_the_central_metrics_read_back_as_recorded():
    metrics = CentralMetrics("1.2.3", process=False)
    for agency, bets in ((1, 150), (1, 150), (3, 42)):
        metrics.bets_stored.labels(agency).inc(bets)
    metrics.batches_acked.value += 3
    metrics.batches_refused.inc()
    metrics.errors_sent.labels(ErrorCode.SEQUENCE_GAP.name).inc()
    metrics.connections.set(4)
    metrics.connections_accepted.inc(5)
    metrics.connections_refused.labels("max_connections").inc()
    metrics.bytes_received.value += 4096
    metrics.bytes_sent.value += 60
    metrics.commit_duration.observe(0.002)
    metrics.loop_turn_duration.observe(0.03)
    metrics.agencies_expected.set(5)
    metrics.agencies_done.set(2)
    metrics.set_draw_state("drawing")
    metrics.log_lines_dropped.inc(2)
    parsed = samples(metrics.render())
    assert parsed[("lottery_bets_stored_total", (("agency", "1"),))] == 300
    assert parsed[("lottery_bets_stored_total", (("agency", "3"),))] == 42
    assert parsed[("lottery_batches_total", (("result", "ack"),))] == 3
    assert parsed[("lottery_batches_total", (("result", "error"),))] == 1
    assert parsed[("lottery_errors_sent_total", (("code", "SEQUENCE_GAP"),))] == 1
    assert parsed[("lottery_errors_sent_total", (("code", "MALFORMED_FRAME"),))] == 0  # every code shows, from 0
    assert {dict(labels)["code"] for (name, labels) in parsed if name == "lottery_errors_sent_total"} == {
        code.name for code in ErrorCode
    }
    assert parsed[("lottery_connections", ())] == 4
    assert parsed[("lottery_connections_accepted_total", ())] == 5
    assert parsed[("lottery_connections_refused_total", (("reason", "max_connections"),))] == 1
    assert parsed[("lottery_bytes_received_total", ())] == 4096
    assert parsed[("lottery_bytes_sent_total", ())] == 60
    assert parsed[("lottery_commit_duration_seconds_count", ())] == 1
    assert parsed[("lottery_commit_duration_seconds_bucket", (("le", "0.0025"),))] == 1
    assert parsed[("lottery_commit_duration_seconds_bucket", (("le", "0.001"),))] == 0
    assert parsed[("lottery_loop_turn_duration_seconds_sum", ())] == pytest.approx(0.03)
    assert parsed[("lottery_agencies_expected", ())] == 5
    assert parsed[("lottery_agencies_done", ())] == 2
    assert parsed[("lottery_draw_state", ())] == 1
    assert parsed[("lottery_log_lines_dropped_total", ())] == 2
    assert parsed[("lottery_build_info", (("version", "1.2.3"),))] == 1


@pytest.mark.parametrize("state, value", [("open", 0), ("drawing", 1), ("done", 2)])
def test_draw_state_values(state, value):
    metrics = CentralMetrics("0", process=False)
    metrics.set_draw_state(state)
    assert samples(metrics.render())[("lottery_draw_state", ())] == value


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads Linux's /proc")
def test_process_figures_from_proc():
    figures = read_process_figures()
    assert set(figures) == {
        "process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
    }
    assert figures["process_resident_memory_bytes"] > 1_000_000  # a Python process holds megabytes
    assert figures["process_open_fds"] >= 3
    assert 0 < figures["process_start_time_seconds"] <= time.time()
    assert figures["process_cpu_seconds_total"] > 0


def test_without_proc_only_cpu_time_is_shown(tmp_path):
    registry = Registry()
    add_process_metrics(registry, lambda: read_process_figures(str(tmp_path / "no-proc")))
    text = registry.render()
    assert set(samples(text)) == {("process_cpu_seconds_total", ())}
    assert set(families(text)) == {
        "process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds",
    }


def test_a_figure_that_disappears_drops_its_sample():
    registry = Registry()
    readings = iter([{"process_open_fds": 7}, {}])
    add_process_metrics(registry, lambda: next(readings))
    assert samples(registry.render()) == {("process_open_fds", ()): 7}
    assert samples(registry.render()) == {}
