"""Test-wide settings, applied before any test module imports NumPy."""

import os

# The engine's hot loops multiply small matrices; BLAS threads only add overhead there (10x or more when the
# two cores are busy), so the suite runs single-threaded unless the caller chose otherwise.
for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")
