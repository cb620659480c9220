"""The ADMM solver's workspace (``admm``): what depends only on the dose-influence matrix and the
objectives' rows, built once per problem and carried by the solver's state into warm-started
re-solves (the x-update's factor; see the ``admm`` module docstring).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.linalg import cho_factor, lapack


def _same_matrix(a: sparse.csr_matrix, b: sparse.csr_matrix) -> bool:
    return a is b or (a.shape == b.shape and a.nnz == b.nnz and a.dtype == b.dtype
                      and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
                      and np.array_equal(a.data, b.data))


def _layout(f) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stacked row index, block id and block weight c = 2/N of every (objective, voxel) pair."""
    idx = np.concatenate([np.asarray(r, np.int64) for r in f.local_rows])
    block = np.repeat(np.arange(len(f.local_rows)), [len(r) for r in f.local_rows])
    c = np.concatenate([np.full(len(r), 2.0 / len(r)) for r in f.local_rows])
    return idx, block, c


@dataclass(frozen=True, eq=False)
class ADMMWorkspace:
    """What depends only on the matrix and the objectives' rows: the stacked layout, the Gram
    matrix G = Σ_m c_m A_mᵀA_m (not kept: only the lower Cholesky factor L of G + σI, LLᵀ = G + σI)."""

    matrix: sparse.csr_matrix
    matrix_t: sparse.csr_matrix  # its transpose, CSR
    idx: np.ndarray
    block: np.ndarray
    c: np.ndarray
    row_weight: np.ndarray  # Σ of c over the blocks that use each row
    sigma: float
    factor: np.ndarray  # lower Cholesky factor of G + σI
    seconds: float

    @classmethod
    def build(cls, f, sigma_rel: float = 0.1, chunk: int = 2048) -> "ADMMWorkspace":
        start = time.perf_counter()
        matrix = f.matrix
        idx, block, c = _layout(f)
        row_weight = np.bincount(idx, weights=c, minlength=matrix.shape[0])
        n = matrix.shape[1]
        gram = np.zeros((n, n))
        scale = sparse.diags(np.sqrt(row_weight))
        weighted = (scale @ matrix).tocsr()
        for lo in range(0, matrix.shape[0], chunk):
            dense = weighted[lo:lo + chunk].toarray().astype(np.float64)
            gram += dense.T @ dense
        sigma = sigma_rel * max(float(np.trace(gram)) / n, np.finfo(float).tiny)
        gram[np.diag_indices(n)] += sigma
        factor, _ = cho_factor(gram, lower=True, overwrite_a=True, check_finite=False)
        del gram
        return cls(matrix, matrix.T.tocsr(), idx, block, c, row_weight, sigma, np.tril(factor),
                   time.perf_counter() - start)

    def matches(self, f) -> bool:
        if not _same_matrix(self.matrix, f.matrix):
            return False
        idx, _, c = _layout(f)
        return np.array_equal(idx, self.idx) and np.array_equal(c, self.c)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        x, info = lapack.dpotrs(self.factor, rhs, lower=True)
        if info:
            raise np.linalg.LinAlgError(f"dpotrs failed ({info})")
        return x
