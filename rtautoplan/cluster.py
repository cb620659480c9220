"""Batch re-planning on a Ray cluster: ``rtautoplan batch ROOT -o OUT --ray [ADDRESS]``, each case a Ray task.

``ray_runner(settings)`` is a runner of ``batch.replan_folder``: the folder scan, resume (finished
outputs are kept unless ``--force``), the summary and the progress bar are the serial batch's; only
where a case is planned changes. Ray is imported here only, when a runner runs (``--ray``).

* **Where.** ``address``: a running cluster (``auto``, ``HOST:PORT`` or ``ray://HOST:10001``); none: a
  local cluster of this machine's CPUs, started and stopped by the batch. A process already connected
  (``ray.init`` done) keeps its connection.
* **Inputs by path.** A task gets the case's folder and its output folder as paths: ROOT and OUT must be on
  storage every node mounts at the same path (NFS, CephFS, a Kubernetes ReadWriteMany volume). A node
  that cannot see the case folder answers with an error row naming itself, never a guess. Objects are
  not shipped: a clinical case is ~100 MB of CT read once where it is planned, and the outputs must land
  on shared storage anyway.
* **Resources.** Each task declares ``num_cpus`` (default 1; the engine runs that many threads) and
  ``memory`` (bytes): ``--ray-memory-mb``, else ``estimate_memory`` of the case's CT grid, so Ray never
  places more cases on a node than its memory holds. A case asking more than the largest node has is an
  error row at once (not a task pending forever).
* **A dying worker.** Planning errors are caught in the task (an error row, as serially). A worker process
  that dies (killed, out of memory, its node lost) is retried ``max_retries`` times by Ray, then the case is
  an error row. Outputs are written whole and renamed into place (``folder.write_folder``): a dead worker
  leaves at most a hidden temporary folder, which the driver removes when the case's task has ended.
* **Dose-influence cache.** Each worker uses its node's own cache (``$RTAUTOPLAN_CACHE``, else
  ``~/.cache/rtautoplan/dij``, capped at ``$RTAUTOPLAN_CACHE_MAX_MB``, least recently used entries removed):
  local disk, bounded, shared by the tasks of one node (its writes are atomic).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from rtautoplan.errors import InputError

if TYPE_CHECKING:  # the batch's modules are imported when a runner runs: the CLI's parser stays light
    from rtautoplan.batch import BatchRow, Job, Runner
    from rtautoplan.folder import PlanOptions

log = logging.getLogger(__name__)

BASE_BYTES = 1024 * 2**20  # a worker's interpreter and libraries, and a small case's planning (hn01 peaked at 0.9 GB)
BYTES_PER_CT_VOXEL = 100  # planning peak per CT voxel at the default 3 mm dose grid (clinical: ≈ 85, docs/cluster.md)


@dataclass(frozen=True)
class RaySettings:
    """How the batch uses the cluster. address: None (a local cluster), ``auto``, ``HOST:PORT`` or a
    ``ray://`` client address; num_cpus: CPUs (and engine threads) per case; memory_mb: memory per case
    (MB; None: estimated from its CT grid); max_retries: runs again after a worker died; local_cpus: CPUs of
    the local cluster (None: all of this machine's)."""

    address: str | None = None
    num_cpus: int = 1
    memory_mb: float | None = None
    max_retries: int = 1
    local_cpus: int | None = None

    def __post_init__(self):
        if self.num_cpus < 1 or self.max_retries < 0 or (self.memory_mb is not None and self.memory_mb <= 0):
            raise InputError("--ray-cpus / --ray-memory-mb / --ray-retries", "must be ≥ 1, > 0 and ≥ 0",
                             "Give e.g. --ray-cpus 1 --ray-memory-mb 6000 --ray-retries 1")


def ct_voxels(case_dir: Path) -> int:
    """Voxels of the case's CT (slices × rows × columns, from the DICOM headers); 0 when no slice is readable."""
    import pydicom

    from rtautoplan.batch import dicom_kind

    slices = [p for p in sorted(Path(case_dir).rglob("*")) if p.is_file() and dicom_kind(p) == "ct"]
    if not slices:
        return 0
    first = pydicom.dcmread(slices[0], stop_before_pixels=True, specific_tags=["Rows", "Columns"])
    return len(slices) * int(first.get("Rows", 0) or 0) * int(first.get("Columns", 0) or 0)


def estimate_memory(case_dir: Path) -> int:
    """Memory (bytes) a worker needs to plan the case: BASE_BYTES + BYTES_PER_CT_VOXEL × CT voxels.
    hn01 (0.5 M voxels): 1.05 GB (measured peak 0.91 GB); a clinical H&N CT (512 × 512 × 180 = 47 M
    voxels): 5.4 GB (measured stage peaks 3.8–4.0 GB, benchmarks/RESULTS.md)."""
    return BASE_BYTES + BYTES_PER_CT_VOXEL * ct_voxels(case_dir)


def plan_on_worker(job: Job, options: PlanOptions, threads: int) -> BatchRow:
    """The Ray task's body: plan one case with ``threads`` engine threads (a BatchRow, never an exception)."""
    from threadpoolctl import threadpool_limits

    from rtautoplan.batch import BatchRow, plan_row

    os.environ["RTAUTOPLAN_THREADS"] = str(threads)
    host = socket.gethostname()
    out = job.target.parents[len(Path(job.name).parts) - 1]  # OUT: the target is OUT/<name>
    for path, what in ((job.case_dir, "the case folder"), (out, "the output folder")):
        if not path.is_dir():
            return BatchRow(job.name, "error", job.target, message=f"{path}: {what} is not visible on node {host}. "
                            "ROOT and OUT must be on storage every node mounts at the same path (docs/cluster.md)")
    with threadpool_limits(threads):
        row = plan_row(job, options)
    log.debug("%s planned on %s (pid %d)", job.name, host, os.getpid())
    return row


def connect(settings: RaySettings):
    """The ray module, connected (module docstring); returns (ray, True when this call started the connection)."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray", "needs Ray, which is not installed", 'Install it: pip install "rtautoplan[ray]"') \
            from None
    if ray.is_initialized():
        return ray, False
    try:
        if settings.address:
            ray.init(address=settings.address, logging_level="warning", log_to_driver=False)
        else:
            ray.init(num_cpus=settings.local_cpus, include_dashboard=False, logging_level="warning",
                     log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise InputError(f"Ray cluster {settings.address or '(local)'}", f"cannot be reached or started ({error})",
                         "Check the address (ray status on the head node) or start the cluster (docs/cluster.md)") \
            from None
    return ray, True


def largest_node_memory(ray) -> float:
    """The most memory (bytes) any alive node of the cluster offers to tasks (inf when none says)."""
    offers = [n["Resources"].get("memory", 0.0) for n in ray.nodes() if n.get("Alive")]
    return max(offers) if offers and max(offers) > 0 else float("inf")


def remove_leftovers(target: Path) -> list[Path]:
    """Remove the hidden temporary folders of ``target`` (``.<name>.partial-…``, ``.<name>.old-…``) a dead
    worker left. Called when the case's task has ended: in a batch, no one else writes that output."""
    found = [p for p in target.parent.glob(f".{target.name}.*") if p.is_dir() and (
        p.name.startswith(f".{target.name}.partial-") or p.name.startswith(f".{target.name}.old-"))]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
        log.warning("removed %s (left by a worker that died)", path)
    return found


def _lost_row(job: Job, error: Exception, seconds: float, settings: RaySettings) -> BatchRow:
    """The error row of a case whose task did not return: the worker died on every try, or the task failed."""
    from rtautoplan.batch import BatchRow

    kind = type(error).__name__
    tries = settings.max_retries + 1
    if "OutOfMemory" in kind:
        why = (f"the Ray worker planning it ran out of memory on each of {tries} tries; nothing was written. "
               "Give each case more memory (--ray-memory-mb) or use nodes with more")
    elif kind in ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "LocalRayletDiedError"):
        why = (f"the Ray worker planning it died ({kind}) on each of {tries} tries; nothing was written. Run the batch "
               "again: finished cases are kept, this one is planned again")
    else:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        why = f"its Ray task failed ({kind}: {first}); nothing was written"
    return BatchRow(job.name, "error", job.target, seconds=round(seconds, 2), message=f"internal error: {why}")


def ray_runner(settings: RaySettings) -> Runner:
    """A ``replan_folder`` runner planning each case as a Ray task (module docstring); rows as cases finish."""

    from rtautoplan.batch import BatchRow, skipped_row

    def run(jobs: list[Job], options: PlanOptions, force: bool, status: Callable[[str], None]) -> Iterator[BatchRow]:
        status("connecting to the Ray cluster …")
        ray, started = connect(settings)
        try:
            task = ray.remote(plan_on_worker)
            limit = largest_node_memory(ray)
            pending = {}
            for job in jobs:
                row = None if force else skipped_row(job)
                if row is not None:
                    yield row
                    continue
                need = int(settings.memory_mb * 2**20) if settings.memory_mb else estimate_memory(job.case_dir)
                if need > limit:
                    yield BatchRow(job.name, "error", job.target, message=(
                        f"internal error: planning it needs ≈ {need / 2**30:.1f} GB (estimated from its CT grid), more "
                        f"than the largest node of the cluster offers ({limit / 2**30:.1f} GB). Add a larger node, or "
                        "give --ray-memory-mb to override the estimate"))
                    continue
                ref = task.options(num_cpus=settings.num_cpus, memory=need, max_retries=settings.max_retries,
                                   retry_exceptions=False, name=f"plan {job.name}").remote(job, options,
                                                                                            settings.num_cpus)
                pending[ref] = (job, time.perf_counter())
            while pending:
                status(f"{len(pending)} case(s) queued or planning on the cluster")
                done, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
                for ref in done:
                    job, start = pending.pop(ref)
                    try:
                        row = ray.get(ref)
                    except ray.exceptions.RayError as error:
                        row = _lost_row(job, error, time.perf_counter() - start, settings)
                    remove_leftovers(job.target)
                    yield row
        finally:
            if started:
                ray.shutdown()

    return run


def settings_from(args) -> RaySettings:
    """RaySettings from the batch command's options (``add_options``)."""
    return RaySettings(address=args.ray or None, num_cpus=args.ray_cpus, memory_mb=args.ray_memory_mb,
                       max_retries=args.ray_retries)


def add_options(parser) -> None:
    """``--ray [ADDRESS]`` and the per-case resources, on the batch command."""
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="plan each case as a Ray task: on the cluster at ADDRESS (auto, HOST:PORT, "
                             "ray://HOST:10001), or on a local cluster of this machine without one (docs/cluster.md)")
    parser.add_argument("--ray-cpus", type=int, default=1, help="CPUs (engine threads) per case on Ray (default 1)")
    parser.add_argument("--ray-memory-mb", type=float, default=None, help="memory per case on Ray (default: "
                        f"estimated from its CT grid, {BASE_BYTES // 2**20} MB + {BYTES_PER_CT_VOXEL} B per CT voxel)")
    parser.add_argument("--ray-retries", type=int, default=1, help="times a case is run again after its Ray "
                        "worker died (default 1), then it is an error row")

