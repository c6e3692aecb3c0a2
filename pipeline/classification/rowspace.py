"""The span of a train matrix's rows, where an L2-penalized linear model with more features than rows is fitted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Up to this many train rows, an L2-penalized linear model with more features than rows is fitted in the span of its
# rows (RowSpace): the Gram matrix and its eigendecomposition grow as rows² and rows³.
GRAM_MAX_ROWS = 8192
# Row-space directions whose Gram eigenvalue is below this fraction of the largest are dropped: about the rounding
# noise of a Gram matrix computed in that float precision (float32 features: float32 Gram).
RANK_TOLERANCE = {4: 1e-6, 8: 1e-10}


@dataclass(frozen=True)
class RowSpace:
    """The span of the rows of a train matrix ``X`` (n x d, n < d), in the orthonormal basis ``V = Xᵀ U Λ^-½`` (``U
    Λ Uᵀ``: the eigendecomposition of the Gram matrix ``X Xᵀ``, r <= n directions), which is never formed.

    An L2-penalized linear model's weights lie in that span (a part outside it changes no train score and only adds
    to the penalty), so a fit on ``project_train()`` (n x r) has the decision function of the fit on all d columns,
    at a fraction of the cost when d is far above n; ``lift`` maps its weights back to the d columns, ``project``
    maps other rows into the basis. Directions whose eigenvalue is below ``RANK_TOLERANCE`` of the largest are
    dropped (rounding noise of the Gram matrix, computed in ``X``'s precision).
    """

    train: np.ndarray
    inverse: np.ndarray  # U Λ^-½ (n x r): V = Xᵀ @ inverse
    scale: np.ndarray  # Λ^½ (r,)

    @classmethod
    def of(cls, X: np.ndarray) -> RowSpace | None:
        """The row space of ``X``; None where it does not pay (``n >= d``, ``n`` above ``GRAM_MAX_ROWS``, or every
        column constant) or there is none (no rows: the estimator's own checks then refuse them)."""
        n, d = X.shape
        if n == 0 or n >= d or n > GRAM_MAX_ROWS:
            return None
        X = X if X.dtype in (np.float32, np.float64) else X.astype(np.float64)
        values, vectors = np.linalg.eigh((X @ X.T).astype(np.float64))
        if values[-1] <= 0:
            return None
        keep = values > values[-1] * RANK_TOLERANCE[X.dtype.itemsize]
        scale = np.sqrt(values[keep])
        return cls(train=X, inverse=vectors[:, keep] / scale, scale=scale)

    def project_train(self) -> np.ndarray:
        """``X V`` (n x r), in ``X``'s dtype."""
        return (self.inverse * self.scale**2).astype(self.train.dtype)

    def project(self, M: np.ndarray) -> np.ndarray:
        """``M V`` (rows of ``M`` in the basis), in ``X``'s dtype."""
        return ((M @ self.train.T) @ self.inverse).astype(self.train.dtype)

    def lift(self, coef: np.ndarray) -> np.ndarray:
        """Weights on the basis (k x r) as weights on the d columns: ``coef Vᵀ``."""
        return (coef @ self.inverse.T) @ self.train
