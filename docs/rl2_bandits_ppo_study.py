"""A study for rl2_bandits.py's go-further (not part of the lesson): the n = 100 stage's PPO settings, one change
at a time, measured by rl2_bandits.py's own main (the same unseen tasks, the same tuning, the same paired table).

    python docs/rl2_bandits_ppo_study.py ARM --full --cells n100_k10 --training-seeds 1 --out runs/rl2_ppo_ARM

ARM names a change to PPO_BY_N[100] (the n = 10 stage is untouched, except that a GRU size holds in both stages),
or, for the arms in ARMS_N10, a change to the n = 10 stage alone; an arm in ARMS_BOTH combines one-stage arms.
Every arm changes rl2_bandits.py's settings as they were before this study (PREVIOUS), so each arm's command
still trains what its results file holds. The arm ADOPTED is what `python rl2_bandits.py --full` now trains.
With --training-seeds 1 the arm's seed 0 is evaluated on the same tasks as seed 0 of the previous settings' cell
(docs/results/rl2_bandits_previous_full_n100_k10.json): compare their per-seed "RL2 - Greedy (paired)" and
"RL2 - Gittins (paired)".

    python docs/rl2_bandits_ppo_study.py --ablation    # the results files -> docs/results/rl2_bandits_ppo_ablation.json
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import autodiff as ad  # noqa: E402  (first: single-threaded BLAS before NumPy loads)

import rl2_bandits as rl2  # noqa: E402

# rl2_bandits.py's settings before this study's changes were adopted (up to commit 44a302a): what every arm
# changes. "default" is these settings unchanged.
PREVIOUS = {10: dict(iterations=250), 100: dict(critic_sees="history", entropy_coef=0.001),
            500: dict(critic_sees="history", entropy_coef=0.001, lr=1e-3)}
# what each arm changes in the n = 100 stage; the exploration test's settings learnt fastest per pull at n = 50
ARMS = {
    "default": {},
    "lr_1e-2": dict(lr=1e-2),                        # the same number of gradient steps, a larger step
    "minibatches_4_lr_6e-3": dict(minibatches=4, lr=6e-3),   # twice the gradient steps
    # the exploration test's asymmetric critic (reads the trial's clock and the task's true means; training only):
    # a value that knows the means leaves the advantage with the luck of the draws, not with which task it was
    "critic_time+means": dict(critic_sees="time+means"),
    "entropy_1e-2": dict(entropy_coef=0.01),          # the n = 10 stage's entropy bonus kept at n = 100
    "hidden_256": dict(hidden=256),                   # the paper's GRU size (in both stages: see apply_arm)
    "critic_time+means_entropy_1e-2": dict(critic_sees="time+means", entropy_coef=0.01),   # the two that helped
    "iterations_1600": dict(iterations=1600),        # training length: twice the iterations (and a slower lr decay)
    "critic_time+means_entropy_3e-2": dict(critic_sees="time+means", entropy_coef=0.03),   # a larger bonus still
    # GAE λ = 0.97 instead of 0.9: credit reaching about 30 pulls back instead of 10, where an exploratory pull's
    # payoff comes; affordable once the critic reads the means (its errors were what made small λ necessary)
    "critic_time+means_entropy_1e-2_lam_0.97": dict(critic_sees="time+means", entropy_coef=0.01, lam=0.97),
    # advantage normalisation: without the per-pull-index centring (one mean and one std over the whole batch).
    # The centring was there for a critic that must count the pulls left; this critic reads the clock itself
    "critic_time+means_entropy_1e-2_no_centring": dict(critic_sees="time+means", entropy_coef=0.01,
                                                       center_per_pull=False),
    # training length again, now on top of the two changes: RL² still settles on a worse arm than Gittins does
    # (its regret per pull nearly flat after pull ~40), its training reward was still rising at iteration 800,
    # and each update moves the policy little (median approximate KL 0.001-0.003)
    "critic_time+means_entropy_1e-2_iterations_1600": dict(critic_sees="time+means", entropy_coef=0.01,
                                                           iterations=1600),
    # an entropy schedule: the bonus decays to 0 with the step size. Early, it keeps the policy exploring across
    # tasks while it learns to use rewards; at the end nothing pulls the settled policy toward chance (the
    # sampled policy is the one evaluated, and its most probable arm scored 0.03-0.38 more)
    "critic_time+means_entropy_1e-2_entropy_decay": dict(critic_sees="time+means", entropy_coef=0.01,
                                                         entropy_decay=True),
    # twice the trials per iteration, the same gradient steps on each (minibatches of 128 trials instead of 64):
    # a less noisy gradient. The paper's iterations held 250,000 pulls, 2,500 trials at n = 100; ours hold 128
    "critic_time+means_entropy_1e-2_trials_256": dict(critic_sees="time+means", entropy_coef=0.01, trials=256),
    # training length once more: four times the iterations (1,600 gained 0.79 at k = 10, and still rose at the end)
    "critic_time+means_entropy_1e-2_iterations_3200": dict(critic_sees="time+means", entropy_coef=0.01,
                                                           iterations=3200),
}
# changes that must hold in the n = 10 stage too: the curriculum copies weights of the same shape only
EVERY_STAGE = ("hidden",)
# what each arm changes in the n = 10 stage instead: on an n = 10 cell the agent itself, on an n = 100 cell the
# curriculum's starting agent (the n = 100 stage unchanged)
ARMS_N10 = {
    "n10_iterations_1000": dict(iterations=1000),    # training length: four times the n = 10 stage's iterations
}
# what each arm changes in the n = 500 stage (used only inside ARMS_BOTH)
ARMS_N500 = {
    "n500_critic_time+means_entropy_1e-2": dict(critic_sees="time+means", entropy_coef=0.01),
    # the asymmetric critic alone, at three times the step: with the two changes continued, the n = 500 stage's
    # updates stayed far inside PPO's clip (median approximate KL 0.0006 per iteration, 0.8% of ratios clipped,
    # at k = 10) and the larger bonus raised the entropy (0.045 -> 0.091 nats per pull, first and last 50
    # iterations, at k = 10) while the training reward fell
    "n500_critic_time+means_lr_3e-3": dict(critic_sees="time+means", lr=3e-3),
    # the last arm's two changes one at a time: the asymmetric critic alone (the bonus back to 1e-3, the step
    # kept), and the step tripled with the bonus 1e-2 kept
    "n500_critic_time+means": dict(critic_sees="time+means"),
    "n500_critic_time+means_entropy_1e-2_lr_3e-3": dict(critic_sees="time+means", entropy_coef=0.01, lr=3e-3),
}
# arms that make one change in each of several stages: their parts, from ARMS_N10, ARMS and ARMS_N500; each part
# also reaches every later stage through the curriculum's start
ARMS_BOTH = {
    # the two changes that helped most in their own stage, together: a better-trained n = 10 start, then the
    # asymmetric critic with the larger entropy bonus at n = 100
    "n10_iterations_1000+critic_time+means_entropy_1e-2": ("n10_iterations_1000", "critic_time+means_entropy_1e-2"),
    # the same with three times the entropy bonus: does more of what helped help more?
    "n10_iterations_1000+critic_time+means_entropy_3e-2": ("n10_iterations_1000", "critic_time+means_entropy_3e-2"),
    # the first again, under another name: a re-run on another CPU, the paired baseline of the runs made there
    "n10_iterations_1000+critic_time+means_entropy_1e-2_rerun": ("n10_iterations_1000", "critic_time+means_entropy_1e-2"),
    # the same on an AMD EPYC with AVX-512, where the same seed trains another agent: the paired baseline there
    "n10_iterations_1000+critic_time+means_entropy_1e-2_rerun_avx512": ("n10_iterations_1000",
                                                                        "critic_time+means_entropy_1e-2"),
    # the first with GAE λ = 0.97 at n = 100
    "n10_iterations_1000+critic_time+means_entropy_1e-2_lam_0.97": ("n10_iterations_1000",
                                                                    "critic_time+means_entropy_1e-2_lam_0.97"),
    # the first without centring the advantages per pull index at n = 100
    "n10_iterations_1000+critic_time+means_entropy_1e-2_no_centring": ("n10_iterations_1000",
                                                                       "critic_time+means_entropy_1e-2_no_centring"),
    # the first with twice the n = 100 stage's iterations
    "n10_iterations_1000+critic_time+means_entropy_1e-2_iterations_1600": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2_iterations_1600"),
    # the first with the n = 100 stage's bonus decaying to 0, and with twice its trials per iteration
    "n10_iterations_1000+critic_time+means_entropy_1e-2_entropy_decay": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2_entropy_decay"),
    "n10_iterations_1000+critic_time+means_entropy_1e-2_trials_256": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2_trials_256"),
    # the 1,600 iterations again on an AMD EPYC with AVX-512 (seed 0), beside the runs with 800 and 3,200 there
    "n10_iterations_1000+critic_time+means_entropy_1e-2_iterations_1600_avx512": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2_iterations_1600"),
    "n10_iterations_1000+critic_time+means_entropy_1e-2_iterations_3200": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2_iterations_3200"),
    # the same as the first, and the n = 100 stage's two changes continued in the n = 500 stage
    "n10_iterations_1000+critic_time+means_entropy_1e-2_n100_n500": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2", "n500_critic_time+means_entropy_1e-2"),
    # the same n = 10 and n = 100 stages (the same agent at the start of n = 500), then the step-size change there
    "n10_iterations_1000+critic_time+means_entropy_1e-2+n500_critic_time+means_lr_3e-3": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2", "n500_critic_time+means_lr_3e-3"),
    # the same again, with the n = 500 stage's two changes one at a time
    "n10_iterations_1000+critic_time+means_entropy_1e-2+n500_critic_time+means": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2", "n500_critic_time+means"),
    "n10_iterations_1000+critic_time+means_entropy_1e-2+n500_critic_time+means_entropy_1e-2_lr_3e-3": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2", "n500_critic_time+means_entropy_1e-2_lr_3e-3"),
    # the n = 100 and n = 500 arm again, under another name: its first n = 500, k = 5 seed (an AMD EPYC), kept as
    # its own row because the three-seed run that replaces it was trained on another CPU
    "n10_iterations_1000+critic_time+means_entropy_1e-2_n100_n500_first_seed": (
        "n10_iterations_1000", "critic_time+means_entropy_1e-2", "n500_critic_time+means_entropy_1e-2"),
}
# every one-stage arm: (the n of the stage it changes, its changes)
ONE_STAGE_ARMS = {**{arm: (10, changes) for arm, changes in ARMS_N10.items()},
                  **{arm: (100, changes) for arm, changes in ARMS.items()},
                  **{arm: (500, changes) for arm, changes in ARMS_N500.items()}}
EVERY_ARM = {**ARMS, **ARMS_N10,
             **{arm: {f"n = {ONE_STAGE_ARMS[part][0]}": ONE_STAGE_ARMS[part][1] for part in parts}
                for arm, parts in ARMS_BOTH.items()}}


BOTH = "n10_iterations_1000+critic_time+means_entropy_1e-2"
ALL_THREE = "n10_iterations_1000+critic_time+means_entropy_1e-2_n100_n500"
N500_LR = "n10_iterations_1000+critic_time+means_entropy_1e-2+n500_critic_time+means_lr_3e-3"
N500_BONUS_OFF = BOTH + "+n500_critic_time+means"                      # of N500_LR's changes, the bonus alone
N500_STEP_UP = BOTH + "+n500_critic_time+means_entropy_1e-2_lr_3e-3"   # of N500_LR's changes, the step alone
ADOPTED = N500_LR   # rl2_bandits.py --full trains this arm's settings (tests/test_rl2_ppo_study.py checks it)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# the ablation table's rows: (arm, cell, results file in docs/results/); "default" is the previous settings' cell
ABLATION = (("default", "n100_k10", "rl2_bandits_previous_full_n100_k10.json"),
            ("lr_1e-2", "n100_k10", "rl2_bandits_ppo_study_lr_1e-2_3seeds.json"),
            ("minibatches_4_lr_6e-3", "n100_k10", "rl2_bandits_ppo_study_minibatches_4_lr_6e-3.json"),
            ("critic_time+means", "n100_k10", "rl2_bandits_ppo_study_critic_time+means_3seeds.json"),
            ("entropy_1e-2", "n100_k10", "rl2_bandits_ppo_study_entropy_1e-2_3seeds.json"),
            ("hidden_256", "n100_k10", "rl2_bandits_ppo_study_hidden_256.json"),
            ("critic_time+means_entropy_1e-2", "n100_k10", "rl2_bandits_ppo_study_critic_time+means_entropy_1e-2_3seeds.json"),
            ("iterations_1600", "n100_k10", "rl2_bandits_ppo_study_iterations_1600_3seeds.json"),
            ("default", "n100_k5", "rl2_bandits_previous_full_n100_k5.json"),
            ("critic_time+means", "n100_k5", "rl2_bandits_ppo_study_critic_time+means_n100_k5_3seeds.json"),
            ("default", "n100_k50", "rl2_bandits_previous_full_n100_k50.json"),
            ("critic_time+means", "n100_k50", "rl2_bandits_ppo_study_critic_time+means_n100_k50_3seeds.json"),
            ("default", "n10_k5", "rl2_bandits_previous_full.json"),
            ("n10_iterations_1000", "n10_k5", "rl2_bandits_ppo_study_n10_iterations_1000_k5_3seeds.json"),
            ("default", "n10_k10", "rl2_bandits_previous_full.json"),
            ("n10_iterations_1000", "n10_k10", "rl2_bandits_ppo_study_n10_iterations_1000_k10_3seeds.json"),
            ("default", "n10_k50", "rl2_bandits_previous_full.json"),
            ("n10_iterations_1000", "n10_k50", "rl2_bandits_ppo_study_n10_iterations_1000_k50_3seeds.json"),
            ("n10_iterations_1000", "n100_k10", "rl2_bandits_ppo_study_n10_iterations_1000_n100_k10_2seeds.json"),
            *((BOTH, f"n100_k{k}", f"rl2_bandits_ppo_study_n10_1000+critic_entropy_n100_k{k}_3seeds.json")
              for k in (5, 10, 50)),
            ("n10_iterations_1000+critic_time+means_entropy_3e-2", "n100_k10",
             "rl2_bandits_ppo_study_n10_1000+critic_entropy_3e-2_n100_k10_3seeds.json"),
            (BOTH + "_rerun", "n100_k10", "rl2_bandits_ppo_study_n10_1000+critic_entropy_n100_k10_3seeds_rerun.json"),
            (BOTH + "_lam_0.97", "n100_k10", "rl2_bandits_ppo_study_n10_1000+critic_entropy_lam_0.97_n100_k10_3seeds.json"),
            (BOTH + "_no_centring", "n100_k10",
             "rl2_bandits_ppo_study_n10_1000+critic_entropy_no_centring_n100_k10_3seeds.json"),
            *((BOTH + "_iterations_1600", f"n100_k{k}",
               f"rl2_bandits_ppo_study_n10_1000+critic_entropy_iterations_1600_n100_k{k}_{seeds}.json")
              for k, seeds in ((5, "3seeds"), (10, "3seeds"), (50, "2seeds"))),
            # on an AMD EPYC with AVX-512: BOTH again, the paired baseline of the runs made there
            *((BOTH + "_rerun_avx512", f"n100_k{k}",
               f"rl2_bandits_ppo_study_n10_1000+critic_entropy_n100_k{k}_{seeds}_rerun_avx512.json")
              for k, seeds in ((5, "3seeds"), (10, "3seeds"), (50, "2seeds"))),
            # there too: the bonus decaying to 0, and twice the trials per iteration, at n = 100, k = 10
            *((BOTH + f"_{name}", "n100_k10",
               f"rl2_bandits_ppo_study_n10_1000+critic_entropy_{name}_n100_k10_3seeds.json")
              for name in ("entropy_decay", "trials_256")),
            # training length there: 3,200 n = 100 iterations (four times the re-run's 800), on seed 0 at k = 5 and
            # k = 50, on seeds 0 and 1 at k = 10 (its seed 0 is the one-seed run's agent again, to the last digit)
            *((BOTH + "_iterations_3200", f"n100_k{k}",
               f"rl2_bandits_ppo_study_n10_1000+critic_entropy_iterations_3200_n100_k{k}{seeds}.json")
              for k, seeds in ((5, ""), (10, "_2seeds"), (50, ""))),
            (BOTH + "_iterations_1600_avx512", "n100_k10",
             "rl2_bandits_ppo_study_n10_1000+critic_entropy_iterations_1600_n100_k10_avx512.json"),
            # the n = 500 stage's arms: (arm, what its file names, the cells run)
            *((arm, f"n500_k{k}", f"rl2_bandits_ppo_study_n10_1000+critic_entropy_n500_{name}_n500_k{k}.json")
              for arm, name, ks in ((N500_LR, "lr_3e-3", (5, 10, 50)), (N500_BONUS_OFF, "critic", (10, 50)),
                                    (N500_STEP_UP, "entropy_1e-2_lr_3e-3", (10, 50)))
              for k in ks),
            # at n = 500, k = 5 the three seeds' run (an Intel Xeon) replaces the first one-seed run (an AMD EPYC),
            # which stays as the row N500_LR's seed there is compared with
            (ALL_THREE + "_first_seed", "n500_k5", "rl2_bandits_ppo_study_n10_1000+critic_entropy_n100_n500_k5.json"),
            *((arm, f"n500_k{k}", name) for k in (5, 10, 50)
              for arm, name in (("default", f"rl2_bandits_previous_full_n500_k{k}.json"),
                                (ALL_THREE, f"rl2_bandits_ppo_study_n10_1000+critic_entropy_n100_n500_k{k}"
                                            f"{'_3seeds' if k == 5 else ''}.json"))))

# arms trained on the same CPU, where the same training seed draws the same random numbers: each combined arm is
# compared with its parts by training seed (paired), in each cell that has both
PAIRED_BY_SEED = (("critic_time+means_entropy_1e-2", "critic_time+means"),
                  ("critic_time+means_entropy_1e-2", "entropy_1e-2"),
                  # the same seeds' random numbers, but a different (longer-trained) n = 10 start
                  (BOTH, "critic_time+means_entropy_1e-2"), (BOTH, "critic_time+means"),
                  ("n10_iterations_1000+critic_time+means_entropy_3e-2", BOTH),
                  # on the Intel Xeon: the re-run of BOTH is the baseline of the arms run there
                  ("n10_iterations_1000+critic_time+means_entropy_3e-2", BOTH + "_rerun"),
                  (BOTH + "_lam_0.97", BOTH + "_rerun"),
                  # on an AMD EPYC again (the CPU of BOTH's own rows)
                  (BOTH + "_no_centring", BOTH),
                  (BOTH + "_iterations_1600", BOTH),
                  (BOTH + "_iterations_1600", BOTH + "_rerun_avx512"),   # on an AMD EPYC with AVX-512
                  (BOTH + "_entropy_decay", BOTH + "_rerun_avx512"), (BOTH + "_trials_256", BOTH + "_rerun_avx512"),
                  (BOTH + "_iterations_3200", BOTH + "_rerun_avx512"),
                  # the same n = 100 agent at the start of n = 500 (one seed): only the n = 500 stage differs
                  (N500_LR, ALL_THREE), (N500_LR, ALL_THREE + "_first_seed"),
                  # N500_LR's two changes, each alone, against both ends
                  *((arm, base) for arm in (N500_BONUS_OFF, N500_STEP_UP) for base in (ALL_THREE, N500_LR)))


def stage_changed(arm):
    """Which curriculum stage an arm changes (the n = 10 stage is the start of every n = 100 cell)."""
    if arm == "default":
        return "none"
    return " and ".join(f"n = {ONE_STAGE_ARMS[part][0]}" for part in ARMS_BOTH.get(arm, (arm,)))


def arm_settings(arm):
    """{n: the PPO settings of the stage at n} an arm trains with: PREVIOUS, then each of the arm's parts."""
    stages = {n: dict(config, **PREVIOUS.get(n, {})) for n, config in rl2.PPO_BY_N.items()}
    for part in ARMS_BOTH.get(arm, (arm,)):
        n, changes = ONE_STAGE_ARMS[part]
        stages[n].update(changes)
        shared = {key: value for key, value in changes.items() if key in EVERY_STAGE}
        if n == 100 and shared:                       # a GRU size must match in the stage it starts from
            stages[10].update(shared)
    return stages


def apply_arm(arm):
    """Change rl2_bandits' settings in place for one arm (this process only). The n = 10 stage's iterations are
    a setting of the script (--n10-iterations), so the arm's value becomes that setting's default in both modes;
    the flag, if given, still wins."""
    stages = arm_settings(arm)
    rl2.SETTINGS["n10_iterations"] = rl2.FULL["n10_iterations"] = stages[10]["iterations"]
    rl2.PPO_BY_N.update(stages)


def ablation():
    """One row per arm and cell whose results file is in docs/results/: RL2 - Gittins and RL2 - Greedy (paired on
    tasks, then mean +- SE across training seeds; over tasks for one seed) and the change from the previous
    settings' cell.
    The arms were trained on more than one CPU, where the same seed trains to a different agent, so the change is
    the difference of the seed means with SE sqrt(se_a^2 + se_b^2) (unpaired), not one paired by training seed."""
    rows, base = {}, {}
    for arm, cell_name, name in ABLATION:
        path = os.path.join(RESULTS, name)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            record = json.load(f)
        cell = record["metrics"][cell_name]
        table = cell["table"]
        gittins = table["RL2 - Gittins (paired)"]
        row = {"cell": cell_name, "results_file": f"docs/results/{name}", "changes": EVERY_ARM[arm],
               "stage changed": stage_changed(arm),
               "seeds": len(cell["training"]), "commit": record["provenance"]["commit"],
               "cpu": record["provenance"].get("cpu", "not recorded"), "RL2": table["RL2"]["per_seed"],
               "RL2 - Gittins (paired), per seed": gittins["per_seed"],
               "RL2 - Greedy (paired), per seed": table["RL2 - Greedy (paired)"]["per_seed"],
               "RL2 - Gittins": {"mean": gittins["mean"], "se": gittins["se"], "se_over": gittins["se_over"]},
               "RL2 - Gittins, as a fraction of Gittins": gittins["mean"] / table["Gittins"]["mean"],
               "train_minutes_per_seed": [round(t["total_time_s_with_curriculum"] / 60, 1) for t in cell["training"]]}
        if "RL2 - optimum" in table:                  # n = 10: the exact Bayes optimum is known
            row["RL2 - optimum, per seed"] = table["RL2 - optimum"]["per_seed"]
        if arm == "default":
            base[cell_name] = row
        elif cell_name in base and row["seeds"] > 1:
            previous = base[cell_name]["RL2 - Gittins"]
            row["change from the previous settings' cell (unpaired)"] = {
                "mean": gittins["mean"] - previous["mean"], "se": (gittins["se"] ** 2 + previous["se"] ** 2) ** 0.5}
        rows[f"{arm}, {cell_name}"] = row
    for arm, part in PAIRED_BY_SEED:
        for cell_name in sorted({row["cell"] for row in rows.values()}):
            a, b = rows.get(f"{arm}, {cell_name}"), rows.get(f"{part}, {cell_name}")
            if a and b and a["cpu"] == b["cpu"] and min(a["seeds"], b["seeds"]) > 1:
                # training seed s of both draws the same random numbers up to where the arms differ, and both
                # are scored on the same tasks; when one arm has more seeds, the pairs are the seeds both have
                both = min(a["seeds"], b["seeds"])
                which = "" if a["seeds"] == b["seeds"] else f", seeds 0-{both - 1}"
                a[f"change from {part} (paired by training seed{which})"] = ad.runs.paired_difference(
                    a["RL2 - Gittins (paired), per seed"][:both], b["RL2 - Gittins (paired), per seed"][:both])
            elif a and b and a["cpu"] == b["cpu"] and a["seeds"] == b["seeds"] == 1:
                # one seed each, the same tasks: the SE over tasks of each, combined as if independent (the
                # per-task returns are not kept, so the pairing over tasks, which would shrink it, is not used)
                ga, gb = a["RL2 - Gittins"], b["RL2 - Gittins"]
                a[f"change from {part} (seed 0 of each, SE over tasks, unpaired)"] = {
                    "mean": ga["mean"] - gb["mean"], "se": (ga["se"] ** 2 + gb["se"] ** 2) ** 0.5}
    out = os.path.join(RESULTS, "rl2_bandits_ppo_ablation.json")
    ad.runs.write_json(out, {"rows": rows, "provenance": ad.runs.provenance(),
                             "command": "python docs/rl2_bandits_ppo_study.py --ablation"})
    for key, row in rows.items():
        g, change = row["RL2 - Gittins"], row.get("change from the previous settings' cell (unpaired)")
        print(f"{key}: {row['seeds']} seed(s), RL2 - Gittins {g['mean']:+.3f} ± {g['se']:.3f} (over {g['se_over']})"
              + (f", change {change['mean']:+.3f} ± {change['se']:.3f}" if change else ""))
        for name, d in row.items():
            if name.startswith("change from ") and name != "change from the previous settings' cell (unpaired)":
                print(f"    {name}: {d['mean']:+.3f} ± {d['se']:.3f}")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ablation"]:
        return ablation()
    if not argv or argv[0] not in EVERY_ARM:
        raise ad.runs.BadInput(f"the first argument names an arm: one of {', '.join(EVERY_ARM)}")
    apply_arm(argv[0])   # the results record this study's command, so the file names its arm
    return rl2.main(argv[1:], command=" ".join(["python", "docs/rl2_bandits_ppo_study.py", *argv]))


if __name__ == "__main__":
    ad.runs.run(main)
