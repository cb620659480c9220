"""``rtautoplan review CASE``: suggest mode as a local web page (issue 19; SPEC §5.3).

A ``SuggestSession`` on the case is served on localhost (``127.0.0.1`` only; port 0: any free one):

* ``GET /``: the current step — score, the step's uncertainty and flags, and the planner's top-k
  suggestions side by side, each with its what-if (the DVH difference of every structure drawn as an
  SVG, the score change, Dmean / D2 / D98 changes, the safety verdict) and **Accept** / **Reject**
  buttons; an **Edit** form (any action of the planner, by name); **Finish**.
* ``POST /decide`` (form: decision, index, action) records the decision (``SuggestSession.decide``)
  and shows the next step; ``POST /finish`` writes the plan, report and log to the output folder
  and shows where (the plan is UNAPPROVED).
* ``GET /state.json``: the same as the hook's suggest response (``suggest.offer``).

The page is plain HTML forms and inline SVG (no script, no external resource), so it works in any
browser, also offline.
"""

from __future__ import annotations

import html
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

from rtautoplan.errors import InputError
from rtautoplan.suggest import SuggestSession, offer

log = logging.getLogger(__name__)

CSS = """body{font-family:system-ui,sans-serif;margin:1.2em;color:#222}.cards{display:flex;gap:1em;flex-wrap:wrap}
.card{border:1px solid #bbb;padding:.8em;width:430px}.card.refused{background:#fff3f3}.flag{color:#8a5a00;font-weight:bold}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.15em .4em;text-align:right}
button{font-size:1em;margin:.3em .3em 0 0}.banner{padding:.6em;border:2px solid #17702a;background:#eaf6ec}
.error{padding:.6em;border:2px solid #b00020;background:#fde8ea}"""
COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _e(x) -> str:
    return html.escape(str(x))


def dvh_delta_svg(suggestion: dict, width: int = 400, height: int = 170) -> str:
    """The what-if's DVH difference (% volume after − before, per structure) against dose (Gy), as SVG."""
    doses, deltas = suggestion["dvh_dose_gy"], suggestion["dvh_delta"]
    if not doses or not deltas:
        return "<p>No what-if: the safety filter rejected this action.</p>"
    top = max(1.0, max(abs(v) for vs in deltas.values() for v in vs))
    x = lambda d: 40 + (width - 50) * d / max(doses[-1], 1e-9)  # noqa: E731
    y = lambda v: height / 2 - (height / 2 - 12) * v / top  # noqa: E731
    parts = [f'<svg class="whatif" width="{width}" height="{height + 18}" role="img" '
             f'aria-label="DVH difference of {_e(suggestion["action"])}">',
             f'<line x1="40" y1="{y(0):.1f}" x2="{width - 10}" y2="{y(0):.1f}" stroke="#999"/>',
             f'<text x="2" y="14" font-size="10">+{top:.2g} %</text><text x="2" y="{height - 4}" font-size="10">'
             f'−{top:.2g} %</text><text x="{width - 70}" y="{height + 14}" font-size="10">dose (Gy) → {doses[-1]:.0f}'
             "</text>"]
    for i, (name, values) in enumerate(sorted(deltas.items())):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{x(d):.1f},{y(v):.1f}" for d, v in zip(doses, values))
        parts.append(f'<polyline class="dvh-delta" data-structure="{_e(name)}" fill="none" stroke="{colour}" '
                     f'stroke-width="1.5" points="{points}"/>')
        parts.append(f'<text x="{44 + 75 * (i % 5)}" y="{height + 4 + 10 * (i // 5)}" font-size="10" '
                     f'fill="{colour}">{_e(name)}</text>')
    return "".join(parts) + "</svg>"


def _card(s: dict) -> str:
    rows = "".join(f"<tr><th>{_e(k)}</th>" + "".join(f"<td>{v:+.2f}</td>" for v in m.values()) + "</tr>"
                   for k, m in sorted(s["metrics_delta"].items()))
    head = "<tr><th>Gy</th>" + "".join(f"<th>Δ{_e(m)}</th>" for m in next(iter(s["metrics_delta"].values()), {})) + "</tr>"
    verdict = "passes the safety filter" if s["accepted"] else f"REJECTED [{_e(s['rule'])}] {_e(s['reason'])}"
    delta = "" if s["score_delta"] is None else f", score {s['score']:.4g} ({s['score_delta']:+.4g})"
    index = s["rank"] - 1
    return (f'<div class="card{"" if s["accepted"] else " refused"}" id="suggestion-{index}">'
            f'<h3>{s["rank"]}. {_e(s["action"])}</h3><p>value {s["value"]}{delta}; {verdict}</p>'
            f"{dvh_delta_svg(s)}<table>{head}{rows}</table>"
            f'<form method="post" action="/decide"><input type="hidden" name="index" value="{index}">'
            f'<button id="accept-{index}" name="decision" value="accept">Accept</button>'
            f'<button id="reject-{index}" name="decision" value="reject">Reject</button></form></div>')


def page(state: dict, actions: list[str], message: str = "") -> str:
    """The review page for one step (``suggest.offer``'s state)."""
    u = state.get("uncertainty") or {}
    flags = "".join(f' <span class="flag">{_e(f)}</span>' for f in u.get("flags", []))
    options = "".join(f"<option>{_e(a)}</option>" for a in actions)
    body = [f"<h1>rtautoplan review — step {state['step']}</h1>",
            f'<div class="error">{_e(message)}</div>' if message else "",
            f"<p>Score ({_e(state['score']['system'])}): <strong id=\"score\">{state['score']['current']}</strong>; "
            f"margin {u.get('margin')}, entropy {u.get('entropy')}, ensemble disagreement {u.get('disagreement')}"
            f"{flags}</p>"]
    if state["done"] or not state["suggestions"]:
        body.append("<p id=\"done\">No step left: finish to write the plan.</p>")
    else:
        body.append('<div class="cards">' + "".join(_card(s) for s in state["suggestions"]) + "</div>")
        body.append('<form method="post" action="/decide"><input type="hidden" name="decision" value="edit">'
                    f'Edit — take instead: <select name="action" id="edit-action">{options}</select> '
                    '<button id="edit">Edit</button></form>')
    body.append('<form method="post" action="/finish"><button id="finish">Finish: write the plan (UNAPPROVED)'
                "</button></form>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>rtautoplan review</title>'
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")


def finished_page(response: dict) -> str:
    files = "".join(f"<li>{_e(k)}: {_e(v)}</li>" for k, v in response["files"].items())
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>rtautoplan review</title>'
            f'<style>{CSS}</style></head><body><div class="banner" id="finished">Plan written '
            f"({_e(response['status'])}); UNAPPROVED until a clinician approves it in the TPS.</div><ul>{files}</ul>"
            "</body></html>")


class ReviewServer(ThreadingHTTPServer):
    """The review page of one ``SuggestSession`` writing to ``out``; decisions are serialised."""

    daemon_threads = True

    def __init__(self, session: SuggestSession, out: str | Path, port: int = 0, host: str = "127.0.0.1"):
        super().__init__((host, port), ReviewHandler)
        self.session, self.out, self.lock = session, Path(out), threading.Lock()
        self.finished: dict | None = None
        self.timeout = 0.5  # handle_request returns this often, so a finished session ends the loop

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}/"

    def actions(self) -> list[str]:
        from rtautoplan.loop import describe

        space = getattr(self.session.env, "action_space", None)
        return [describe(self.session.env, a) for a in range(int(space.n))] if hasattr(space, "n") else []


class ReviewHandler(BaseHTTPRequestHandler):
    server: ReviewServer

    def log_message(self, fmt, *args) -> None:
        log.info("review: " + fmt, *args)

    def _send(self, status: int, body: str, kind: str = "text/html; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _page(self, message: str = "", status: int = 200) -> None:
        if self.server.finished is not None:
            return self._send(200, finished_page(self.server.finished))
        self._send(status, page(offer(self.server.session), self.server.actions(), message))

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        with self.server.lock:
            if self.path == "/state.json":
                return self._send(200, json.dumps(offer(self.server.session)), "application/json")
            if self.path != "/":
                return self._send(404, "not found", "text/plain")
            self._page()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(min(length, 1 << 16)).decode("utf-8", "replace")).items()}
        with self.server.lock:
            try:
                if self.path == "/finish":
                    from rtautoplan.hook import response

                    _, result, files = self.server.session.finish(self.server.out)
                    self.server.finished = response(result, files)
                elif self.path == "/decide":
                    index = form.get("index", "0")
                    if not index.isdigit():
                        raise InputError("index", f"{index!r} is not a suggestion number", "Use the page's buttons")
                    self.server.session.decide(form.get("decision", ""), int(index), form.get("action"))
                else:
                    return self._send(404, "not found", "text/plain")
            except InputError as error:
                return self._page(str(error), 400)
            self._page()


def serve_review(case_dir: str | Path, out: str | Path, options=None, k: int = 3, port: int = 0,
                 on_ready=None) -> dict | None:
    """Open a session on ``case_dir`` and serve its review page until it is finished (or interrupted);
    ``on_ready(url)`` is called once the server listens. Returns the finished plan's response."""
    from rtautoplan.folder import check_output

    check_output(Path(out))
    session = SuggestSession.open(case_dir, options, k)
    server = ReviewServer(session, out, port)
    try:
        if on_ready is not None:
            on_ready(server.url)
        while server.finished is None:
            server.handle_request()
        return server.finished
    finally:
        server.server_close()
