"""Bad input never costs work and never shows a traceback.

Every loader and every script's command line is run against a generated set of bad files and flags. Each
must answer with one line on stderr naming what is wrong, exit non-zero, and leave existing output as it was.
The scripts' cases are lists of command lines; "{bad}" in one is replaced by each bad file in turn."""

import hashlib
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import autodiff as ad

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# The bad files
# ----------------------------------------------------------------------------
def make_bad_files(folder):
    """{kind: path} of files no loader may accept (nor trace back on)."""
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    paths = {}

    def path(kind, suffix=".npz"):
        paths[kind] = os.path.join(folder, kind + suffix)
        return paths[kind]

    with open(path("random_bytes"), "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    open(path("empty"), "wb").close()
    np.savez(path("good_for_truncating"), W=np.ones((40, 40)))
    with open(paths.pop("good_for_truncating"), "rb") as f:
        data = f.read()
    with open(path("truncated"), "wb") as f:
        f.write(data[: len(data) // 2])
    os.makedirs(path("a_directory"))
    np.savez(path("another_scripts_file"), unrelated_weights=np.ones((3, 3)), seed=np.int64(0))
    np.savez(path("nan_inside"), W=np.full((2, 2), np.nan))
    np.savez(path("strings"), W=np.array(["a", "b"]))
    np.save(os.path.join(folder, "obj.npy"), np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with zipfile.ZipFile(path("object_array"), "w") as z:
        z.write(os.path.join(folder, "obj.npy"), "W.npy")
    with zipfile.ZipFile(path("not_arrays"), "w") as z:
        z.writestr("W.txt", "hello")
    np.savez(path("huge_seed"), W=np.ones((2, 2)), seed=np.array(2**70, dtype=object))
    return paths


def folder_fingerprint(folder):
    """{relative path: sha1} of every file below `folder` (to check that nothing was overwritten)."""
    found = {}
    for base, _, files in os.walk(folder):
        for name in files:
            full = os.path.join(base, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, folder)] = hashlib.sha1(f.read()).hexdigest()
    return found


def assert_refused(script, argv, untouched=None, timeout=120):
    """Run `python script.py argv`: one line on stderr, no traceback, non-zero exit, `untouched` unchanged."""
    before = folder_fingerprint(untouched) if untouched else None
    done = subprocess.run([sys.executable, f"{script}.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, MPLBACKEND="Agg"), stdin=subprocess.DEVNULL)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    shown = f"{script}.py {' '.join(argv)}: exit {done.returncode}, stderr: {done.stderr[-800:]!r}"
    assert done.returncode != 0, shown
    assert "Traceback" not in done.stderr, shown
    assert len(lines) == 1, shown
    if untouched:
        assert folder_fingerprint(untouched) == before, f"{shown}: existing output changed"
    return lines[0]


def run_cases(script, cases, tmp_path):
    bad = make_bad_files(tmp_path / "bad")
    for argv in cases:
        if any("{bad}" in a for a in argv):
            for kind, path in bad.items():
                assert_refused(script, [a.replace("{bad}", path) for a in argv])
        else:
            assert_refused(script, [a.replace("{tmp}", str(tmp_path)) for a in argv])


# ----------------------------------------------------------------------------
# The shared loader and output folder
# ----------------------------------------------------------------------------
def test_the_shared_loader_refuses_every_bad_file_in_one_named_line(tmp_path):
    for kind, path in make_bad_files(tmp_path).items():
        with pytest.raises(ad.runs.BadInput) as error:
            ad.runs.load_arrays(path, expected={"W": (2, 2)})
        message = str(error.value)
        assert path in message and "\n" not in message, (kind, message)
        assert "allow_pickle" not in message, (kind, message)
    with pytest.raises(ad.runs.MissingFile):
        ad.runs.load_arrays(tmp_path / "nothing_here.npz")


def test_an_unusable_output_folder_is_refused_before_any_work(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for path in ["", str(a_file), str(a_file / "below"), "/proc/not_writable"]:
        with pytest.raises(ad.runs.BadInput):
            ad.runs.prepare_out(path)
    assert os.path.isdir(ad.runs.prepare_out(str(tmp_path / "new" / "parents")))


def test_divergence_is_named():
    with pytest.raises(ad.runs.Diverged, match="loss is not finite at episode 3"):
        ad.runs.check_finite("loss", np.array([1.0, np.nan]), "episode 3")
    ad.runs.check_finite("loss", 1.0)


# The script sections below are filled in by each script's own work; each keeps to its own section.

# ============================================================================
# pong_pg.py
# ============================================================================
PONG_CASES = [               # damaged checkpoints, orphaned workers and SIGTERM: tests/test_pong_pg.py
    ["--play", "{bad}"],
    ["--resume", "--out", "{tmp}/no_checkpoint_here"],
    ["--out", ""],
    ["--out", "/proc/not_writable"],
    ["--env-id", "bogus"],
    ["--env-id", "ALE/Breakout-v5"],
    ["--games", "11"],
    ["--episodes", "1e11"],
    ["--seed", str(2**70)],
    ["--hours", "nan"],
    ["--standardise", "median"],
    ["--play", "--resume"],
    ["--resume", "--overwrite"],
]


def test_pong_pg_refuses_bad_input(tmp_path):
    run_cases("pong_pg", PONG_CASES, tmp_path)


# ============================================================================
# trebuchet.py
# ============================================================================
TREBUCHET_CASES = [
    ["--out", ""],
    ["--out", "/proc/not_writable"],
    ["--out", "{tmp}/bad/empty.npz"],                      # an existing file, not a folder
    ["--aimer", "{bad}"],
    ["--aimer", "{tmp}/no_such_aimer.npz"],
    ["--eval-pairs", "0"],
    ["--steps", "1e11"],
    ["--batch", "100000000000"],
    ["--hidden", "0"],
    ["--seed", str(2**70)],
    ["--seed", "-1"],
    ["--lr", "nan"],
    ["--lr", "1e308"],
    ["--huber-delta", "0"],
    ["--model", "bogus"],
    ["--eval-stream", "train"],               # only 'test' and 'tuning' are held out
    ["--no-such-flag"],
]


def test_trebuchet_refuses_bad_input(tmp_path):
    run_cases("trebuchet", TREBUCHET_CASES, tmp_path)


def test_trebuchet_bad_aimer_leaves_an_existing_run_untouched(tmp_path):
    bad = make_bad_files(tmp_path / "bad")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    np.savez(run / "params.npz", W1=np.ones((2, 4)))
    for kind in ("random_bytes", "truncated", "another_scripts_file"):
        assert_refused("trebuchet", ["--aimer", bad[kind], "--out", str(run)], untouched=run)


# ============================================================================
# cartpole_dp.py
# ============================================================================
CARTPOLE_CASES = [
    ["--play", "{bad}"],                                   # every bad parameter file, refused on load
    ["--out", ""], ["--out", "/proc/not_writable"], ["--out", "{tmp}/bad/random_bytes.npz"],
    ["--seed", str(2**70)], ["--seed", "-1"],
    ["--dp-seeds", "100000000000"], ["--dp-seeds", "1e11"], ["--dp-seeds", "0"],
    ["--rl-max-episodes", "100000000000"], ["--dp-max-episodes", "100000000000"], ["--rl-seeds", "-1"],
    ["--window", "0"], ["--lr", "nan"], ["--lr", "-1"], ["--lr", "inf"], ["--no-such-flag"],
    ["--budget", "-1"], ["--budget", "1e11"], ["--margin", "nan"],
]


def test_cartpole_dp_refuses_bad_input(tmp_path):
    run_cases("cartpole_dp", CARTPOLE_CASES, tmp_path)


def test_cartpole_dp_divergence_and_bad_play_keep_existing_output(tmp_path):
    """A diverged run (exit 3) and a bad --play file stop before writing: an earlier run's files stay."""
    out = tmp_path / "earlier_run"
    out.mkdir()
    (out / "params.npz").write_bytes(b"an earlier run's policy")
    (out / "metrics.json").write_text("{}")
    assert "not finite" in assert_refused("cartpole_dp", ["--lr", "1e308", "--dp-seeds", "1", "--rl-seeds", "0",
                                                          "--out", str(out)], untouched=out)
    bad = make_bad_files(tmp_path / "bad")
    assert_refused("cartpole_dp", ["--play", bad["nan_inside"], "--out", str(out)], untouched=out)


# ============================================================================
# pendulum_bptt.py
# ============================================================================
PENDULUM_CASES = [
    ["--play", "{bad}"],                                   # every bad file: refused before any folder is made
    ["--seed", "100000000000000000000000"], ["--seed", "-1"], ["--seed", "1.5"],
    ["--sim-steps", "1e11"], ["--sim-steps", "100000000000"], ["--long-sim-steps", "100000000000"],
    ["--batch", "0"], ["--batch", "100000000000"], ["--eval-episodes", "0"], ["--fresh-episodes", "100000000000"],
    ["--hidden", "100000000000"], ["--vi-angles", "100000000000"], ["--ddpg-steps", "100000000000"],
    ["--lr", "nan"], ["--long-lr", "inf"], ["--lr", "0"], ["--policy", "round"], ["--grid", "2"],
    ["--out", ""], ["--out", "/proc/not_writable"], ["--out", "{tmp}/bad/empty.npz"],
    ["--out", "{tmp}/bad/empty.npz/below"],
]


def test_pendulum_bptt_refuses_bad_input(tmp_path):
    run_cases("pendulum_bptt", PENDULUM_CASES, tmp_path)


def test_pendulum_bptt_divergence_is_one_line_and_keeps_what_was_there(tmp_path):
    """--long-lr 1e308 diverges in phase 2: exit 3, one line, the earlier run's files untouched, and the
    last finite parameters saved beside them."""
    out = tmp_path / "earlier_run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    np.savez(out / "params.npz", W1=np.ones((3, 2)))
    before = {name: folder_fingerprint(out)[name] for name in ("metrics.json", "params.npz")}
    line = assert_refused("pendulum_bptt", ["--sim-steps", "200", "--long-sim-steps", "64000", "--long-lr", "1e308",
                                            "--curve-episodes", "1", "--out", str(out)])
    assert "diverged" in line and "params_last_finite.npz" in line, line
    after = folder_fingerprint(out)
    assert {name: after[name] for name in before} == before
    import pendulum_bptt
    policy = pendulum_bptt.policy_from_file(str(out / "params_last_finite.npz"))
    assert np.all(np.isfinite(policy(np.zeros(3, dtype=np.float32))))


def test_pendulum_bptt_a_refused_flag_leaves_an_earlier_run_untouched(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    assert_refused("pendulum_bptt", ["--grid", "2", "--out", str(tmp_path)], untouched=tmp_path)
    assert_refused("pendulum_bptt", ["--play", str(tmp_path / "metrics.json"), "--out", str(tmp_path)],
                   untouched=tmp_path)


# ============================================================================
# rl2_bandits.py
# ============================================================================
RL2_CASES = [
    ["--params", "{bad}", "--out", "{tmp}/rl2_out"],              # every bad file: one line naming it
    ["--params", "{tmp}/no_such_file.npz", "--out", "{tmp}/rl2_out"],
    ["--out", ""],
    ["--out", "/proc/not_writable"],
    ["--out", "{tmp}/rl2_a_file"],                                # a file, not a folder
    ["--n", "7"], ["--cells", "n10_k7"], ["--cells", "nonsense"],
    ["--iterations", "100000000000"], ["--trials", "1e11"], ["--hidden", "100000000000"],
    ["--eval-tasks", "100000000000"], ["--eval-tasks", "1000000", "--cells", "n500_k5"],
    ["--seed", str(2**70)], ["--seed", "-1"], ["--lr", "nan"], ["--lr", "0"],
    ["--lr", "1e308", "--iterations", "3", "--trials", "8", "--out", "{tmp}/rl2_diverged"],   # diverges: exit 3
]


def rl2_files(tmp_path):
    """A file where a folder should be; an agent file whose right keys hold wrong shapes, NaN, strings, a
    huge GRU size; a finished run whose folder an evaluation must not overwrite."""
    (tmp_path / "rl2_a_file").write_text("x")
    import rl2_bandits as rl2
    agent = rl2.make_agent(5, 4, np.random.default_rng(0))
    good = rl2.agent_file_entries(agent, 10, 5)
    damaged = {"wrong_shape": {**good, "n10_k5.policy_gru.Wx": np.ones((3, 3))},
               "nan_weights": {**good, "n10_k5.value_head.W": np.full((4, 1), np.nan)},
               "string_weights": {**good, "n10_k5.policy_head.b": np.array(["a"] * 5)},
               "huge_hidden": {**good, "n10_k5.hidden": np.array(10**12)},
               "float_hidden": {**good, "n10_k5.hidden": np.array(4.5)}}
    paths = []
    for name, arrays in damaged.items():
        path = tmp_path / f"rl2_{name}.npz"
        np.savez(path, **{key: np.asarray(getattr(v, "data", v)) for key, v in arrays.items()})
        paths.append(str(path))
    run = tmp_path / "rl2_finished_run"
    run.mkdir()
    np.savez(run / "params.npz", **{key: np.asarray(getattr(v, "data", v)) for key, v in good.items()})
    (run / "metrics.json").write_text("{}")
    return paths, run


def test_rl2_bandits_refuses_bad_input(tmp_path):
    damaged, run = rl2_files(tmp_path)
    run_cases("rl2_bandits", RL2_CASES, tmp_path)
    for path in damaged:
        line = assert_refused("rl2_bandits", ["--params", path, "--out", str(tmp_path / "rl2_out")])
        assert path in line, line
    assert_refused("rl2_bandits", ["--params", str(run / "params.npz"), "--out", str(run)], untouched=run)


# ============================================================================
# mve_critic.py
# ============================================================================
MVE_CASES = [
    ["--exp", "1", "--episodes", "10"],                  # fewer than one 64-episode batch
    ["--episodes", "100000000000"],                      # sizes that would exhaust memory or time
    ["--held-out", "100000000000"],
    ["--env-steps", "1e11"],
    ["--seed", "100000000000000000000000"],              # a seed no .npz stores exactly
    ["--seed", "-1"],
    ["--out", ""],
    ["--out", "/proc/not_writable"],
    ["--exp", "4"],
    ["--horizons", "3"],                                 # H must divide T = 128
    ["--rhos", "nan"],
    ["--stiffness-sweep", "6000"],                       # unstable: k dt^2 (1/m_p + 1/m_b) >= 4
    ["--arms", "H4,bogus"],
    ["--actor-lr", "0"],
    ["--actor-lr", "inf"],
    ["--exp", "1", "--horizons", "0,4"],                 # no H = T, so nothing to compare with
]


def test_mve_critic_refuses_bad_input(tmp_path):
    run_cases("mve_critic", MVE_CASES, tmp_path)


def test_mve_critic_leaves_earlier_output_alone(tmp_path):
    """A refused command does not touch an earlier run's folder; an unwritable folder is refused before any
    work; a run that diverges stops with exit 3, names it, and keeps the earlier metrics.json as it was."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "metrics.json").write_text('{"metrics": {}}')
    assert_refused("mve_critic", ["--out", str(earlier), "--exp", "1", "--episodes", "10"], untouched=earlier)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert "not a folder" in assert_refused("mve_critic", ["--out", str(a_file)])
    if os.geteuid() != 0:                                # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert "cannot write" in assert_refused("mve_critic", ["--out", str(locked / "run")])
    line = assert_refused("mve_critic", ["--out", str(earlier), "--exp", "2", "--arms", "BPTT", "--env-steps", "8192",
                                         "--actor-lr", "1e308"])
    assert "not finite" in line, line
    assert (earlier / "metrics.json").read_text() == '{"metrics": {}}'
