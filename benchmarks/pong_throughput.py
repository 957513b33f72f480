"""Environment steps per second of pong_pg.py's training loop, against the machine's limit and the original's loop.

Three loops, in one run, alternating round by round so that load from other processes hits all alike:

  ceiling   the environment alone: the same ALE games, stepped with random UP/DOWN actions (drawn ahead) by
            as many processes as pong_pg uses (--workers), no policy, no pipes, no learning. Training cannot
            beat it.
  ours      pong_pg.train_batch, then the batch boundary's game states (what a checkpoint saves): each worker
            process plays its games' whole episodes with play_episodes (vectorised preprocessing, one batched
            sparse forward per step, each game's own sampling stream), the main process computes the
            advantages, each worker the gradients of its episodes and then its slice of their sum, and the
            main process takes one RMSProp step (in place) per 10 episodes. A worker with nothing to do
            resets its games for the next batch.
  original  one game, one frame at a time, written the way the original pg-pong.py is (prepro per frame,
            np.dot(W1, x) per frame, hand-written backward per episode, RMSProp every 10 episodes).

Steps/s = environment steps / wall seconds, learning included. It prints ours as a fraction of the ceiling,
ours against the original, the workers' steps (the slower worker sets a batch's wall time), and where the wall
time of our batches goes, in the main process and in each worker.

On a busy machine the fraction measures mostly how much CPU time we spend per step beside the emulator: the
kernel shares the cores between sessions (autogroup), so neither the ceiling's processes nor ours get both
cores. The parallel part (both workers busy at once) shows only on a quiet machine.

    python benchmarks/pong_throughput.py [--rounds 2] [--workers 2] [--json PATH]

It writes its figures, with the command, commit and versions, to runs/pong_pg_throughput.json (--json PATH);
the README quotes docs/results/pong_pg_throughput.json, a copy of one such file.

(BLAS is single-threaded because autodiff is imported before NumPy; no environment variable is needed.)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import autodiff as ad  # noqa: E402,F401  (first: single-threaded BLAS before NumPy loads)

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import pong_pg  # noqa: E402

# where the figures go unless --json says otherwise: the git-ignored runs/ folder, so a run never replaces
# the committed docs/results/pong_pg_throughput.json that the README quotes (copy it there when it should)
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "pong_pg_throughput.json")


# ----------------------------------------------------------------------------
# The ceiling: the emulators alone, in as many processes as pong_pg uses
# ----------------------------------------------------------------------------
def _random_play(env_id, n_games, seed, seconds, pipe):
    games = [pong_pg.make_game(env_id) for _ in range(n_games)]
    for g, env in enumerate(games):
        env.reset(seed=seed + g)
    rng = np.random.default_rng(seed)
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        actions = rng.choice((pong_pg.UP, pong_pg.DOWN), size=(100, len(games))).tolist()   # drawn ahead: the
        for row in actions:                                                                 # env alone is timed
            for env, action in zip(games, row):
                _, _, terminated, truncated, _ = env.step(action)
                steps += 1
                if terminated or truncated:
                    env.reset()
    pipe.send((steps, time.perf_counter() - start, time.process_time() - cpu))


def ceiling(env_id, games, workers, seconds, seed):
    """Env steps, wall seconds and CPU seconds (all processes) of `workers` processes, each stepping its
    share of `games` with random actions."""
    import multiprocessing
    context = multiprocessing.get_context("fork")
    pipes, processes = [], []
    for w in range(workers):
        mine, theirs = context.Pipe()
        share = len(range(w, games, workers))
        process = context.Process(target=_random_play, args=(env_id, share, seed + 100 * w, seconds, theirs))
        process.start()
        pipes.append(mine)
        processes.append(process)
    results = [p.recv() for p in pipes]
    for process in processes:
        process.join()
    return sum(r[0] for r in results), max(r[1] for r in results), sum(r[2] for r in results)


def cpu_seconds(pids):
    """CPU seconds (user + system) used so far by this process and the processes `pids` (from /proc)."""
    total = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ----------------------------------------------------------------------------
# The original's loop (pg-pong.py), ported to Python 3 / Gymnasium, logic unchanged
# ----------------------------------------------------------------------------
H, D = 200, 80 * 80
batch_size, learning_rate, gamma, decay_rate = 10, 1e-4, 0.99, 0.99


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def prepro(I):
    """prepro 210x160x3 uint8 frame into 6400 (80x80) 1D float vector"""
    I = I[35:195]
    I = I[::2, ::2, 0]
    I[I == 144] = 0
    I[I == 109] = 0
    I[I != 0] = 1
    return I.astype(float).ravel()


def discount_rewards(r):
    discounted_r = np.zeros_like(r)
    running_add = 0
    for t in reversed(range(0, r.size)):
        if r[t] != 0:
            running_add = 0
        running_add = running_add * gamma + r[t]
        discounted_r[t] = running_add
    return discounted_r


def policy_forward(model, x):
    h = np.dot(model["W1"], x)
    h[h < 0] = 0
    logp = np.dot(model["W2"], h)
    return sigmoid(logp), h


def policy_backward(model, eph, epdlogp, epx):
    dW2 = np.dot(eph.T, epdlogp).ravel()
    dh = np.outer(epdlogp, model["W2"])
    dh[eph <= 0] = 0
    dW1 = np.dot(dh.T, epx)
    return {"W1": dW1, "W2": dW2}


def original_loop(env, model, caches, rng, n_episodes):
    """Play n_episodes frame by frame, as the original does; returns env steps."""
    grad_buffer = {k: np.zeros_like(v) for k, v in model.items()}
    observation, _ = env.reset()
    prev_x, xs, hs, dlogps, drs = None, [], [], [], []
    episodes = steps = 0
    while episodes < n_episodes:
        cur_x = prepro(observation)
        x = cur_x - prev_x if prev_x is not None else np.zeros(D)
        prev_x = cur_x
        aprob, h = policy_forward(model, x)
        action = 2 if rng.uniform() < aprob else 3
        xs.append(x)
        hs.append(h)
        y = 1 if action == 2 else 0
        dlogps.append(y - aprob)
        observation, reward, terminated, truncated, _ = env.step(action)
        drs.append(reward)
        steps += 1
        if terminated or truncated:
            episodes += 1
            epx, eph, epdlogp, epr = np.vstack(xs), np.vstack(hs), np.vstack(dlogps), np.vstack(drs)
            xs, hs, dlogps, drs = [], [], [], []
            discounted_epr = discount_rewards(epr)
            discounted_epr -= np.mean(discounted_epr)
            discounted_epr /= np.std(discounted_epr)
            epdlogp *= discounted_epr
            grad = policy_backward(model, eph, epdlogp, epx)
            for k in model:
                grad_buffer[k] += grad[k]
            if episodes % batch_size == 0:
                for k, v in model.items():
                    g = grad_buffer[k]
                    caches[k] = decay_rate * caches[k] + (1 - decay_rate) * g ** 2
                    model[k] += learning_rate * g / (np.sqrt(caches[k]) + 1e-5)
                    grad_buffer[k] = np.zeros_like(v)
            observation, _ = env.reset()
            prev_x = None
    return steps


# ----------------------------------------------------------------------------
# Where our loop's wall time goes, in the main process and in each worker
# ----------------------------------------------------------------------------
MAIN_LABELS = ["waiting for the workers' episodes (GamePool.play)",
               "advantages (returns of all episodes, standardised)",
               "waiting for the workers' gradients and their sum",
               "RMSProp step (in place)",
               "game states at the batch boundary (for checkpoints)"]
WORKER_LABELS = ["emulator steps (Games.step, resets)", "preprocess (the worker's games, vectorised)",
                 "forward (sparse, batched)", "play_episodes in all", "gradients of its episodes (episode_gradient)",
                 "its slice of the gradients' sum (add_rows)",
                 "resets for the next batch, in idle time (reset_ahead)"]


class Profile:
    """Wall seconds per label and per process (0: the main process, 1..k: the workers), summed in shared
    memory so that the forked workers' timers reach the main process."""

    def __init__(self, workers):
        import mmap
        labels = MAIN_LABELS + WORKER_LABELS
        self.index = {label: i for i, label in enumerate(labels)}
        memory = np.frombuffer(mmap.mmap(-1, 8 * ((workers + 1) * len(labels) + workers)), np.float64)
        self.seconds = memory[:(workers + 1) * len(labels)].reshape(workers + 1, len(labels))
        self.pids = memory[(workers + 1) * len(labels):]      # the workers' process ids, once they run
        self.main = os.getpid()

    def slot(self, known={}):
        pid = os.getpid()
        if pid not in known:
            known[pid] = 0 if pid == self.main else 1 + int(np.flatnonzero(self.pids == pid)[0])
        return known[pid]

    def get(self, process, label):
        return self.seconds[process, self.index[label]]


def profiled(profile):
    """Wrap pong_pg's pieces with wall-clock timers; call before the pool forks (the workers inherit them)."""
    def wrap(owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                profile.seconds[profile.slot(), profile.index[label]] += time.perf_counter() - start
        setattr(owner, name, timed)

    wrap(pong_pg.GamePool, "play", MAIN_LABELS[0])
    wrap(pong_pg, "advantages", MAIN_LABELS[1])
    wrap(pong_pg.GamePool, "gradient", MAIN_LABELS[2])
    wrap(pong_pg.InPlaceRMSProp, "step", MAIN_LABELS[3])
    wrap(pong_pg, "mark_boundary", MAIN_LABELS[4])
    wrap(pong_pg.Games, "step", WORKER_LABELS[0])
    wrap(pong_pg.Games, "reset", WORKER_LABELS[0])
    wrap(pong_pg, "preprocess", WORKER_LABELS[1])
    wrap(pong_pg, "probability_up", WORKER_LABELS[2])
    wrap(pong_pg, "play_episodes", WORKER_LABELS[3])
    wrap(pong_pg, "episode_gradient", WORKER_LABELS[4])
    wrap(pong_pg, "add_rows", WORKER_LABELS[5])
    wrap(pong_pg.Games, "reset_ahead", WORKER_LABELS[6])


def print_profile(profile, wall, workers):
    print(f"\nwhere the wall time of our batches goes ({wall:.1f} s in all):")
    print("  main process:")
    for label in MAIN_LABELS:
        print(f"    {label:<58} {profile.get(0, label):6.1f} s  {100 * profile.get(0, label) / wall:4.0f}%")
    rest = wall - sum(profile.get(0, label) for label in MAIN_LABELS)
    print(f"    {'the rest (checks in the update, bookkeeping)':<58} {rest:6.1f} s  {100 * rest / wall:4.0f}%")
    fractions = {"main": {label: profile.get(0, label) / wall for label in MAIN_LABELS}}
    for w in range(1, workers + 1):
        playing = profile.get(w, WORKER_LABELS[3])
        parts = {label: profile.get(w, label) for label in WORKER_LABELS[:3]}
        parts["sampling and bookkeeping in play_episodes (Python)"] = playing - sum(parts.values())
        for label in WORKER_LABELS[4:]:
            parts[label] = profile.get(w, label)
        parts["idle (waiting for the other worker and the main process)"] = wall - playing - sum(
            profile.get(w, label) for label in WORKER_LABELS[4:])
        print(f"  worker {w}:")
        for label, seconds in parts.items():
            print(f"    {label:<58} {seconds:6.1f} s  {100 * seconds / wall:4.0f}%")
        fractions[f"worker {w}"] = {label: seconds / wall for label, seconds in parts.items()}
    return fractions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each plays 10 episodes per loop")
    parser.add_argument("--env-id", default="ALE/Pong-v5")
    parser.add_argument("--games", type=int, default=10, help="parallel games in pong_pg's loop")
    parser.add_argument("--workers", type=int, default=2, help="processes running the games (ours and the ceiling)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0, help="seconds of random play per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", default=RESULTS,
                        help="where to write the figures, with the command and versions (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)   # before the work, not after

    rng = np.random.default_rng(args.seed)
    model = {"W1": rng.standard_normal((H, D)) / np.sqrt(D), "W2": rng.standard_normal(H) / np.sqrt(H)}
    caches = {k: np.zeros_like(v) for k, v in model.items()}
    env = pong_pg.make_game(args.env_id)
    env.reset(seed=args.seed)
    profile = Profile(args.workers)
    profiled(profile)                               # before the pool forks: its workers inherit the timers
    state = pong_pg.new_state(argparse.Namespace(seed=args.seed, env_id=args.env_id, games=args.games,
                                                 workers=args.workers, standardise="batch"))
    profile.pids[:] = [p.pid for p in state["games"].processes]
    profile.seconds[:] = 0.0
    totals = {name: [0, 0.0] for name in ("ceiling", "ours", "original")}
    cpu = {"ceiling": 0.0, "ours": 0.0}
    pids = [p.pid for p in state["games"].processes]
    worker_steps = np.zeros(args.workers)
    for r in range(args.rounds):
        steps, seconds, cpu_used = ceiling(args.env_id, args.games, args.workers, args.ceiling_seconds, args.seed + r)
        totals["ceiling"][0] += steps
        totals["ceiling"][1] += seconds
        cpu["ceiling"] += cpu_used
        start, cpu_start = time.perf_counter(), cpu_seconds(pids)
        episodes = pong_pg.train_batch(state)
        pong_pg.mark_boundary(state)                # as training does after every update
        totals["ours"][1] += time.perf_counter() - start
        cpu["ours"] += cpu_seconds(pids) - cpu_start
        totals["ours"][0] += sum(len(e["rewards"]) for e in episodes)
        for e in episodes:                          # episode e is game e mod games, in worker game mod workers
            worker_steps[e["number"] % args.games % args.workers] += len(e["rewards"])
        start = time.perf_counter()
        totals["original"][0] += original_loop(env, model, caches, rng, batch_size)
        totals["original"][1] += time.perf_counter() - start
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {s / t:.0f} steps/s" for k, (s, t) in totals.items()),
              flush=True)
    state["games"].close()
    rate = {k: s / t for k, (s, t) in totals.items()}
    load = os.getloadavg()[0]
    print(f"\n{args.env_id}, {args.rounds} rounds, load average {load:.2f} on {os.cpu_count()} cores "
          f"(other processes' load lowers every figure; the ratios are measured in the same rounds)")
    print(f"  ceiling: the env alone, {args.workers} processes, random actions  {rate['ceiling']:7.0f} env steps/s")
    print(f"  pong_pg: {args.games} games, {args.workers} workers, learning included   {rate['ours']:7.0f} env steps/s  "
          f"= {100 * rate['ours'] / rate['ceiling']:.0f}% of the ceiling")
    print(f"  the original's loop (1 game, frame by frame)     {rate['original']:7.0f} env steps/s  "
          f"-> ours is {rate['ours'] / rate['original']:.2f}x the original")
    per_step = {k: 1e3 * cpu[k] / totals[k][0] for k in cpu}
    print(f"  CPU time per 1,000 env steps (all processes): ceiling {per_step['ceiling']:.3f} s, ours "
          f"{per_step['ours']:.3f} s: the emulator is {100 * per_step['ceiling'] / per_step['ours']:.0f}% of our CPU "
          f"time (hardly moved by other processes' load)")
    balance = worker_steps.mean() / worker_steps.max()
    print(f"  workers' steps: {', '.join(f'{s:,.0f}' for s in worker_steps)}: the slower worker sets a batch's wall "
          f"time, so the steps balance (mean / max) of {100 * balance:.0f}% caps our share of the ceiling")
    fractions = print_profile(profile, totals["ours"][1], args.workers)
    if args.json:
        metrics = {"env_steps_per_s": rate, "fraction_of_ceiling": rate["ours"] / rate["ceiling"],
                   "ours_over_original": rate["ours"] / rate["original"], "worker_steps": worker_steps.tolist(),
                   "worker_steps_balance": balance, "steps": {k: v[0] for k, v in totals.items()},
                   "cpu_seconds": cpu, "cpu_seconds_per_1000_steps": per_step,
                   "cpu_fraction_of_ceiling": per_step["ceiling"] / per_step["ours"],
                   "seconds": {k: v[1] for k, v in totals.items()}, "load_average_1min": load,
                   "profile_fraction": fractions}
        ad.runs.write_json(args.json, {"metrics": metrics, "args": vars(args), "provenance": ad.runs.provenance()})
        print(f"\nwrote {args.json}")
    return rate


if __name__ == "__main__":
    main()
