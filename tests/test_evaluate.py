"""rtautoplan evaluate: held-out variants planned in the loop; the seed-style table, CSV and PNG."""

import csv
import json

from rtautoplan.cli import main
from rtautoplan.evaluate import CaseResult, summary


def test_summary_statistics():
    rows = [CaseResult(1000, 6.0, 9.0, 3, 3, 0, True, 1.0), CaseResult(1001, 8.0, 8.0, 0, 5, 1, False, 2.0)]
    s = summary(rows)
    assert s["before_mean"] == 7.0 and s["after_mean"] == 8.5 and s["reached_max_pct"] == 50.0
    assert s["improved_pct"] == 50.0 and s["worse"] == 0 and abs(s["after_sd"] - 0.7071) < 1e-3
    losses = [CaseResult(1000, 3.0, 2.0, 3, 3, 0, False, 1.0, higher_is_better=False),
              CaseResult(1001, 1.0, 1.5, 2, 2, 0, False, 1.0, higher_is_better=False)]
    assert summary(losses)["improved_pct"] == 50.0 and summary(losses)["worse"] == 1  # a loss: lower is better


def test_evaluate_command_plans_held_out_cases(tmp_path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--policy", "random", "--site", "prostate", "--cases", "2", "--seed", "1000",
                 "--max-steps", "2", "--dose-grid-factor", "2", "4", "4", "-o", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "random_prostate_photon_random.csv")))
    assert [r["case_seed"] for r in rows] == ["1000", "1001"]
    assert all(float(r["after"]) >= float(r["before"]) for r in rows)  # the loop keeps the best plan
    assert json.loads((out / "random_prostate_photon_random.json").read_text())["cases"] == 2
    assert (out / "random_prostate_photon_random.png").stat().st_size > 5000


def test_table1_command_compares_every_planner_with_the_template(tmp_path):
    out = tmp_path / "t1"
    assert main(["evaluate", "--table1", "--cases", "2", "--seed", "1000", "--max-steps", "2",
                 "--dose-grid-factor", "2", "4", "4", "-o", str(out)]) == 0
    with open(out / "sarsa_table1.csv") as fh:
        rows = list(csv.DictReader(fh))
    planners = {"template", "parotid-limit", "oar-limit", "sarsa-model1", "sarsa-model2", "rule-based", "random"}
    expected = sorted((p, s) for p in planners for s in ("1000", "1001"))
    assert sorted((r["planner"], r["case_seed"]) for r in rows) == expected
    by = {(r["planner"], r["case_seed"]): r for r in rows}
    for seed in ("1000", "1001"):
        parotids = {p: float(by[p, seed]["LP_mean_norm_gy"]) + float(by[p, seed]["RP_mean_norm_gy"]) for p in planners}
        assert parotids["parotid-limit"] < parotids["template"]  # the strongest push the objectives can make
        assert float(by["template", seed]["steps"]) == 0 and float(by["sarsa-model2", seed]["steps"]) <= 2
    text = (out / "sarsa_table1.md").read_text()
    assert "| sarsa-model2 vs template |" in text and "dose grid (2, 4, 4)" in text
