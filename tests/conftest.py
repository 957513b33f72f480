"""Test-wide settings, applied before any test module imports NumPy."""

import autodiff  # noqa: F401  (first, so that its single-threaded BLAS setting applies before NumPy loads)

import importlib.util  # noqa: E402
import os  # noqa: E402

import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def docs_study():
    """Load a study script of docs/ (not a package) by its file name: docs_study("trebuchet_tuning_study")."""
    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "docs", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load
