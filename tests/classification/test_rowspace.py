"""Tests for pipeline.classification.rowspace: the basis of a train matrix's rows, never formed."""

import numpy as np
import pytest

from pipeline.classification.rowspace import RowSpace


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_space_is_an_orthonormal_basis_of_the_rows(dtype):
    X = np.random.default_rng(0).standard_normal((30, 100)).astype(dtype)
    space = RowSpace.of(X)
    basis = X.T.astype(np.float64) @ space.inverse  # V, which the class never forms
    assert basis.shape == (100, 30)
    np.testing.assert_allclose(basis.T @ basis, np.eye(30), atol=1e-4 if dtype == np.float32 else 1e-10)
    assert space.project_train().dtype == space.project(X[:5]).dtype == dtype
    np.testing.assert_allclose(space.project_train(), X @ basis, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(space.project(X[:5]), X[:5] @ basis, rtol=1e-4, atol=1e-4)
    coef = np.random.default_rng(1).standard_normal((3, 30))
    np.testing.assert_allclose(space.lift(coef), coef @ basis.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(space.project_train() @ space.project_train().T, X @ X.T, rtol=1e-3, atol=1e-2)
    assert RowSpace.of(X[:, :20]) is None  # as many rows as columns or more: nothing to gain


def test_no_row_space_without_rows_or_without_variation():
    assert RowSpace.of(np.zeros((0, 10), np.float32)) is None
    assert RowSpace.of(np.zeros((3, 10), np.float32)) is None  # every column constant zero: no direction
