"""Test-wide settings, applied before any test module imports NumPy."""

import autodiff  # noqa: F401  (first, so that its single-threaded BLAS setting applies before NumPy loads)
