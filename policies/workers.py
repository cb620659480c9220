"""Environment workers of the trainers: in the trainer's process, or as Ray actors on a cluster.

A trainer hands ``env_workers`` one environment factory per worker (picklable: a module-level function
or a ``functools.partial`` of one) and then asks ``run(calls)``: each call ``(k, fn, args)`` is
``fn(env_k, *args)`` on worker k, and the results come back in the order of the calls. Locally the calls
run one after another on the environments in this process (what the trainers always did); on Ray each
worker is an actor holding its environment, the calls to different workers run at once, and the
arguments and results travel pickled.

Reproducibility is the trainer's rule, kept here: a worker process first runs ``setup`` (the trainer's
thread and determinism settings), a call gets all of its randomness in its arguments (seeds, a
``numpy.random.Generator``, which it returns when it advanced it), and results are consumed in call
order, never completion order. Then the same seed gives bit-identical weights with and without Ray
(tested for ACER and QMIX; PPO: the same rollout batch). PPO rollout workers and QMIX data workers use the
same two calls: build the pool from their environment factories, and ship each rollout as ``(k, fn, args)``.
``ThreadWorkers`` runs the calls at once in threads of this process (QMIX's data workers, which wait on
the PHOENIX server).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from rtautoplan.errors import InputError

Call = tuple[int, Callable[..., Any], tuple]
BACKENDS = ("local", "threads", "ray")


class LocalWorkers:
    """The environments in this process; ``run`` calls them one after another."""

    def __init__(self, factories: Sequence[Callable[[], Any]], setup: Callable[[], None] | None = None):
        if setup is not None:
            setup()
        self.envs = [make() for make in factories]

    def run(self, calls: Sequence[Call]) -> list:
        return [fn(self.envs[k], *args) for k, fn, args in calls]

    def close(self, teardown: Callable[[Any], None] | None = None) -> None:
        """``teardown(env)`` on every environment (e.g. closing its TPS session), if given."""
        if teardown is not None:
            for env in self.envs:
                teardown(env)


class ThreadWorkers(LocalWorkers):
    """The environments in this process; ``run`` calls them at once in threads, results in call order. For
    environments that wait on a server (QMIX's data workers, each an HTTP client of the PHOENIX server)."""

    def run(self, calls: Sequence[Call]) -> list:
        with ThreadPoolExecutor(max(len(calls), 1)) as pool:
            return list(pool.map(lambda call: call[1](self.envs[call[0]], *call[2]), calls))


class _Worker:
    """The Ray actor: one environment, built in the actor's process after ``setup``. An error building it is kept
    and raised by every call (a task error carries the exception itself; a failed actor only its text)."""

    def __init__(self, factory, setup):
        self.error = None
        try:
            if setup is not None:
                setup()
            self.env = factory()
        except Exception as error:
            self.error = error

    def call(self, fn, args):
        if self.error is not None:
            raise self.error
        return fn(self.env, *args)


class RayWorkers:
    """One Ray actor per environment (``num_cpus`` each, default 1); ``run`` dispatches every call, then gathers
    in order. Actors needing more CPUs than the whole cluster has are refused (they would never start)."""

    def __init__(self, factories: Sequence[Callable[[], Any]], setup: Callable[[], None] | None = None,
                 address: str | None = None, num_cpus: float = 1.0):
        try:
            import ray
        except ImportError:
            raise RuntimeError('Ray actors need Ray: pip install "rtautoplan[ray]"') from None
        self.ray, self.started = ray, not ray.is_initialized()
        if self.started:
            ray.init(address=address or None, logging_level="warning", log_to_driver=False)
        have = ray.cluster_resources().get("CPU", 0.0)
        if num_cpus * len(factories) > have:
            self.close()
            raise InputError(f"{len(factories)} Ray actors of {num_cpus:g} CPU", f"need {num_cpus * len(factories):g} "
                             f"CPUs; the Ray cluster has {have:g}, so some would never start",
                             "Use fewer workers, fewer CPUs per actor, or a larger cluster")
        actor = ray.remote(num_cpus=num_cpus)(_Worker)
        self.actors = [actor.remote(make, setup) for make in factories]

    def run(self, calls: Sequence[Call]) -> list:
        """The results, copied out of Ray's object store (writable arrays that do not pin it while kept). A call
        that raised raises the same exception here, as without Ray (e.g. an InputError the CLI reports)."""
        try:
            return copy.deepcopy(self.ray.get([self.actors[k].call.remote(fn, args) for k, fn, args in calls]))
        except self.ray.exceptions.RayTaskError as error:
            raise error.cause from error

    def close(self, teardown: Callable[[Any], None] | None = None) -> None:
        """``teardown(env)`` in every actor (if given; an actor already dead has nothing left to tear down), then
        the actors end, and the local cluster if this pool started it."""
        if teardown is not None and getattr(self, "actors", None):
            refs = [actor.call.remote(teardown, ()) for actor in self.actors]
            for ref in refs:
                try:
                    self.ray.get(ref)
                except (self.ray.exceptions.RayActorError, self.ray.exceptions.RayTaskError):
                    pass  # the actor died, or never built its environment: nothing to tear down
        for actor in getattr(self, "actors", []):
            self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()


def given(env):
    """A factory of an environment built already (``functools.partial(given, env)``): local use as it is, Ray
    ships a copy."""
    return env


def deterministic(engine_threads: int) -> None:
    """The process settings of reproducible training, in the trainer's process and in each worker's: one torch
    thread, deterministic algorithms, the engine's thread count (its sparse sums depend on it)."""
    import os

    import torch

    os.environ["RTAUTOPLAN_THREADS"] = str(engine_threads)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def env_spaces(env) -> tuple[int, int]:
    """(observation size, number of actions) of a worker's environment (a discrete action space)."""
    import numpy as np

    return int(np.prod(env.observation_space.shape)), int(env.action_space.n)


def env_workers(backend: str, factories: Sequence[Callable[[], Any]], setup: Callable[[], None] | None = None,
                address: str | None = None, num_cpus: float = 1.0):
    """LocalWorkers, ThreadWorkers or RayWorkers (``backend`` "local", "threads" or "ray"; ``address``: a Ray
    cluster, None: a local one; ``num_cpus``: per Ray actor)."""
    if backend == "local":
        return LocalWorkers(factories, setup)
    if backend == "threads":
        return ThreadWorkers(factories, setup)
    if backend == "ray":
        return RayWorkers(factories, setup, address, num_cpus)
    raise ValueError(f"actors {backend!r} is not known; use one of: {', '.join(BACKENDS)}")
