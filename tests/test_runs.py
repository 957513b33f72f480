"""The shared plumbing in autodiff/runs.py: the command line, streams, progress, results and playing episodes."""

import io
import json
import os

import numpy as np
import pytest

import autodiff as ad

SETTINGS = {"episodes": 10, "lr": 0.01, "render": False, "env_id": "CartPole-v1"}
FULL = {"episodes": 100}


def parse(*argv, **kwargs):
    return ad.runs.command_line("Title line.\n\nMore.", "demo", SETTINGS, FULL, {"episodes": "training episodes"},
                                argv=list(argv), **kwargs)


def test_settings_become_flags_and_full_overlays_the_defaults_but_not_explicit_flags():
    args = parse()
    assert (args.episodes, args.lr, args.render, args.seed, args.full) == (10, 0.01, False, 0, False)
    assert args.out == os.path.join("runs", "demo")
    assert parse("--full").episodes == 100 and parse("--full").out == os.path.join("runs", "demo_full")
    assert parse("--full", "--episodes", "7").episodes == 7
    assert parse("--render").render is True and parse("--no-render").render is False
    assert parse("--env-id", "Pendulum-v1").env_id == "Pendulum-v1"
    assert parse("--seed", "3").command == "python demo.py --seed 3"


def test_help_shows_the_value_each_mode_really_uses(capsys):
    with pytest.raises(SystemExit):
        parse("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "training episodes (default 10; --full: 100)" in text


@pytest.mark.parametrize("argv", [["--episodes", "-1"], ["--episodes", "1e11"], ["--lr", "nan"],
                                  ["--seed", str(2**70)], ["--bogus"], ["--episodes", "abc"]])
def test_a_bad_flag_is_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(*argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("demo.py: error:"), err


def test_an_overlay_naming_no_setting_is_a_programming_error():
    with pytest.raises(ValueError, match="do not exist"):
        ad.runs.command_line("t", "demo", SETTINGS, {"episdes": 3}, argv=[])


def test_run_turns_user_errors_into_one_line_and_exit_codes(capsys):
    def bad_input(argv):
        raise ad.runs.BadInput("x.npz: not a readable .npz")

    def diverged(argv):
        ad.runs.check_finite("loss", float("nan"), "step 5")

    for main, code in [(bad_input, 2), (diverged, 3)]:
        with pytest.raises(SystemExit) as exit_:
            ad.runs.run(main, prog="demo.py")
        assert exit_.value.code == code
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("demo.py: error:"), err


def test_a_missing_package_stops_the_run_before_any_work(capsys):
    called = []
    with pytest.raises(SystemExit) as exit_:
        ad.runs.run(called.append, prog="demo.py", needs=("numpy", "no_such_package_here"))
    assert exit_.value.code == 2 and called == []
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no_such_package_here not installed" in err, err
    assert "pip install -r requirements.txt" in err
    ad.runs.run(called.append, prog="demo.py", needs=("numpy",))     # all there: main runs
    assert called == [None]


def test_random_streams_are_named_reproducible_and_independent_of_each_other():
    a = ad.runs.random_streams(5, "init", "train")
    b = ad.runs.random_streams(5, "train")
    assert np.array_equal(a["train"].normal(size=4), b["train"].normal(size=4))
    c = ad.runs.random_streams(5, "init", "train")
    assert not np.array_equal(c["init"].normal(size=4), c["train"].normal(size=4))
    assert not np.array_equal(ad.runs.random_streams(6, "train")["train"].normal(size=4),
                              ad.runs.random_streams(5, "train")["train"].normal(size=4))


def test_progress_prints_elapsed_and_an_eta_bounded_by_the_deadline():
    stream = io.StringIO()
    progress = ad.runs.Progress(total=1000, label="train", every=0, stream=stream, deadline=60.0)
    progress.started -= 10.0                       # 10 s spent on 1 of 1000 steps: 2.8 h by count, 50 s by deadline
    progress.update(1, loss=0.5)
    line = stream.getvalue()
    assert "train 1/1000" in line and "loss=0.5" in line and "elapsed 10.0s" in line and "eta 50.0s" in line


def test_metrics_are_written_atomically_with_the_provenance(tmp_path):
    args = parse("--episodes", "3")
    path = ad.runs.write_metrics(str(tmp_path), {"mean": np.float32(1.5), "curve": np.arange(3), "bad": np.inf},
                                 args, started=0.0)
    record = json.load(open(path))
    assert record["metrics"] == {"mean": 1.5, "curve": [0, 1, 2], "bad": "inf"}
    assert record["args"]["episodes"] == 3
    assert record["provenance"]["command"] == "python demo.py --episodes 3"
    assert record["provenance"]["cores"] == os.cpu_count() and record["provenance"]["versions"]["numpy"]
    assert record["provenance"]["cpu"]          # the CPU: another one may round float products differently
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_statistics_helpers():
    mean, se = ad.runs.mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
    paired = ad.runs.paired_difference([2.0, 3.0, 5.0], [1.0, 1.0, 1.0])
    assert paired["mean"] == pytest.approx(7 / 3) and paired["n"] == 3
    with pytest.raises(ValueError, match="not the same starts"):
        ad.runs.paired_difference([1.0], [1.0, 2.0])
    assert ad.runs.first_reaching([10, 20, 30], [-5, 1, 3], 0) == 20
    assert ad.runs.first_reaching([10, 20], [-5, -1], 0) is None


def test_play_episodes_matches_a_hand_written_gymnasium_loop():
    import gymnasium as gym

    def policy(obs):
        return (obs[:, 2] > 0).astype(np.int64)

    played = ad.runs.play_episodes("CartPole-v1", policy, seeds=[3, 4, 5])
    for i, seed in enumerate([3, 4, 5]):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(int(obs[2] > 0))
            total += reward
            done = terminated or truncated
        assert played["returns"][i] == total and played["lengths"][i] == total
        assert np.array_equal(played["last_obs"][i], obs)


def test_figure_problems_names_what_a_reader_would_miss():
    plt = ad.runs.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], label="a")
    ax.plot([1, 0], label="b")
    assert set(ad.runs.figure_problems(fig)) == {"axes 0: no title", "axes 0: no x-axis label",
                                                 "axes 0: no y-axis label", "axes 0: 2 labelled lines but no legend"}
    ax.set(title="t", xlabel="x (s)", ylabel="y (m)")
    ax.legend()
    assert ad.runs.figure_problems(fig) == []
    plt.close(fig)


def test_parameters_that_would_need_pickling_are_never_written(tmp_path):
    path = str(tmp_path / "p.npz")
    with pytest.raises(ValueError, match="without pickling"):
        ad.nn.save_parameters(path, {"W": np.ones(2)}, seed=2**70)
    assert not os.path.exists(path)
    ad.nn.save_parameters(path, {"W": np.ones(2)}, seed=2**31)
    assert ad.nn.load_arrays(path)["seed"] == 2**31


def test_reset_states_are_the_states_gymnasium_starts_from():
    import gymnasium as gym
    env = gym.make("CartPole-v1")
    env.reset(seed=7)
    assert np.array_equal(ad.runs.reset_states("CartPole-v1", [3, 7])[1], env.unwrapped.state)
    env.close()


def test_one_of_accepts_only_its_words():
    import argparse
    parse = ad.runs.one_of("test", "tuning")
    assert parse("test") == "test"
    with pytest.raises(argparse.ArgumentTypeError, match="expected one of test, tuning"):
        parse("train")
