"""Behaviour snapshots: each script's short run, with a fixed seed, gives the recorded metrics.json.

They freeze behaviour while code moves: a refactor must leave every number as it was. A change that means
to alter what a script computes re-records its snapshot (tests/snapshots/record.py) in the same commit."""

import glob
import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "snapshots"))
from record import run_script  # noqa: E402

SNAPSHOTS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "snapshots", "*.json")))
REL_TOL = 1e-7   # not bit-exactness: a reordered sum in a refactor may move the last digits; results may not


def differences(recorded, measured, ignore, where="metrics", loose=None, rel_tol=REL_TOL):
    """Every place where `measured` differs from `recorded` (keys in `ignore` skipped at any depth). `loose`
    maps a key to the relative tolerance of every number under it (float32 training: see the snapshot's
    "loose_why")."""
    loose = loose or {}
    if isinstance(recorded, dict):
        if not isinstance(measured, dict):
            return [f"{where}: expected a dict, got {type(measured).__name__}"]
        found = []
        if set(recorded) - set(ignore) != set(measured) - set(ignore):
            found.append(f"{where}: keys {sorted(set(recorded) ^ set(measured))} added or removed")
        for key in set(recorded) & set(measured) - set(ignore):
            found += differences(recorded[key], measured[key], ignore, f"{where}.{key}", loose,
                                 loose.get(key, rel_tol))
        return found
    if isinstance(recorded, list):
        if not isinstance(measured, list) or len(recorded) != len(measured):
            return [f"{where}: expected a list of {len(recorded)}"]
        return [d for i, (r, m) in enumerate(zip(recorded, measured))
                for d in differences(r, m, ignore, f"{where}[{i}]", loose, rel_tol)]
    if isinstance(recorded, float) and isinstance(measured, (int, float)) and not isinstance(measured, bool):
        same = math.isclose(recorded, measured, rel_tol=rel_tol, abs_tol=1e-12)
        return [] if same else [f"{where}: recorded {recorded!r}, now {measured!r}"]
    return [] if recorded == measured else [f"{where}: recorded {recorded!r}, now {measured!r}"]


@pytest.mark.parametrize("path", SNAPSHOTS, ids=[os.path.basename(p)[:-5] for p in SNAPSHOTS])
def test_short_run_gives_the_recorded_metrics(path):
    with open(path) as f:
        snapshot = json.load(f)
    measured = run_script(snapshot["script"], snapshot["argv"])
    found = differences(snapshot["metrics"], measured, set(snapshot["ignore"]), loose=snapshot.get("loose"))
    assert not found, f"{snapshot['script']}: {len(found)} differences, first: " + "; ".join(found[:5])
