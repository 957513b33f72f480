"""Environment steps per second of pong_pg.py's training loop against the seed's loop.

Both loops train (play, backward, RMSProp) on the same game, in one run:

  seed    one game, one frame at a time, written the way the seed's pg-pong.py
          is (prepro per frame, np.dot(W1, x) per frame, hand-written backward
          per episode, RMSProp every 10 episodes), ported to Gymnasium.
  ours    pong_pg.train_batch: up to 10 games at once, one batched (sparse)
          forward per step, vectorised preprocessing, the engine's backward.

They alternate, one batch of 10 episodes each per round, so that load from
other processes hits both alike. Steps/s = environment steps / wall seconds,
learning included. The issue's bar: ratio >= 2 on 2 cores.

    python benchmarks/pong_throughput.py [--rounds 2] [--env-id ALE/Pong-v5]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pong_pg  # noqa: E402


# ----------------------------------------------------------------------------
# The seed's loop (pg-pong.py), ported to Python 3 / Gymnasium, logic unchanged
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


def seed_loop(env, model, caches, rng, n_episodes):
    """Play n_episodes frame by frame, as the seed does; returns env steps."""
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
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 10 episodes per loop")
    parser.add_argument("--env-id", default="ALE/Pong-v5")
    parser.add_argument("--games", type=int, default=10, help="parallel games in pong_pg's loop")
    parser.add_argument("--workers", type=int, default=2, help="processes running pong_pg's games")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    model = {"W1": rng.standard_normal((H, D)) / np.sqrt(D), "W2": rng.standard_normal(H) / np.sqrt(H)}
    caches = {k: np.zeros_like(v) for k, v in model.items()}
    env = pong_pg.make_game(args.env_id)
    env.reset(seed=args.seed)
    state = pong_pg.new_state(argparse.Namespace(seed=args.seed, env_id=args.env_id, games=args.games,
                                                 workers=args.workers, standardise="batch"))
    totals = {"seed": [0, 0.0], "ours": [0, 0.0]}
    for r in range(args.rounds):
        start = time.perf_counter()
        steps = seed_loop(env, model, caches, rng, batch_size)
        totals["seed"][0] += steps
        totals["seed"][1] += time.perf_counter() - start
        start = time.perf_counter()
        episodes = pong_pg.train_batch(state)
        totals["ours"][0] += sum(len(e["rewards"]) for e in episodes)
        totals["ours"][1] += time.perf_counter() - start
        print(f"round {r + 1}/{args.rounds}: seed {totals['seed'][0] / totals['seed'][1]:.0f} steps/s, "
              f"ours {totals['ours'][0] / totals['ours'][1]:.0f} steps/s", flush=True)
    state["games"].close()
    seed_rate = totals["seed"][0] / totals["seed"][1]
    ours_rate = totals["ours"][0] / totals["ours"][1]
    print(f"\n{args.env_id}, {args.rounds} x 10 episodes each, learning included, load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"  seed loop (1 game, frame by frame)   {seed_rate:7.0f} env steps/s  "
          f"({totals['seed'][0]} steps in {totals['seed'][1]:.1f} s)")
    print(f"  pong_pg ({args.games} games, {args.workers} workers)   {ours_rate:7.0f} env steps/s  "
          f"({totals['ours'][0]} steps in {totals['ours'][1]:.1f} s)")
    print(f"  ratio {ours_rate / seed_rate:.2f}  (bar: >= 2)")
    return ours_rate / seed_rate


if __name__ == "__main__":
    main()
