"""The plan report: DVH curves of a known dose, the PNGs, and one self-contained, escaped HTML page."""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from conftest import build_small_case
from rtautoplan.case import Grid, Role, Structure
from rtautoplan.plan import Dose
from rtautoplan.report import dose_wash, dvh_curves, metrics_table, write_report
from rtautoplan.scoring import Criterion, Score




SCORES = (
    Score("proknow9", 7.5, 9.0, (
        Criterion("PTV coverage", "CTV_6000", "D95", 57.9, "Gy", "≥ 57 Gy", 3.0, 3.0, True),
        Criterion("Cord max", "SpinalCord", "D0.03cc", 46.2, "Gy", "< 45 Gy", 0.5, 3.0, False),
        Criterion("<b>odd & name</b>", "Esophagus", "Dmean", 20.0, "Gy", "< 34 Gy", 4.0, 3.0, None)), True),
    Score("relative_loss", 0.12, None, (
        Criterion("Lens loss", "Lens_L", "Dmax", 3.1, "Gy", "< 5 Gy", 0.12, None, True),), False),
)
STEPS = [
    {"step": 0, "action": "start", "score": 6.0, "accepted": True, "reason": "", "alternatives": [],
     "parameters": {"SpinalCord Dmax": 40.0}, "time_s": 0.8},
    {"step": 1, "action": "lower SpinalCord Dmax", "score": 7.5, "accepted": True, "reason": "",
     "alternatives": [("lower SpinalCord Dmax", 0.61), ("raise weight Esophagus", 0.22), ("stop", 0.1)],
     "parameters": {"SpinalCord Dmax": 36.0, "Esophagus weight": 1.0}, "time_s": 1.2},
    {"step": 2, "action": "raise weight Esophagus", "score": 7.0, "accepted": False,
     "reason": "score fell <0.5>", "alternatives": [("raise weight Esophagus", 0.4)],
     "parameters": {"Esophagus weight": 1.5}, "time_s": 1.1},
]


def uniform_dose(case, gy_in_ctv=50.0, gy_elsewhere=0.0) -> Dose:
    gy = np.full(case.grid.shape, gy_elsewhere)
    gy[case.structure("CTV_6000").mask] = gy_in_ctv
    return Dose(case.grid, gy)


@pytest.fixture(scope="module")
def case():
    base = build_small_case()
    couch = Structure("Couch", np.ones(base.grid.shape, bool), Role.OTHER)
    return base.with_structures(base.structures + (couch,))


@pytest.fixture(scope="module")
def report(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    gy = uniform_dose(case).gy + np.linspace(0, 10, case.grid.shape[2])  # some fall-off for the wash
    path = write_report(out, case, Dose(case.grid, gy), SCORES, STEPS, title="Small <case> report",
                        extra={"policy": "ppo", "modality": "photon", "adapter": "inhouse", "seed": 3})
    return path


class Page(HTMLParser):
    """Tags and attributes of a page, and the rows of each table by id."""

    def __init__(self, text: str):
        super().__init__()
        self.attrs, self.rows, self._table, self._in_body = [], {}, None, False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.rows[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows[self._table] += 1

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False


def test_dvh_of_a_uniform_dose_steps_at_that_dose(case):
    curves = {c.name: c for c in dvh_curves(case, uniform_dose(case, 50.0, 0.0))}
    ctv = curves["CTV_6000"]
    assert np.all(ctv.volume_percent[ctv.dose_gy <= 50.0] == 100.0)
    assert np.all(ctv.volume_percent[ctv.dose_gy > 50.0 + 1e-9] == 0.0)
    assert ctv.dose_gy[-1] >= 50.0
    cord = curves["SpinalCord"]  # outside the CTV: 0 Gy, so only the 0 Gy edge has 100 %
    assert cord.volume_percent[0] == 100.0 and np.all(cord.volume_percent[1:] == 0.0)
    ext = curves["External"]
    fraction_in_ctv = case.structure("CTV_6000").mask.count / case.structure("External").mask.count
    assert ext.volume_percent[np.searchsorted(ext.dose_gy, 25.0)] == pytest.approx(100 * fraction_in_ctv)


def test_dvh_styles_and_omitted_roles(case):
    styles = {c.name: c.linestyle for c in dvh_curves(case, uniform_dose(case))}
    assert styles == {"CTV_6000": "-", "SpinalCord": "--", "Esophagus": "--", "Lens_L": "--", "External": ":"}


def test_a_dose_on_another_grid_is_refused(case):
    g = case.grid
    other = Grid(g.origin, g.spacing, (g.shape[0] - 1,) + tuple(g.shape[1:]))
    with pytest.raises(ValueError, match="resample"):
        dvh_curves(case, Dose(other, np.zeros(other.shape)))


def test_metrics_table_has_a_row_per_criterion():
    rows = metrics_table(SCORES)
    assert [(r["system"], r["criterion"]) for r in rows] == [
        (s.system, c.name) for s in SCORES for c in s.criteria]
    assert rows[1] == {"system": "proknow9", "criterion": "Cord max", "structure": "SpinalCord",
                       "metric": "D0.03cc", "value": 46.2, "unit": "Gy", "goal": "< 45 Gy", "score": 0.5,
                       "max_score": 3.0, "passed": False}


def test_pngs_are_images_of_plausible_size(report):
    for name in ("dvh.png", "dose.png", "score.png"):
        image = Image.open(report.parent / name)
        image.verify()
        width, height = Image.open(report.parent / name).size
        assert 500 <= width <= 3000 and 300 <= height <= 3000, (name, width, height)


def test_dose_wash_is_coloured(case, tmp_path):
    rgb = np.asarray(Image.open(dose_wash(case, uniform_dose(case, 60.0), tmp_path / "wash.png")).convert("RGB"),
                     int)
    coloured = np.abs(rgb[..., 0] - rgb[..., 2]) > 60  # CT is grey; the wash (and contours) are not
    assert coloured.mean() > 0.005


def test_page_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    images = [a for tag, a in page.attrs if tag == "img"]
    assert len(images) == 3
    dvh_png = (report.parent / "dvh.png").read_bytes()
    assert any(base64.b64decode(a["src"].split(",", 1)[1]) == dvh_png for a in images)
    for image in images:
        assert image["src"].startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1]))).verify()
    assert not [a for _, a in page.attrs if "href" in a]
    assert not [tag for tag, _ in page.attrs if tag in ("link", "script", "iframe", "object")]
    assert 'src="http' not in text and "file:" not in text and "url(" not in text


def test_page_names_every_structure_criterion_and_header_item(report, case):
    text = report.read_text(encoding="utf-8")
    for s in case.structures:
        if s.role is not Role.OTHER:
            assert f">{s.name}<" in text
    for score in SCORES:
        assert score.system in text
        for c in score.criteria:
            assert c.structure in text and c.metric in text
    for name in ("PTV coverage", "Cord max", "Lens loss"):
        assert name in text
    for item in ("ppo", "photon", "inhouse", "CTV_6000 60 Gy in 30 fractions", "Seed"):
        assert item in text


def test_page_escapes_strings(report):
    text = report.read_text(encoding="utf-8")
    assert "&lt;b&gt;odd &amp; name&lt;/b&gt;" in text and "<b>odd" not in text
    assert "Small &lt;case&gt; report" in text and "score fell &lt;0.5&gt;" in text


def test_decisions_table_has_a_row_per_step(report):
    page = Page(report.read_text(encoding="utf-8"))
    assert page.rows["decisions"] == len(STEPS)
    assert page.rows["metrics-proknow9"] == 3 and page.rows["metrics-relative_loss"] == 1
    text = report.read_text(encoding="utf-8")
    assert "raise weight Esophagus: 0.22" in text and "SpinalCord Dmax = 36" in text


def test_without_steps_there_is_no_decisions_section(case, tmp_path):
    path = write_report(tmp_path, case, uniform_dose(case), SCORES[:1])
    assert "decisions" not in Page(path.read_text(encoding="utf-8")).rows
    assert not (tmp_path / "score.png").exists()
