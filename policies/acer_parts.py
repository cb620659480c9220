"""Helpers of ``policies/acer.py`` moved out to keep it under 400 lines."""

from __future__ import annotations


class TrainProgress:
    """A rich progress bar over ``total`` steps (default ``args.T_max``) showing episode return and the
    validation score ``val_name`` (or nothing when ``args.progress`` is off)."""

    def __init__(self, args, label: str = "ACER", total: int | None = None, val_name: str = "val ψ"):
        self.args, self.bar = args, None
        self.label, self.total, self.val_name = label, args.T_max if total is None else total, val_name

    def __enter__(self):
        if self.args.progress:
            from rich import progress as rp

            self.bar = rp.Progress(rp.TextColumn(self.label), rp.BarColumn(), rp.TextColumn("{task.completed}/{task.total}"),
                                   rp.TextColumn("return {task.fields[ret]:.2f}  " + self.val_name + " {task.fields[val]:.2f}"),
                                   rp.TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task("train", total=self.total, ret=0.0, val=float("nan"))
        return self

    def show(self, steps: int, ret: float, val: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=min(steps, self.total), ret=ret, val=val)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
        return False
