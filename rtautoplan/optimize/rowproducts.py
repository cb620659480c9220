"""Products with selected rows of a CSR matrix without copying them: M[rows] x, M[rows]ᵀ g and M[rows]²ᵀ w.

The plan objectives use a few row sets of one dose-influence matrix: the rows some objective reads, the
rows the screening keeps, the rows with a non-zero gradient. Materialising each set (``matrix[rows]``)
copies its entries (8 B each; at clinical size the used rows alone are 151 M entries, 1.15 GB, next to the
1.7 GB matrix), and scipy copies a slice of a CSR matrix even when only ``indptr`` would change (a view
smaller than half of its base is "pruned"). :class:`RowView` keeps the matrix and an index array of rows,
and multiplies through small numba kernels that walk the rows in order, as scipy's ``csr_matvec`` /
``csc_matvec`` do, with the same accumulation (in the result's dtype, entries in stored order): the results
are bitwise those of the materialised sub-matrix (tested). Threads (the kernels release the GIL): M x on row
blocks of about equal entries, each thread writing its rows; the transposed products (Mᵀ g, Σ w M², Mᵀ B) on
column ranges, each thread adding its columns' entries row by row. Either way every output entry sums the same
terms in the same order as with one thread, so the results are bitwise the same for any number of threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from scipy import sparse


@njit(nogil=True, cache=True)
def _matvec(indptr, indices, data, rows, x, out):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        s = out[k]
        for jj in range(np.uint64(indptr[r]), np.uint64(indptr[r + 1])):
            s += data[jj] * x[indices[jj]]
        out[k] = s


@njit(nogil=True, cache=True)
def _first(indices, a, b, c0):
    """The first entry of the row's entries a:b (sorted columns) with a column ≥ c0 (a when c0 is 0)."""
    if c0 == 0:
        return a
    return a + np.searchsorted(indices[a:b], c0)


@njit(nogil=True, cache=True)
def _rmatvec(indptr, indices, data, rows, g, out, c0, c1):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        gk = g[k]
        b = np.uint64(indptr[r + 1])
        jj = np.uint64(_first(indices, np.uint64(indptr[r]), b, c0))
        while jj < b and indices[jj] < c1:
            out[indices[jj]] += data[jj] * gk
            jj += np.uint64(1)


@njit(nogil=True, cache=True)
def _rmatvec_squared(indptr, indices, data, rows, w, out, c0, c1):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        wk = w[k]
        b = np.uint64(indptr[r + 1])
        jj = np.uint64(_first(indices, np.uint64(indptr[r]), b, c0))
        while jj < b and indices[jj] < c1:
            v = data[jj]
            out[indices[jj]] += (v * v) * wk
            jj += np.uint64(1)


@njit(nogil=True, cache=True)
def _rmatvec_squared64(indptr, indices, data, rows, w, out, c0, c1):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        wk = w[k]
        b = np.uint64(indptr[r + 1])
        jj = np.uint64(_first(indices, np.uint64(indptr[r]), b, c0))
        while jj < b and indices[jj] < c1:
            v = np.float64(data[jj])
            out[indices[jj]] += (v * v) * wk
            jj += np.uint64(1)


@njit(nogil=True, cache=True)
def _rmatmat(indptr, indices, data, rows, b, out, c0, c1):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        e = np.uint64(indptr[r + 1])
        jj = np.uint64(_first(indices, np.uint64(indptr[r]), e, c0))
        while jj < e and indices[jj] < c1:
            a = data[jj]
            for m in range(b.shape[1]):
                out[indices[jj], m] += a * b[k, m]
            jj += np.uint64(1)


@njit(nogil=True, cache=True)
def _matmat_sparse(indptr, indices, data, rows, a_indptr, a_indices, a_data, out):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        for jj in range(np.uint64(indptr[r]), np.uint64(indptr[r + 1])):
            v = np.float64(data[jj])
            j = indices[jj]
            for t in range(a_indptr[j], a_indptr[j + 1]):
                out[k, a_indices[t]] += v * a_data[t]


@njit(nogil=True, cache=True)
def _row_square_sums(indptr, data, rows, out):
    for k in range(rows.size):
        r = np.uint64(rows[k])
        s = 0.0
        for jj in range(np.uint64(indptr[r]), np.uint64(indptr[r + 1])):
            v = np.float64(data[jj])
            s += v * v
        out[k] = s


COLUMN_THREADS = 8  # at most: every column-range thread walks every row (a binary search each), which more
# threads would repeat more often than they share entries


def block_cuts(row_nnz: np.ndarray, n: int) -> np.ndarray:
    """Edges (into the row list) of ≤ n blocks of about equal entries (the cuts of scipy-based row blocks)."""
    indptr = np.concatenate([[0], np.cumsum(row_nnz)])
    cuts = np.searchsorted(indptr, np.linspace(0, indptr[-1], n + 1)[1:-1])
    return np.unique(np.concatenate([[0], cuts, [row_nnz.size]])).astype(np.int64)


class RowView:
    """M[rows] of a CSR matrix M (float32 or float64), never copied (module docstring).

    matrix: the CSR matrix. rows: row indices (int64, any order; the view's row k is ``matrix`` row
    ``rows[k]``), default all. threads, pool: products on ``threads`` threads (M x on row blocks of equal entries,
    the transposed products on column ranges) when they read at least ``parallel_min_nnz`` entries; ``pool(n)``
    gives a ``concurrent.futures`` executor. Results are bitwise the same for any number of threads.
    """

    def __init__(self, matrix: sparse.csr_matrix, rows: np.ndarray | None = None, threads: int = 1, pool=None,
                 parallel_min_nnz: int = 200_000):
        if not (sparse.issparse(matrix) and matrix.format == "csr"):
            matrix = sparse.csr_matrix(matrix)
        self.base = matrix
        self.rows = np.arange(matrix.shape[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.row_nnz = np.diff(matrix.indptr).astype(np.int64)[self.rows]
        self.nnz = int(self.row_nnz.sum())
        self.shape = (int(self.rows.size), int(matrix.shape[1]))
        self.dtype = matrix.dtype
        self.threads, self.pool, self.parallel_min_nnz = int(threads), pool, parallel_min_nnz
        n = self.threads if self.nnz >= parallel_min_nnz and pool is not None else 1
        self.cuts = block_cuts(self.row_nnz, n) if n > 1 else np.array([0, self.rows.size], np.int64)

    def subset(self, local: np.ndarray) -> RowView:
        """The view of rows ``local`` (indices into this view's rows), same matrix, same threads."""
        return RowView(self.base, self.rows[local], self.threads, self.pool, self.parallel_min_nnz)

    def _args(self):
        m = self.base
        return m.indptr, m.indices.view(np.uint32 if m.indices.dtype == np.int32 else np.uint64), m.data

    def _blocks(self):
        return list(zip(self.cuts[:-1], self.cuts[1:]))

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        """M[rows] x in the dtype of (matrix, x)."""
        x = np.ascontiguousarray(x)
        out = np.zeros(self.shape[0], np.result_type(self.dtype, x.dtype))
        blocks = self._blocks()
        if len(blocks) < 2:
            _matvec(*self._args(), self.rows, x, out)
            return out

        def run(ab):
            a, b = ab
            _matvec(*self._args(), self.rows[a:b], x, out[a:b])

        list(self.pool(len(blocks)).map(run, blocks))
        return out

    def _columns(self, kernel, rows: np.ndarray, nnz: int, vector: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``kernel`` (a transposed product accumulating into ``out[column]``) over ``rows``, on the column
        ranges of the threads: each thread walks every row but adds only the entries of its columns (rows with
        sorted columns: a binary search per row finds them), so each output entry sums the same terms in the
        same order as one thread does, bitwise, whatever the number of threads."""
        n = min(self.threads, COLUMN_THREADS) if nnz >= self.parallel_min_nnz and self.pool is not None \
            and self._sorted() else 1
        if n == 1:
            kernel(*self._args(), rows, vector, out, 0, self.shape[1])
            return out
        edges = np.linspace(0, self.shape[1], n + 1).astype(np.int64)

        def run(c):
            kernel(*self._args(), rows, vector, out, edges[c], edges[c + 1])

        list(self.pool(n).map(run, range(n)))
        return out

    def _sorted(self) -> bool:
        return bool(self.base.has_sorted_indices)

    def rmatvec(self, g: np.ndarray) -> np.ndarray:
        """M[rows]ᵀ g (g: one value per view row); bitwise the same for any number of threads (``_columns``)."""
        g = np.ascontiguousarray(g)
        out = np.zeros(self.shape[1], np.result_type(self.dtype, g.dtype))
        return self._columns(_rmatvec, self.rows, self.nnz, g, out)

    def rmatvec_rows(self, local: np.ndarray, g: np.ndarray) -> np.ndarray:
        """M[rows[local]]ᵀ g (g: one value per selected row): the active-row gradient."""
        g = np.ascontiguousarray(g)
        local = np.asarray(local, np.int64)
        out = np.zeros(self.shape[1], np.result_type(self.dtype, g.dtype))
        return self._columns(_rmatvec, self.rows[local], int(self.row_nnz[local].sum()), g, out)

    def rmatvec_squared(self, w: np.ndarray, dtype=None) -> np.ndarray:
        """Σ_k w_k M[rows_k, j]², accumulated in ``dtype`` (default the matrix's)."""
        dtype = np.dtype(self.dtype if dtype is None else dtype)
        out = np.zeros(self.shape[1], dtype)
        kernel = _rmatvec_squared if dtype == self.dtype else _rmatvec_squared64
        if kernel is _rmatvec_squared64 and dtype != np.float64:
            raise ValueError(f"squared products accumulate in the matrix's dtype or float64, not {dtype}")
        return self._columns(kernel, self.rows, self.nnz, np.ascontiguousarray(w, dtype), out)

    def rmatmat(self, b: np.ndarray) -> np.ndarray:
        """M[rows]ᵀ B for a dense B (view rows × k)."""
        b = np.ascontiguousarray(b)
        out = np.zeros((self.shape[1], b.shape[1]), np.result_type(self.dtype, b.dtype))
        return self._columns(_rmatmat, self.rows, self.nnz, b, out)

    def matmat_sparse(self, a: sparse.csr_matrix) -> np.ndarray:
        """M[rows] A for a sparse A (columns × k; e.g. the 0/1 segment apertures): dense (view rows × k),
        accumulated in float64 entry by entry, returned in the matrix's dtype; on the row blocks' threads.
        Costs the view's entries × A's entries per row (not × k)."""
        a = sparse.csr_matrix(a)
        out = np.zeros((self.shape[0], a.shape[1]), np.float64)
        args = (*self._args(), a.indptr.astype(np.int64), a.indices.astype(np.int64), a.data.astype(np.float64))

        def run(ab):
            lo, hi = ab
            _matmat_sparse(*args[:3], self.rows[lo:hi], *args[3:], out[lo:hi])

        blocks = self._blocks()
        if len(blocks) < 2:
            run((0, self.rows.size))
        else:
            list(self.pool(len(blocks)).map(run, blocks))
        return out.astype(self.dtype)

    def row_norms(self) -> np.ndarray:
        """‖M_v‖₂ of every view row (float64)."""
        out = np.zeros(self.shape[0])
        _row_square_sums(self.base.indptr, self.base.data, self.rows, out)
        return np.sqrt(out)

    def data_min(self) -> float:
        """A lower bound of the view's entries (the matrix's smallest entry; 0 for an empty matrix)."""
        return float(self.base.data.min(initial=0.0))

    def tocsr(self) -> sparse.csr_matrix:
        """The materialised sub-matrix (a copy: for callers that need scipy's own matrix, e.g. ADMM)."""
        return self.base[self.rows]
