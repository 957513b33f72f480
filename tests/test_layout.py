"""Every script reads as a lesson, in one shape: the docstring states the idea, Part 1 follows the same nine
sections in the same order, `main` is an outline, no function is too long to see whole, and the words are the
same across the six (see README.md, "How a script reads")."""

import ast
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["pong_pg", "trebuchet", "cartpole_dp", "pendulum_bptt", "rl2_bandits", "mve_critic"]
SECTIONS = ["1. Settings", "2. Environment", "3. Model", "4. Loss", "5. Update", "6. Training", "7. Baseline",
            "8. Measurement", "9. main"]
PART_2 = re.compile(r"^# ===.*Part 2")
LONGEST_FUNCTION = 60       # lines; most are under 40
LONGEST_MAIN = 40
LONGEST_DOCSTRING = 40


def source(script):
    with open(os.path.join(ROOT, f"{script}.py")) as f:
        return f.read()


@pytest.mark.parametrize("script", SCRIPTS)
def test_part_one_has_the_nine_sections_in_order_then_the_part_two_banner(script):
    lines = source(script).splitlines()
    part_2 = [i for i, line in enumerate(lines) if PART_2.match(line)]
    assert len(part_2) == 1, f"{script}: expected one '# === ... Part 2 ...' banner, found {len(part_2)}"
    found = []
    for i, line in enumerate(lines[: part_2[0]]):
        for name in SECTIONS:
            if re.match(rf"^# {re.escape(name)}\b", line):
                found.append(name)
    assert found == SECTIONS, f"{script}: Part 1 sections are {found}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_docstring_is_the_idea_not_a_results_report(script):
    doc = ast.get_docstring(ast.parse(source(script)))
    assert doc, f"{script}: no docstring"
    lines = doc.splitlines()
    assert len(lines) <= LONGEST_DOCSTRING, f"{script}: docstring of {len(lines)} lines"
    assert not any(re.match(r"^\s*\|.*\|", line) for line in lines), f"{script}: a table in the docstring"
    assert "README" in doc, f"{script}: the docstring should point to the README for results"


@pytest.mark.parametrize("script", SCRIPTS)
def test_main_is_an_outline_and_every_function_can_be_seen_whole(script):
    tree = ast.parse(source(script))
    too_long = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            limit = LONGEST_MAIN if node.name == "main" else LONGEST_FUNCTION
            if length > limit:
                too_long.append(f"{node.name} ({length} lines)")
    assert not too_long, f"{script}: too long to see whole: {too_long}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_one_vocabulary(script):
    text = source(script)
    for pattern, why in [(r"optimis(?:e|er|ers|ing|ation|ed)\b", "spell it 'optimizer'"),
                         (r"\bthe seed's\b|\bthe seed (?:code|script|used|had|did)", "say 'the original'"),
                         (r"\bissue\b|anchors\.md|results\.md|mve_spec", "cites a document a student lacks")]:
        hits = [line.strip() for line in text.splitlines() if re.search(pattern, line, re.IGNORECASE)]
        assert not hits, f"{script}: {why}: {hits[:3]}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_import_the_engine_and_no_other_script(script):
    tree = ast.parse(source(script))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & (set(SCRIPTS) - {script}), f"{script} imports another script"
    assert not imported & {"torch", "jax", "scipy", "autograd"}, f"{script}: a forbidden dependency"


@pytest.mark.parametrize("script", SCRIPTS)
def test_importing_a_script_prints_nothing_and_writes_nothing(script, tmp_path):
    code = f"import sys; sys.path.insert(0, {ROOT!r}); import {script}"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "", f"{script}: importing printed {done.stdout[:200]!r}"
    assert os.listdir(tmp_path) == [], f"{script}: importing wrote {os.listdir(tmp_path)}"
