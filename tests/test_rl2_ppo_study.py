"""The PPO study (docs/rl2_bandits_ppo_study.py) changes rl2_bandits' settings in the stage each arm names and
nowhere else, so that each ablation row measures the change its name says."""

import copy
import json
import os

import pytest

import rl2_bandits as rl2


PPO_BY_N_AS_SHIPPED = copy.deepcopy(rl2.PPO_BY_N)


@pytest.fixture
def study(docs_study, monkeypatch):
    # apply_arm edits rl2's settings in place: give it copies, so no other test sees the change
    for name in ("PPO_BY_N", "SETTINGS", "FULL"):
        monkeypatch.setattr(rl2, name, copy.deepcopy(getattr(rl2, name)))
    return docs_study("rl2_bandits_ppo_study")


def changed_stages(before, after):
    return {n: {key: value for key, value in after[n].items() if before[n].get(key) != value}
            for n in after if after[n] != before[n]}


def trained_stages(args):
    """What rl2_bandits trains at each n with these arguments."""
    return {n: rl2.cell_config(n, args) for n in rl2.PPO_BY_N}


def applied(study, arm):
    study.apply_arm(arm)
    return trained_stages(rl2.parse_arguments(["--full"]))


def test_each_arm_changes_the_stages_it_names(study):
    before = study.arm_settings("default")
    arm = "n10_iterations_1000+critic_time+means_entropy_1e-2_n100_n500"
    assert changed_stages(before, applied(study, arm)) == {
        10: dict(iterations=1000), 100: dict(critic_sees="time+means", entropy_coef=0.01),
        500: dict(critic_sees="time+means", entropy_coef=0.01)}
    assert study.stage_changed(arm) == "n = 10 and n = 100 and n = 500"
    assert study.EVERY_ARM[arm] == {"n = 10": dict(iterations=1000),
                                    "n = 100": dict(critic_sees="time+means", entropy_coef=0.01),
                                    "n = 500": dict(critic_sees="time+means", entropy_coef=0.01)}


@pytest.mark.parametrize("arm, stages", [("lr_1e-2", {100: dict(lr=1e-2)}),
                                         ("n10_iterations_1000", {10: dict(iterations=1000)}),
                                         ("hidden_256", {10: dict(hidden=256), 100: dict(hidden=256)}),
                                         ("default", {})])
def test_one_stage_arms(study, arm, stages):
    assert changed_stages(study.arm_settings("default"), applied(study, arm)) == stages


def test_the_adopted_arm_is_what_the_script_trains(study):
    # every stage of --full: the adopted arm's results files are what rl2_bandits.py --full prints
    script = trained_stages(rl2.parse_arguments(["--full"]))
    assert applied(study, study.ADOPTED) == script
    assert study.arm_settings("default") != study.arm_settings(study.ADOPTED)


def test_each_arm_trains_what_its_results_file_records(study):
    # the last stage's settings, as each ablation row's file recorded them for every training seed (files from
    # before a setting existed lack its key)
    for arm, cell, name in study.ABLATION:
        with open(os.path.join(study.RESULTS, name)) as f:
            recorded = json.load(f)["metrics"][cell]["training"]
        study.rl2.PPO_BY_N.update(copy.deepcopy(PPO_BY_N_AS_SHIPPED))
        config = applied(study, arm)[int(cell.split("_")[0][1:])]
        for run in recorded:
            assert {key: config[key] for key in run["config"]} == run["config"], (arm, cell, name)


def test_every_ablation_row_names_a_known_arm_and_cell(study):
    for arm, cell, name in study.ABLATION:
        assert arm in study.EVERY_ARM, arm
        n, k = (int(part[1:]) for part in cell.split("_"))
        assert n in rl2.PPO_BY_N and k > 1
        assert name.startswith("rl2_bandits_") and name.endswith(".json")
    for arm, part in study.PAIRED_BY_SEED:
        assert arm in study.EVERY_ARM and part in study.EVERY_ARM


def test_an_unknown_arm_is_a_one_line_error(study):
    with pytest.raises(study.ad.runs.BadInput, match="names an arm"):
        study.main(["no_such_arm"])


def test_the_results_record_the_study_command_with_its_arm(study, monkeypatch):
    # the run itself is replaced by the command-line parse, which is where the recorded command is set
    monkeypatch.setattr(rl2, "main", lambda argv, command=None: rl2.parse_arguments(argv, command))
    args = study.main(["critic_time+means", "--cells", "n100_k10", "--training-seeds", "3"])
    assert args.command == "python docs/rl2_bandits_ppo_study.py critic_time+means --cells n100_k10 --training-seeds 3"
    assert args.provenance_at_start["command"] == args.command
    assert rl2.parse_arguments(["--cells", "n10_k5"]).command == "python rl2_bandits.py --cells n10_k5"
