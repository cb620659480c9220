"""The one exception a user sees: what is wrong with the input, where, and what to do."""

from __future__ import annotations


class InputError(Exception):
    """Bad input: names the file, ROI or tag (``where``), the problem, and the fix.

    The CLI prints ``str(error)`` on one line and exits with status 2; nothing else
    of the traceback reaches the user.
    """

    def __init__(self, where: str, problem: str, fix: str):
        self.where = where
        self.problem = problem
        self.fix = fix
        super().__init__(f"{where}: {problem}. {fix}")

    def __reduce__(self):
        """Pickled with its three parts (it crosses processes: a Ray task or actor, a worker pool)."""
        return type(self), (self.where, self.problem, self.fix)
