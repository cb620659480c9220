"""Batch re-planning on a local Ray cluster of 2 worker nodes (rtautoplan/cluster.py).

The root mixes a good case (prostate01), a corrupt one (a CT slice removed), a CT series without
its RTSTRUCT, an empty folder and a folder of notes; plans use a coarse in-house engine and 2 steps
(as tests/test_batch.py). The cluster: one local node of 2 CPUs (2 worker processes), started once
for the module (≈ 10 s). Without Ray the module skips, except in CI
(RTAUTOPLAN_REQUIRE_TOOLS=1), where Ray is installed and its absence is a failure.
"""

from __future__ import annotations

import csv
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rtautoplan.adapters.inhouse import InHousePhoton
from rtautoplan.batch import SUMMARY_FILE, replan_folder
from rtautoplan.cluster import RaySettings, estimate_memory, ray_runner, remove_leftovers
from rtautoplan.folder import is_finished
from test_batch import mixed_folder

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "prostate01"


def _require_ray():
    try:
        import ray
    except ImportError:
        if os.environ.get("RTAUTOPLAN_REQUIRE_TOOLS"):
            pytest.fail('Ray is required in CI (RTAUTOPLAN_REQUIRE_TOOLS is set): pip install -e ".[test]"')
        pytest.skip('Ray not installed (pip install "rtautoplan[ray]")')
    return ray


NODE_CACHE_MAX_MB = "64"


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs: 2 worker processes, so 2 cases plan at once. Started, like ``ray start`` on a
    node, with the node's dose-influence cache in its environment (``ray_cluster.node_cache``)."""
    ray = _require_ray()
    saved = {k: os.environ.get(k) for k in ("RTAUTOPLAN_CACHE", "RTAUTOPLAN_CACHE_MAX_MB")}
    node_cache = tmp_path_factory.mktemp("node_cache")
    os.environ.update(RTAUTOPLAN_CACHE=str(node_cache), RTAUTOPLAN_CACHE_MAX_MB=NODE_CACHE_MAX_MB)
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    ray.node_cache = node_cache
    yield ray
    ray.shutdown()


def test_a_worker_uses_its_nodes_cache_not_the_drivers(ray_cluster):
    """The dose-influence cache of a task is the one of its node (the environment of ``ray start``), bounded by
    that node's cap, whatever the driver's environment says (docs/cluster.md)."""
    from rtautoplan.physics import cache

    where = ray_cluster.get(ray_cluster.remote(lambda: (cache.cache_dir(), cache.max_bytes())).remote())
    assert where == (ray_cluster.node_cache, int(NODE_CACHE_MAX_MB) * 2**20)
    assert cache.cache_dir() != ray_cluster.node_cache  # the driver's is its own


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return mixed_folder(tmp_path_factory.mktemp("cases"), empty=True)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    """A coarse engine factory Ray can ship (a partial of an importable class), its own dose-influence cache."""
    return functools.partial(InHousePhoton, n_beams=5, dose_grid_factor=(2, 4, 4), max_iter=30,
                             cache_dir=tmp_path_factory.mktemp("dij"))


def _table(out: Path) -> list[dict]:
    with (out / SUMMARY_FILE).open() as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def test_mixed_folder_gives_the_serial_summary(ray_cluster, root, fast, tmp_path, monkeypatch):
    monkeypatch.setenv("RTAUTOPLAN_THREADS", "1")  # the Ray task runs 1 engine thread (num_cpus=1): same sums
    serial = replan_folder(root, tmp_path / "serial", tps=fast, max_steps=2)
    on_ray = replan_folder(root, tmp_path / "ray", tps=fast, max_steps=2, runner=ray_runner(RaySettings()))
    assert _table(tmp_path / "ray") == _table(tmp_path / "serial")
    assert [r.case for r in on_ray] == ["ct_only", "clinic/broken", "prostate01"]
    by_case = {r.case: r for r in on_ray}
    assert by_case["prostate01"].status in ("ok", "unacceptable") and by_case["prostate01"].final is not None
    assert by_case["clinic/broken"].status == "error" and "slices missing" in by_case["clinic/broken"].message
    assert is_finished(tmp_path / "ray" / "prostate01") and not (tmp_path / "ray" / "clinic" / "broken").exists()
    assert not [p for p in (tmp_path / "ray").rglob(".*") if ".partial-" in p.name or ".old-" in p.name]
    assert [r.status for r in serial if r.case == "prostate01"] == [by_case["prostate01"].status]

    again = replan_folder(root, tmp_path / "ray", tps=fast, max_steps=2, runner=ray_runner(RaySettings()))
    assert {r.case: r.status for r in again}["prostate01"] == "skipped"  # resume: a finished output is kept
    # --force reaches the Ray runner: the finished case is sent again (here refused at once by a 1 PB memory ask,
    # so nothing is planned), and the refusal leaves the finished output as it was
    forced = replan_folder(root, tmp_path / "ray", tps=fast, max_steps=2, force=True,
                           runner=ray_runner(RaySettings(memory_mb=10 ** 9)))
    assert {r.case: r.status for r in forced}["prostate01"] == "error" and is_finished(tmp_path / "ray" / "prostate01")


def test_a_case_larger_than_any_node_is_an_error_row_not_a_hang(ray_cluster, root, fast, tmp_path):
    settings = RaySettings(memory_mb=10 ** 9)  # 1 PB
    rows = {r.case: r for r in replan_folder(root / "prostate01", tmp_path, tps=fast, max_steps=2,
                                             runner=ray_runner(settings))}
    assert rows["prostate01"].status == "error" and "--ray-memory-mb" in rows["prostate01"].message


def test_a_node_that_cannot_see_the_case_gives_an_error_row_naming_it(tmp_path):
    """The task's body on a node without the shared storage (the case folder absent there): an error row naming
    the node and the fix, never a plan of something else."""
    import socket

    from rtautoplan.batch import Job
    from rtautoplan.cluster import plan_on_worker
    from rtautoplan.folder import PlanOptions

    row = plan_on_worker(Job(tmp_path / "nfs" / "case1", tmp_path / "case1", "case1"), PlanOptions(), 1)
    assert row.status == "error" and f"not visible on node {socket.gethostname()}" in row.message
    assert "same path" in row.message and not (tmp_path / "case1").exists()


def test_ray_actors_the_cluster_cannot_hold_are_refused(ray_cluster):
    """3 actors of 1 CPU on a 2-CPU cluster would leave one pending forever (a trainer waiting on it): refused."""
    from rtautoplan.policies.workers import RayWorkers, given

    from rtautoplan.errors import InputError

    with pytest.raises(InputError, match="need 3 CPUs; the Ray cluster has 2"):
        RayWorkers([functools.partial(given, None)] * 3)
    pool = RayWorkers([functools.partial(given, 5)] * 3, num_cpus=0.5)  # fractional CPUs: 3 fit
    try:
        assert pool.run([(k, pow, (2,)) for k in range(3)]) == [25] * 3
    finally:
        pool.close()


def test_an_error_in_a_ray_actor_is_the_same_exception_in_the_trainer(ray_cluster):
    """A call that raises in an actor raises the same exception in the driver (not Ray's wrapper with a remote
    traceback), and so does every call to an actor whose environment could not be built: a QMIX data worker
    whose PHOENIX server is unreachable is an InputError naming its node and the fix (the CLI: one line, exit 2)."""
    import socket

    from rtautoplan.errors import InputError
    from rtautoplan.policies import qmix
    from rtautoplan.policies.workers import RayWorkers, given

    pool = RayWorkers([functools.partial(given, 5),
                       functools.partial(qmix.remote_worker, "http://127.0.0.1:1", 1, qmix.Args())], num_cpus=0.5)
    try:
        with pytest.raises(TypeError):
            pool.run([(0, pow, ("a",))])
        with pytest.raises(InputError, match=f"QMIX data worker 1 on node {socket.gethostname()}: .*not reachable") \
                as caught:
            pool.run([(1, qmix.DataWorker.play, (None, 0, qmix.Args()))])
        assert "phoenix-server --host ADDRESS" in caught.value.fix
    finally:
        pool.close(repr)  # the teardown runs where an environment exists, and skips the actor without one


def test_memory_estimate_grows_with_the_ct_grid():
    hn01 = Path(__file__).resolve().parents[1] / "sample_data" / "hn01"
    small, larger = estimate_memory(SAMPLE), estimate_memory(hn01)
    assert 0.5 * 2**30 < small < larger < 2 * 2**30  # both under 2 GB; hn01's CT is the larger grid


def _kill_while_writing(out: Path, name: str, stop: threading.Event) -> list[int]:
    """SIGKILL the worker writing ``out/name`` the first time its temporary folder appears (the pid is in
    its name: ``.<name>.partial-<pid>-<token>``); returns the pids killed."""
    killed: list[int] = []
    while not stop.is_set() and not killed:
        for tmp in out.glob(f".{name}.partial-*"):
            pid = int(tmp.name.split(".partial-")[1].split("-")[0])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            break
        time.sleep(0.005)
    return killed


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_a_worker_killed_mid_case_is_retried_or_an_error_row(ray_cluster, root, fast, tmp_path, retries):
    """The worker is killed while it writes the outputs (its temporary folder exists): with a retry left the
    case is planned again and finished; without, it is an error row. Never a half-written output."""
    out, stop, killed = tmp_path / "out", threading.Event(), []
    watcher = threading.Thread(target=lambda: killed.extend(_kill_while_writing(out, "prostate01", stop)))
    watcher.start()
    try:
        rows = replan_folder(root / "prostate01", out, tps=fast, max_steps=2,
                             runner=ray_runner(RaySettings(max_retries=retries)))
    finally:
        stop.set()
        watcher.join()
    assert killed, "the worker finished writing before it could be killed"
    row = rows[0]
    if retries:
        assert row.status in ("ok", "unacceptable") and is_finished(out / "prostate01")
    else:
        assert row.status == "error" and "died" in row.message and row.message.startswith("internal error")
        assert not (out / "prostate01").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".prostate01.")]  # no temporary folder left


def test_leftovers_of_a_dead_writer_are_removed_only_for_that_case(tmp_path):
    for name in (".case.partial-12-00aa", ".case.old-12-00aa", ".other.partial-12-00aa", "case"):
        (tmp_path / name).mkdir()
    assert sorted(p.name for p in remove_leftovers(tmp_path / "case")) == [".case.old-12-00aa",
                                                                             ".case.partial-12-00aa"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.partial-12-00aa", "case"]


def test_the_serial_batch_never_imports_ray(root, tmp_path):
    code = ("import sys\nfrom rtautoplan.cli import main\n"
            f"code = main(['batch', {str(root / 'ct_only')!r}, '-o', {str(tmp_path)!r}])\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\nsys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr  # the half case is bad input; the batch ran, without Ray
    assert (tmp_path / SUMMARY_FILE).is_file()


def test_a_temporary_folder_of_another_host_is_left_alone(tmp_path):
    """On shared storage a pid means something on its own host only: a dead-looking pid of another host's
    writer (host id ≠ this host's in its 16-digit token) is not removed; this host's, and old 8-digit ones, are."""
    from rtautoplan.folder import _HOST, clean_stale

    other = "0000000f" if _HOST != "0000000f" else "0000000e"
    mine, theirs, legacy = (tmp_path / f".case.partial-999999999-{_HOST}00aa00aa",
                            tmp_path / f".case.partial-999999999-{other}00aa00aa", tmp_path / ".case.old-999999999-abcd")
    for path in (mine, theirs, legacy):
        path.mkdir()
    assert sorted(clean_stale(tmp_path)) == sorted([mine, legacy]) and theirs.is_dir()


def test_acer_actors_on_ray_give_the_same_weights_bit_for_bit(ray_cluster, tmp_path):
    """ACER with 2 actors: played as Ray actors (policies/workers.py) or in this process, same seed → the same
    weights, bit for bit, through on- and off-policy updates (t_s reached)."""
    import torch
    import test_acer
    from rtautoplan.policies import acer

    ray_cluster.cloudpickle.register_pickle_by_value(test_acer)  # the toy environment lives in a test module

    def train(actors: str):
        envs = [test_acer.CueEnv(), test_acer.CueEnv()]
        args = acer.Args(T_max=120, t_s=40, t_eval=10 ** 9, lr=3e-3, beta=0.01, n_actors=2, p=2.0, progress=False,
                         out=str(tmp_path / actors / "toy.pt"), actors=actors)
        record = acer.train(args, envs=envs, validate_fn=None)
        return record, envs, acer.load_net(tmp_path / actors / "toy.pt")

    (local, local_envs, net_local), (remote, remote_envs, net_ray) = train("local"), train("ray")
    assert remote.steps == local.steps >= 120 and remote.episodes == local.episodes
    assert all(hasattr(env, "t") for env in local_envs) and not any(hasattr(env, "t") for env in remote_envs)
    for p, q in zip(net_local.parameters(), net_ray.parameters()):
        assert torch.equal(p, q)


def test_cli_batch_with_ray_reports_rows_and_exit_code(ray_cluster, root, tmp_path):
    """``rtautoplan batch ROOT -o OUT --ray`` (the connected cluster is reused): the half case is an error row, exit 2."""
    from rtautoplan.cli import main

    assert main(["batch", str(root / "ct_only"), "-o", str(tmp_path), "--ray", "--ray-retries", "0"]) == 2
    assert [(r["case"], r["status"]) for r in _table(tmp_path)] == [(".", "error")]


@pytest.mark.slow
def test_qmix_data_workers_on_ray_give_the_same_weights_bit_for_bit(ray_cluster, make_small_case, tmp_path):
    """QMIX with 2 data workers against one PHOENIX server process: as threads of the trainer or as Ray actors
    (each its own HTTP client of the server's URL), the same seed collects the same episodes (the rounds' returns
    and scores) and gives the same weights, bit for bit, through 4 gradient steps."""
    import torch

    from rtautoplan.adapters.phoenix_api.client import LocalServerProcess
    from rtautoplan.policies import qmix

    case = make_small_case()
    with LocalServerProcess(workers=2) as server:
        def train(workers: str) -> dict:
            args = qmix.Args(seed=3, episodes=4, data_workers=2, t_steps=2, batch=2, updates=2, target_every=1,
                             hidden=16, mix_embed=8, max_iterations=15, url=server.url, workers=workers,
                             out=str(tmp_path / f"{workers}.pt"), progress=False)
            record = qmix.train(args, case=case)
            assert server.server.status()["sessions"] == 0  # every worker closed its session, in an actor too
            return record

        threads, on_ray = train("threads"), train("ray")
    assert on_ray["updates"] == threads["updates"] == 4 and on_ray["args"]["workers"] == "ray"
    keys = ("episodes", "epsilon", "mean_return", "mean_relative_best", "mean_relative_first", "loss")
    assert [[r[k] for k in keys] for r in on_ray["rounds"]] == [[r[k] for k in keys] for r in threads["rounds"]]
    a, b = (torch.load(tmp_path / f"{w}.pt", weights_only=True) for w in ("threads", "ray"))
    for part in ("agent", "mixer"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
