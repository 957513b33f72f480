r"""Every figure the README quotes in a results table comes from a committed results file.

A results table is a Markdown table right after a line `<!-- results -->`. In a script's section
(`## \`X.py\``) its numbers must appear in docs/results/X*.json (X.json is the default run, X_full.json the
--full run, X_<part>.json a named part of one), rounded as printed. In the overview table at the top, each
row is checked against the script named in its first cell. The first column (row labels), the header row
and `code spans` (commands, flags) are not figures. A number matches a stored one if it prints the same at
the README's precision, sign aside ("5.2 below optimal" may quote -5.2); one followed by % also matches a
stored fraction."""

import glob
import json
import math
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["pong_pg", "trebuchet", "cartpole_dp", "pendulum_bptt", "rl2_bandits", "mve_critic"]
NUMBER = re.compile(r"(?<![\w.])[−-]?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:e[−+-]?\d+)?(%?)")


def stored_numbers(script):
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            found.append(float(value))

    for path in glob.glob(os.path.join(ROOT, "docs", "results", f"{script}*.json")):
        with open(path) as f:
            walk(json.load(f))
    return found


def results_tables(lines):
    """Yield (script or None, row cells) for every data row of every marked table."""
    script = None
    for i, line in enumerate(lines):
        heading = re.match(r"^## `(\w+)\.py`", line)
        if heading:
            script = heading.group(1)
        elif line.startswith("## "):
            script = None
        if line.strip() != "<!-- results -->":
            continue
        rows = []
        for row in lines[i + 1:]:
            if not row.startswith("|"):
                break
            rows.append([c.strip() for c in row.strip().strip("|").split("|")])
        for cells in rows[2:]:                     # header and the |---| line are not figures
            yield script, cells


def printed_figures(cell):
    text = re.sub(r"`[^`]*`", " ", cell)
    text = re.sub(r"\]\([^)]*\)", "]", text)       # link targets
    for m in NUMBER.finditer(text):
        whole, decimals, percent = m.group(1), m.group(2) or "", m.group(3)
        token = m.group(0).replace("−", "-").rstrip("%")
        if "e" in token.lower():
            yield token, float(token), None, percent
        else:
            yield token, float(whole.replace(",", "") + decimals), len(decimals) - 1 if decimals else 0, percent


def matches(value, places, percent, stored):
    candidates = stored + ([100 * s for s in stored] if percent else [])
    if places is None:                            # scientific notation: same 2 significant digits
        return any(math.isclose(abs(s), abs(value), rel_tol=0.05) for s in candidates)
    want = f"{abs(value):.{places}f}"
    return any(f"{abs(s):.{places}f}" == want for s in candidates)


def readme_rows():
    with open(os.path.join(ROOT, "README.md")) as f:
        lines = f.read().splitlines()
    for section, cells in results_tables(lines):
        named = [s for s in SCRIPTS if s in cells[0]]
        script = section or (named[0] if named else None)
        if script is not None:
            yield script, cells


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_results_table_figure_is_in_a_results_file(script):
    rows = [cells for s, cells in readme_rows() if s == script]
    assert rows, f"README has no results table (a table after <!-- results -->) for {script}"
    stored, missing = stored_numbers(script), []
    for cells in rows:
        for cell in cells[1:]:
            for token, value, places, percent in printed_figures(cell):
                if not matches(value, places, percent, stored):
                    missing.append(f"{token}{percent} in row '{cells[0][:40]}'")
    assert not missing, f"{script}: {len(missing)} README figures are in no docs/results file: " + "; ".join(missing[:12])


@pytest.mark.parametrize("script", SCRIPTS)
def test_default_and_full_results_files_exist(script):
    for suffix in ("", "_full"):
        path = os.path.join(ROOT, "docs", "results", f"{script}{suffix}.json")
        assert os.path.exists(path), f"missing {os.path.relpath(path, ROOT)}"
        with open(path) as f:
            record = json.load(f)
        assert {"metrics", "provenance"} <= set(record), f"{path}: not a metrics.json with provenance"
        assert record["provenance"].get("command"), f"{path}: no command recorded"
