"""The status page at `/`: one self-contained HTML document made from the status document.

The server renders every figure into a plain table, so the page reads without
JavaScript (and then reloads itself every 5 s); a small inline script polls
`status.json` each second and keeps the same elements current. Nothing is loaded
from anywhere else: the CSS and the script are inline, allowed by their hashes in
the Content-Security-Policy, and the script writes text only (`textContent`,
`dataset`), never HTML. Everything rendered is escaped.

Stable hooks for tests and scripts, kept current by the script:
- one `<tr data-agency="N" data-committed="C" data-done="true|false">` per agency,
  inside `<tbody id="agencies">`;
- `<section id="draw" data-state="open|drawing|done">`.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

_STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --wait: #9a6700; --muted: #6e7781; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem auto; max-width: 60rem; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin: 0 0 .2rem; } h2 { font-size: 1.15rem; margin: 0 0 .5rem; }
.muted, footer { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(10rem, 1fr)); gap: .75rem; margin: 1rem 0; }
.card, #draw { border: 1px solid #8884; border-radius: .5rem; padding: .75rem 1rem; }
.card .label { color: var(--muted); font-size: .85rem; } .card .big { font-size: 1.6rem; font-variant-numeric: tabular-nums; }
#draw { margin-bottom: 1rem; } #draw[data-state="done"] { border-color: var(--ok); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #8883; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
progress { width: 100%; height: .9rem; accent-color: var(--wait); }
tr[data-done="true"] progress, #draw[data-state="done"] progress { accent-color: var(--ok); }
.badge { font-size: .8rem; font-weight: 600; padding: .05rem .45rem; border-radius: 1rem; border: 1px solid; }
tr[data-done="true"] .badge { color: var(--ok); } tr[data-done="false"] .badge { color: var(--wait); }
footer { margin-top: .75rem; } footer.stale { color: #cf222e; }
"""

_SCRIPT = """
"use strict";
(function () {
  const byId = (id) => document.getElementById(id);
  const fmt = (n) => Number(n).toLocaleString("en-US");
  function setText(element, text) { if (element.textContent !== text) element.textContent = text; }
  function agencyState(a) {
    if (a.done) return "DONE";
    if (a.connected === undefined) return "not done";
    return a.connected ? "sending" : "not connected";
  }
  function row(tbody, number) {
    let tr = tbody.querySelector('tr[data-agency="' + number + '"]');
    if (tr === null) {
      tr = document.createElement("tr");
      tr.dataset.agency = String(number);
      for (const kind of ["", "num", "", "", "num"]) {
        const td = document.createElement("td");
        if (kind) td.className = kind;
        tr.appendChild(td);
      }
      tr.cells[2].appendChild(document.createElement("progress"));
      const badge = document.createElement("span");
      badge.className = "badge";
      tr.cells[3].appendChild(badge);
      tbody.appendChild(tr);
    }
    return tr;
  }
  function render(s) {
    setText(byId("version"), s.version);
    setText(byId("uptime"), s.uptime_s === undefined ? "" : "· up " + fmt(Math.floor(s.uptime_s)) + " s");
    setText(byId("total-bets"), fmt(s.total_bets));
    setText(byId("rate"), s.bets_per_second === undefined ? "-" : fmt(Math.round(s.bets_per_second)));
    setText(byId("connections"), s.connections === undefined ? "-" : fmt(s.connections));
    setText(byId("done-count"), fmt(s.expected - s.missing.length) + " / " + fmt(s.expected));
    const most = Math.max(1, ...s.agencies.map((a) => a.committed));
    const tbody = byId("agencies");
    for (const a of s.agencies) {
      const tr = row(tbody, a.agency);
      tr.dataset.committed = String(a.committed);
      tr.dataset.done = a.done ? "true" : "false";
      setText(tr.cells[0], String(a.agency));
      setText(tr.cells[1], fmt(a.committed));
      const bar = tr.cells[2].firstElementChild;
      bar.max = most;
      bar.value = a.committed;
      setText(tr.cells[3].firstElementChild, agencyState(a));
      setText(tr.cells[4], a.winners === undefined ? "-" : fmt(a.winners));
    }
    const d = s.draw;
    const draw = byId("draw");
    draw.dataset.state = d.state;
    setText(byId("draw-state"), d.state);
    setText(byId("draw-waiting"), s.missing.length ? "Waiting for agencies " + s.missing.join(", ") + "." : "No agency missing.");
    const scan = byId("draw-progress");
    scan.max = Math.max(1, d.total);
    scan.value = d.state === "done" ? scan.max : d.scanned;
    setText(byId("draw-scanned"), d.state === "open" ? "The scan starts once every agency is done." : fmt(d.scanned) + " of " + fmt(d.total) + " rows scanned");
    setText(byId("winning-number"), d.winning_number === null ? "-" : String(d.winning_number));
    setText(byId("winners"), d.winners === null ? "-" : fmt(d.winners));
  }
  async function poll() {
    const footer = byId("updated");
    try {
      const response = await fetch("status.json", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      setText(footer, "Updated " + new Date().toLocaleTimeString("en-GB") + ", every second.");
      footer.className = "";
    } catch (error) {
      setText(footer, "Not updating: " + error.message);
      footer.className = "stale";
    } finally {
      setTimeout(poll, 1000);
    }
  }
  poll();
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _number(value: float) -> str:
    return f"{value:,.0f}"


def _agency_state(agency: dict) -> str:
    if agency["done"]:
        return "DONE"
    if "connected" not in agency:
        return "not done"
    return "sending" if agency["connected"] else "not connected"


def _agency_row(agency: dict, most: int) -> str:
    winners = _number(agency["winners"]) if "winners" in agency else "-"
    return (
        f'<tr data-agency="{_e(agency["agency"])}" data-committed="{_e(agency["committed"])}"'
        f' data-done="{"true" if agency["done"] else "false"}">'
        f'<td>{_e(agency["agency"])}</td><td class="num">{_e(_number(agency["committed"]))}</td>'
        f'<td><progress max="{_e(most)}" value="{_e(agency["committed"])}"></progress></td>'
        f'<td><span class="badge">{_e(_agency_state(agency))}</span></td><td class="num">{_e(winners)}</td></tr>'
    )


def render_page(status: dict) -> str:
    """The whole page for one status document (the schema of `reactor.status`)."""
    draw = status["draw"]
    missing = status["missing"]
    most = max([1] + [agency["committed"] for agency in status["agencies"]])
    scan_max = max(1, draw["total"])
    scan_value = scan_max if draw["state"] == "done" else draw["scanned"]
    scanned = (
        "The scan starts once every agency is done."
        if draw["state"] == "open"
        else f"{_number(draw['scanned'])} of {_number(draw['total'])} rows scanned"
    )
    waiting = f"Waiting for agencies {', '.join(map(str, missing))}." if missing else "No agency missing."
    uptime = f"· up {_number(int(status['uptime_s']))} s" if "uptime_s" in status else ""
    rate = _number(status["bets_per_second"]) if "bets_per_second" in status else "-"
    connections = _number(status["connections"]) if "connections" in status else "-"
    winning_number = "-" if draw["winning_number"] is None else draw["winning_number"]
    winners = "-" if draw["winners"] is None else _number(draw["winners"])
    rows = "\n".join(_agency_row(agency, most) for agency in status["agencies"])
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Lottery central</title>
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>{_STYLE}</style>
</head>
<body>
<header>
<h1>Lottery central</h1>
<p class="muted">version <span id="version">{_e(status["version"])}</span> <span id="uptime">{_e(uptime)}</span></p>
</header>
<section class="cards">
<div class="card"><div class="label">Bets stored</div><div class="big" id="total-bets">{_e(_number(status["total_bets"]))}</div></div>
<div class="card"><div class="label">Bets per second</div><div class="big" id="rate">{_e(rate)}</div></div>
<div class="card"><div class="label">Agency connections</div><div class="big" id="connections">{_e(connections)}</div></div>
<div class="card"><div class="label">Agencies done</div><div class="big" id="done-count">{_e(_number(status["expected"] - len(missing)))} / {_e(_number(status["expected"]))}</div></div>
</section>
<section id="draw" data-state="{_e(draw["state"])}">
<h2>Draw: <span id="draw-state">{_e(draw["state"])}</span></h2>
<p id="draw-waiting">{_e(waiting)}</p>
<p><progress id="draw-progress" max="{_e(scan_max)}" value="{_e(scan_value)}"></progress>
<span id="draw-scanned">{_e(scanned)}</span></p>
<p>Winning number: <strong id="winning-number">{_e(winning_number)}</strong>; winners: <strong id="winners">{_e(winners)}</strong></p>
</section>
<table>
<thead><tr><th>Agency</th><th class="num">Bets stored</th><th>Compared with the largest</th><th>State</th><th class="num">Winners</th></tr></thead>
<tbody id="agencies">
{rows}
</tbody>
</table>
<footer id="updated">Rendered by the central; updates every second with JavaScript, every 5 s without.</footer>
<script>{_SCRIPT}</script>
</body>
</html>
"""
