"""The plan report: one self-contained HTML page (PNGs inlined as data URIs, inline CSS, no links).

Scores are read by attribute only (``system, total, maximum, higher_is_better, criteria``; each
criterion ``name, structure, metric, value, unit, goal, score, max_score, passed``), so any object
of that shape works. Every string that reaches the page is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rtautoplan.case import Case
from rtautoplan.dvh import metrics
from rtautoplan.plan import Dose
from rtautoplan.report.figures import check_same_grid, drawn_structures, dose_wash, dvh_plot, score_plot

HEADER_FIRST = ("modality", "adapter", "policy")  # extra keys shown first, in this order
STATISTICS = (("Dmean", "Dmean"), ("D98", "D98%"), ("D95", "D95%"), ("D50", "D50%"), ("D2", "D2%"),
              ("Dmax", "Dmax"))
YES, NO = '<td class="pass">yes</td>', '<td class="fail">no</td>'
CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:left;vertical-align:top;font-size:.9em}th{background:#f0f0f0}td.num{text-align:right}
.pass{color:#17702a}.fail{color:#b00020;font-weight:bold}tr.rejected{background:#fff3f3}tr.flagged td:first-child{border-left:4px solid #e0a000}.flag{color:#8a5a00}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.note{color:#666;font-size:.85em}
.banner{padding:.8em 1em;margin:.5em 0 1em;border:2px solid;font-size:1.05em}
.banner.fail{background:#fde8ea;border-color:#b00020}.banner.pass{background:#eaf6ec;border-color:#17702a}
.banner.warn{background:#fff8e1;border-color:#b07000;color:#6b4500}"""


def _e(value: Any) -> str:
    """HTML-escaped text of ``value`` (enums by their value)."""
    return html.escape(str(getattr(value, "value", value)), quote=True)


def _num(value: float | None) -> str:
    if value is None:
        return ""
    value = float(value)
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _verdict(passed: bool | None) -> str:
    if passed is None:
        return "<td>—</td>"
    return '<td class="pass">pass</td>' if passed else '<td class="fail">FAIL</td>'


def _table(head: Iterable[str], rows: Iterable[str], table_id: str = "") -> str:
    """A table from escaped header texts and ready ``<tr>`` rows."""
    ident = f' id="{table_id}"' if table_id else ""
    cells = "".join(f"<th>{h}</th>" for h in head)
    return f"<table{ident}><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def metrics_table(scores: Sequence[Any]) -> list[dict]:
    """One row per criterion of each scoring system: system, criterion, structure, metric, value, unit,
    goal, score, max_score, passed."""
    return [row for sc in scores for row in _rows(sc)]


def _rows(sc: Any) -> list[dict]:
    return [{"system": sc.system, "criterion": c.name, "structure": c.structure, "metric": c.metric,
             "value": float(c.value), "unit": c.unit, "goal": c.goal, "score": float(c.score),
             "max_score": None if c.max_score is None else float(c.max_score), "passed": c.passed}
            for c in sc.criteria]


def metrics_html(scores: Sequence[Any]) -> str:
    """Per scoring system: its total and a table of its criteria against their goals."""
    parts = []
    for sc in scores:
        maximum = "" if sc.maximum is None else f" / {_num(sc.maximum)}"
        better = "higher" if sc.higher_is_better else "lower"
        parts.append(f"<h3>{_e(sc.system)}: {_num(sc.total)}{maximum} <span class=\"note\">({better} is better)"
                     "</span></h3>")
        body = [f"<tr><td>{_e(r['criterion'])}</td><td>{_e(r['structure'])}</td><td>{_e(r['metric'])}</td>"
                f"<td class=\"num\">{_num(r['value'])} {_e(r['unit'])}</td><td>{_e(r['goal'])}</td>"
                f"<td class=\"num\">{_num(r['score'])}"
                f"{'' if r['max_score'] is None else ' / ' + _num(r['max_score'])}</td>{_verdict(r['passed'])}</tr>"
                for r in _rows(sc)]
        parts.append(_table(("Criterion", "Structure", "Metric", "Value", "Goal", "Score", "Pass"), body,
                            "metrics-" + re.sub(r"[^A-Za-z0-9_-]", "_", str(sc.system))))
    return "\n".join(parts)


def statistics_html(case: Case, dose: Dose) -> str:
    """Dose statistics (Gy) and volume (cm³) of every drawn structure, from ``rtautoplan.dvh.metrics``."""
    check_same_grid(case, dose)
    body = []
    for s in drawn_structures(case):
        m = metrics(dose.gy, s.mask, case.grid.voxel_volume_cm3)
        cells = "".join(f'<td class="num">{_num(m[key])}</td>' for key, _ in STATISTICS)
        body.append(f"<tr><td>{_e(s.name)}</td><td>{_e(s.role)}</td>"
                    f"<td class=\"num\">{_num(m['volume_cm3'])}</td>{cells}</tr>")
    head = ("Structure", "Role", "Volume (cm³)") + tuple(f"{label} (Gy)" for _, label in STATISTICS)
    return _table(head, body, "statistics")


def uncertainty_html(u: Mapping | None) -> str:
    """A step's uncertainty (``rtautoplan.uncertainty.assess``): margin, entropy, ensemble disagreement, flags."""
    if not u:
        return ""
    parts = [f"margin {_num(u.get('margin'))}", f"H {_num(u.get('entropy'))}"] if u.get("entropy") is not None \
        else [f"margin {_num(u.get('margin'))}"]
    if u.get("ensemble"):
        parts.append(f"ensemble ({u['ensemble']}) disagrees {_num(u.get('disagreement'))}")
    flags = "".join(f'<br><strong class="flag">{_e(f)}</strong>' for f in u.get("flags") or ())
    return "<br>".join(_e(p) for p in parts) + flags


def attribution_html(a: Mapping | None) -> str:
    """Integrated gradients of the chosen action (``rtautoplan.attribution``): per structure, and the top input."""
    if not a:
        return ""
    structure, dose, value = a["top"]
    parts = [f"{_e(k)} {v:+.3f}" for k, v in a.items() if k != "top"]
    return "<br>".join(parts) + f"<br>top: {_e(structure)} at {dose:.1f} Gy ({value:+.3f})"


def decisions_html(steps: Sequence[Mapping]) -> str:
    """The closed-loop decisions, one row per step: action, score, accepted or why not (the rule), the
    top alternatives with their probability or Q-value, the uncertainty (flagged steps marked), the
    parameters after the step, time (s)."""
    body = []
    for s in steps:
        accepted = bool(s.get("accepted", True))
        flagged = " flagged" if (s.get("uncertainty") or {}).get("flags") else ""
        rule = f"[{s['rule']}] " if s.get("rule") else ""
        alternatives = "<br>".join(f"{_e(a)}: {_num(v)}" for a, v in s.get("alternatives", ()))
        parameters = "<br>".join(f"{_e(k)} = {_e(_num(v) if _is_number(v) else v)}"
                                 for k, v in dict(s.get("parameters", {})).items())
        body.append(f"<tr class=\"{'accepted' if accepted else 'rejected'}{flagged}\"><td class=\"num\">"
                    f"{_e(s.get('step', ''))}</td><td>{_e(s.get('action', ''))}</td><td class=\"num\">"
                    f"{_num(s.get('score'))}</td>{YES if accepted else NO}"
                    f"<td>{_e(rule + s.get('reason', ''))}</td><td>{alternatives}</td>"
                    f"<td>{uncertainty_html(s.get('uncertainty'))}</td><td>{attribution_html(s.get('attribution'))}</td>"
                    f"<td>{parameters}</td>"
                    f"<td class=\"num\">{_num(s.get('time_s'))}</td></tr>")
    return _table(("Step", "Action", "Score", "Accepted", "Reason", "Alternatives", "Uncertainty",
                   "Why (integrated gradients of log π over the DVH state)", "Parameters", "Time (s)"), body, "decisions")


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _header(case: Case, dose: Dose, extra: Mapping[str, Any]) -> str:
    rx = case.prescription
    levels = "; ".join(f"{lv.target} {lv.dose_gy:g} Gy" for lv in rx.levels)
    items = [("Case", case.case_id), ("Prescription", f"{levels} in {rx.fractions} fractions"),
             ("Dose type", dose.kind)]
    keys = [k for k in HEADER_FIRST if k in extra] + [k for k in extra if k not in HEADER_FIRST]
    items += [(k.replace("_", " ").capitalize(), extra[k]) for k in keys]
    return "<table id=\"header\"><tbody>" + "".join(
        f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items) + "</tbody></table>"


def gate_html(gate: Mapping[str, Any]) -> str:
    """The clinical gate (``rtautoplan.gate.GateResult.as_json()``): a banner, then every goal and hot-spot rule."""
    if gate["acceptable"]:
        banner = ('<div class="banner pass" id="gate">Clinical gate passed: every required goal and hot-spot rule '
                  "is met. The plan is UNAPPROVED until a clinician reviews it.</div>")
    else:
        reasons = "".join(f"<li>{_e(r)}</li>" for r in gate["reasons"])
        banner = (f'<div class="banner fail" id="gate"><strong>NOT ACCEPTABLE</strong>: this plan misses '
                  f"{len(gate['reasons'])} required goal(s) or hot-spot rule(s). Do not treat with it as it is."
                  f"<ul>{reasons}</ul></div>")
    if gate["warnings"]:
        banner += '<div class="banner warn">' + "".join(f"<div>{_e(w)}</div>" for w in gate["warnings"]) + "</div>"
    units = {"Gy": "Gy", "%": "%", "cc": "cm³"}
    rows = []
    for g in gate["goals"]:
        bound = " and ".join(b for b in (f"≥ {g['lower']:g}" if g["lower"] is not None else "",
                                         f"≤ {g['upper']:g}" if g["upper"] is not None else "") if b)
        rows.append(f"<tr><td>{_e(g['roi'])}</td><td>{_e(g['metric'])}</td><td>{_e(bound)} {units[g['unit']]}</td>"
                    f'<td class="num">{_num(g["value"])}</td>{_verdict(g["met"])}'
                    f"<td>{'must' if g['priority'] == 1 else 'desired'}</td><td>{_e(g['source'])}</td></tr>")
    for h in gate["hotspots"]:
        rows.append(f"<tr><td colspan=\"2\">{_e(h['rule'])}</td><td>≤ {_num(h['limit_gy'])} Gy</td>"
                    f'<td class="num">{_num(h["value_gy"])}</td>{_verdict(h["met"])}<td>must</td>'
                    "<td>hot-spot rule (rtautoplan.gate)</td></tr>")
    table = _table(("ROI", "metric", "goal", "achieved", "met", "priority", "source"), rows, "goals")
    return banner + "<h2>Clinical goals</h2>" + table


def write_report(out_dir: str | Path, case: Case, dose: Dose, scores: Sequence[Any], steps: Sequence[Mapping] = (),
                 title: str = "rtautoplan plan report", extra: Mapping[str, Any] | None = None,
                 gate: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.html`` (self-contained) with ``dvh.png``, ``dose.png`` and, with steps, ``score.png``
    next to it in ``out_dir``; returns the HTML path.

    gate: the clinical gate's verdict (``GateResult.as_json()``), shown first as a banner and a goal table.
    extra: header lines (modality, adapter, policy first, then any other key → value); its "scoring"
    entry, if any, names the system the step scores are in (the score plot's axis label).
    steps: mappings with step, action, score, accepted, reason, alternatives [(action, value)],
    parameters {name: value}, time_s.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    sections = [f"<h1>{_e(title)}</h1>", *([gate_html(gate)] if gate is not None else []),
                _header(case, dose, extra), "<h2>Dose-volume histograms</h2>", _image(dvh_plot(case, dose, out / "dvh.png"), "DVH"),
                '<p class="note">Targets solid, organs at risk dashed, External / Gap / Ring dotted; computed on '
                "the contours as drawn.</p>",
                "<h2>Dose</h2>", _image(dose_wash(case, dose, out / "dose.png"), "dose colour wash"),
                "<h2>Dose statistics</h2>", statistics_html(case, dose),
                "<h2>Plan quality</h2>", metrics_html(scores) if scores else '<p class="note">No scores.</p>']
    if steps:
        plot = score_plot(steps, out / "score.png", str(extra.get("scoring", "")))
        sections += ["<h2>Decisions</h2>", _image(plot, "score per step"),
                     decisions_html(steps)]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
