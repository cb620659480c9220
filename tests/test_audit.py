"""The audit trail (SPEC §5.7): what plan_log.json records per step and per plan, and
``rtautoplan audit`` detecting a changed input, a changed weights file and an edited log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from rtautoplan.audit import EXIT_MISMATCH, PACKAGE_ROOT, seal, sha256_file, verify
from rtautoplan.cli import main
from rtautoplan.policies.behaviour import EpsilonGreedy

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """sample prostate01 (copied) planned by the trained ACER planner, two steps on a coarse engine."""
    from rtautoplan.adapters.inhouse import InHousePhoton
    from rtautoplan.folder import PlanOptions, plan_folder

    root = tmp_path_factory.mktemp("audit")
    case = root / "case"
    shutil.copytree(SAMPLE, case)
    options = PlanOptions(tps=lambda: InHousePhoton(n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30,
                                                    cache_dir=root / "dij"), max_steps=1, policy="acer")
    plan_folder(case, root / "out", options)
    return case, root / "out"


def test_the_log_records_mu_state_convergence_weights_and_safety(planned):
    _, out = planned
    log = json.loads((out / "plan_log.json").read_text())
    assert log["steps"], "the planner took no step"
    weights = {w["file"]: w for w in log["weights"]}
    assert "policies/weights/acer_prostate_v2.pt" in weights  # the planner, then its ensemble
    for w in log["weights"]:
        assert w["sha256"] == sha256_file(PACKAGE_ROOT / w["file"]) and w["version"].endswith(w["sha256"][:12])
    for s in log["steps"]:
        assert s["mu"] == 1.0 and isinstance(s["action_id"], int)  # the greedy planner is deterministic
        assert np.asarray(s["state"]).size == 300  # seed 000's 3 × 100 DVH state
        if s["accepted"]:
            assert s["convergence"]["iterations"] > 0 and "converged" in s["convergence"]
        u = s["uncertainty"]
        assert u["kind"] == "probability" and 0.0 <= u["margin"] <= 1.0 and 0.0 <= u["entropy"] <= np.log(18) + 1e-9
        assert u["ensemble"] >= 1 and 0.0 <= u["disagreement"] <= 1.0
        assert ("low margin" in u["flags"]) == (u["margin"] < 0.1)
        if s["accepted"]:
            assert set(s["attribution"]) >= {"Rectum", "top"}  # integrated gradients of the chosen action
    assert log["safety"]["attempts"] == len(log["steps"]) and 0.0 <= log["safety"]["rate"] <= 1.0
    assert log["inputs"]["files"]["prescription.json"] == sha256_file(planned[0] / "prescription.json")
    assert "Uncertainty" in (out / "report.html").read_text()


def test_audit_passes_on_an_untouched_plan_and_prints_the_trail(planned, capsys):
    _, out = planned
    assert main(["audit", str(out / "plan_log.json")]) == 0
    printed = capsys.readouterr().out
    checks = 2 + len(json.loads((out / "plan_log.json").read_text())["weights"])  # one per weights file
    assert "step  1" in printed and "μ=" in printed and f"{checks} of {checks} checks pass" in printed


def test_audit_fails_on_a_changed_input_file(planned, tmp_path, capsys):
    case, out = planned
    moved = tmp_path / "case"
    shutil.copytree(case, moved)
    rx = json.loads((moved / "prescription.json").read_text())
    rx["fractions"] = rx.get("fractions", 39) + 1
    (moved / "prescription.json").write_text(json.dumps(rx))
    assert main(["audit", str(out), "--case", str(moved)]) == EXIT_MISMATCH
    assert "MISMATCH input prescription.json" in capsys.readouterr().out


def test_audit_fails_on_an_edited_log_and_on_changed_weights(planned, tmp_path):
    _, out = planned
    log = json.loads((out / "plan_log.json").read_text())
    edited = dict(log, steps=[dict(log["steps"][0], accepted=not log["steps"][0]["accepted"])] + log["steps"][1:])
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    _, checks = verify(tmp_path / "edited.json")
    assert [c.item for c in checks if not c.ok] == ["plan log content"]
    weights = tmp_path / "acer.pt"
    shutil.copy(PACKAGE_ROOT / log["weights"][0]["file"], weights)
    moved = seal({**{k: v for k, v in log.items() if k != "log_sha256"},
                  "weights": [{**log["weights"][0], "file": str(weights)}]})
    (tmp_path / "moved.json").write_text(json.dumps(moved))
    assert all(c.ok for c in verify(tmp_path / "moved.json")[1])
    with open(weights, "r+b") as f:  # one flipped byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    bad = [c for c in verify(tmp_path / "moved.json")[1] if not c.ok]
    assert len(bad) == 1 and bad[0].item.startswith("weights") and "SHA-256" in bad[0].detail


def test_audit_of_a_missing_or_foreign_file_is_a_clear_error(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nope.json")]) == 2
    (tmp_path / "x.json").write_text("[1, 2]")
    assert main(["audit", str(tmp_path / "x.json")]) == 2
    assert "not a plan log" in capsys.readouterr().err


class _Toy:
    """Discrete(5), action 0 moves nothing (masked out)."""

    class action_space:
        n = 5

    def action_mask(self):
        return np.array([False, True, True, True, True])


class _Base:
    name = "base"

    def rank(self, observation):
        return [(0, 9.0), (3, 5.0), (1, 1.0)]


def test_the_behaviour_policy_has_full_support_and_ranks_its_draw_first_with_mu():
    policy = EpsilonGreedy(_Base(), _Toy(), epsilon=0.4, seed=3)
    mu = policy.probabilities(None)
    assert mu.sum() == pytest.approx(1.0) and mu[0] == 0.0 and (mu[1:] >= 0.4 / 4 - 1e-12).all()
    assert mu[3] == pytest.approx(0.6 + 0.1)  # the base's first moving choice
    draws = [policy.rank(None)[0] for _ in range(2000)]
    assert all(v == pytest.approx(mu[a]) for a, v in draws)
    freq = np.bincount([a for a, _ in draws], minlength=5) / len(draws)
    assert np.abs(freq - mu).max() < 0.05
    with pytest.raises(ValueError, match="full support"):
        EpsilonGreedy(_Base(), _Toy(), epsilon=0.0)
