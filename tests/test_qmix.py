"""QMIX for seed 003 (policies/qmix.py): networks, the ε schedule, and reproducible training against
the PHOENIX server."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtautoplan.adapters.phoenix_api import PhoenixServer
from rtautoplan.errors import InputError
from rtautoplan.policies import env_carbon as C, qmix as Q


def test_dueling_heads_and_monotonic_mixer():
    torch.manual_seed(0)
    agent, mixer = Q.AgentNet(hidden=16), Q.Mixer(hidden=16, embed=8)
    obs = torch.rand(2, 4, *Q.OBS_SHAPE)
    q, _ = agent(obs)
    assert q.shape == (2, 4, 45, 3)
    # Eq. 3: the advantages are centred, so the mean over actions is V^i
    v = torch.einsum("blh,nh->bln", agent.lstm(torch.relu(agent.embed(obs.flatten(2))))[0], agent.v_w) + agent.v_b
    torch.testing.assert_close(q.mean(-1), v)
    # the LSTM carries history: the same last DVH after different histories gives different Q
    other = obs.clone()
    other[:, 0] = 0.0
    assert not torch.allclose(agent(other)[0][:, -1], q[:, -1])
    # stepping one observation at a time with the hidden state equals the whole sequence
    hc, steps = None, []
    for t in range(4):
        qt, hc = agent(obs[:, t:t + 1], hc)
        steps.append(qt)
    torch.testing.assert_close(torch.cat(steps, 1), q)
    # Eq. 2: ∂Q_tot/∂Q_i ≥ 0 for every agent, also for untrained random weights
    qs = torch.randn(2, 4, 45, requires_grad=True)
    mixer(qs, obs).sum().backward()
    assert (qs.grad >= 0).all() and (qs.grad > 0).any()


def test_epsilon_schedule():
    args = Q.Args()
    assert Q.epsilon(0, args) == pytest.approx(0.9) and Q.epsilon(4, args) == pytest.approx(0.9)
    assert Q.epsilon(5, args) == pytest.approx(0.81) and Q.epsilon(250, args) == pytest.approx(0.9 * 0.9 ** 50)


def _short(tmp_path, name, seed=0) -> Q.Args:
    return Q.Args(seed=seed, episodes=4, data_workers=2, t_steps=2, batch=2, updates=2, target_every=1,
                  hidden=16, mix_embed=8, max_iterations=15, out=str(tmp_path / f"{name}.pt"), progress=False)


def test_short_training_twice_gives_identical_weights(make_small_case, tmp_path):
    """Two data workers collect in parallel against one server; the same seed gives the same weights,
    another seed others; the record names the engine and the cases seen; the policy loads and acts."""
    case = make_small_case()
    with PhoenixServer(workers=2) as server:
        first = Q.train(_short(tmp_path, "a"), case=case, server=server)
        Q.train(_short(tmp_path, "b"), case=case, server=server)
        Q.train(_short(tmp_path, "c", seed=1), case=case, server=server)
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "abc")
    for part in ("agent", "mixer"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    assert any(not torch.equal(a["agent"][k], c["agent"][k]) for k in a["agent"])
    assert first["updates"] == 4 and first["population"]["episodes_per_case"] == {case.case_id: 4}
    assert first["engine"]["max_iterations"] == 15 and len(first["rounds"]) == 2
    assert all(np.isfinite(r["mean_return"]) for r in first["rounds"])
    policy = Q.load(path=tmp_path / "a.pt")
    obs = {a: np.zeros(Q.OBS_SHAPE, np.float32) for a in C.AGENTS}
    actions = policy.act(obs)
    assert set(actions) == set(C.AGENTS) and set(actions.values()) <= {0, 1, 2}
    assert policy.act(obs) == actions  # the same observation again: the same history, not a new step


def test_missing_weights_say_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="rtautoplan train qmix"):
        Q.load(path=tmp_path / "none.pt")


def test_planning_setup_matches_training():
    """``--policy qmix`` plans carbon H&N on the engine settings the weights were trained with."""
    from rtautoplan.pipeline import setup_for
    from rtautoplan.policies import POLICIES, TRAINERS

    setup = setup_for("hn", "carbon", "qmix")
    assert setup.env == "carbon_hn" and setup.max_steps == Q.Args().t_steps
    assert setup.adapter_options["max_iterations"] == Q.Args().max_iterations
    assert "qmix" in POLICIES and TRAINERS["qmix"] == "rtautoplan.policies.qmix"


def test_ray_data_workers_need_a_server_the_actors_reach(tmp_path):
    """The Ray actors are HTTP clients: an in-process server, or a loopback server with a remote cluster's address,
    is refused with the fix before Ray is started."""
    with PhoenixServer(workers=1) as server:
        with pytest.raises(InputError, match="over HTTP.*Give --url"):
            Q.data_workers(Q.Args(workers="ray"), server)
    loopback = type("Server", (), {"url": "http://127.0.0.1:8642"})()
    with pytest.raises(InputError, match="phoenix-server --host ADDRESS"):
        Q.data_workers(Q.Args(workers="ray", ray_address="ray://head:10001"), loopback)
    with pytest.raises(InputError, match="Use --workers threads or --workers ray"):
        Q.data_workers(Q.Args(workers="processes"), loopback)


def test_thread_data_workers_never_import_ray():
    import subprocess
    import sys

    code = ("import sys\nfrom rtautoplan.adapters.phoenix_api import PhoenixServer\n"
            "from rtautoplan.policies import qmix as Q\nfrom rtautoplan.training import parse\n"
            "args = parse(Q.Args, ['--data-workers', '2'], 'q')\nassert args.workers == 'threads'\n"
            "with PhoenixServer(workers=1) as server:\n    pool = Q.data_workers(args, server)\n"
            "    assert len(pool.envs) == 2\n    pool.close(Q._close)\n"
            "assert 'ray' not in sys.modules, 'ray was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
