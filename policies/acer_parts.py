"""Helpers of ``policies/acer.py`` moved out to keep it under 400 lines."""

from __future__ import annotations


class TrainProgress:
    """A rich progress bar over T_max steps showing episode return and validation ψ (or nothing)."""

    def __init__(self, args):
        self.args, self.bar = args, None

    def __enter__(self):
        if self.args.progress:
            from rich import progress as rp

            self.bar = rp.Progress(rp.TextColumn("ACER"), rp.BarColumn(), rp.TextColumn("{task.completed}/{task.total}"),
                                   rp.TextColumn("return {task.fields[ret]:.2f}  val ψ {task.fields[val]:.2f}"),
                                   rp.TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.args.T_max, ret=0.0, val=float("nan"))
        return self

    def show(self, steps: int, ret: float, val: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=min(steps, self.args.T_max), ret=ret, val=val)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
