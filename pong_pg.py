"""Pong from pixels with policy gradients, on the real Atari game, ten games at a time.

The idea (Karpathy, "Pong from Pixels", 2016): a two-layer network looks at the
difference of two consecutive 80x80 frames and outputs P(UP). We *sample* UP or
DOWN, play whole episodes (first to 21) against the built-in AI, and afterwards
treat every sampled action as if it had been the correct label, scaled by how
well it turned out. Actions before won points are encouraged, actions before
lost points discouraged: policy gradients are supervised learning on your own
samples, weighted by the advantage.

    maximise   sum_t A_t log pi(a_t | x_t)
    pi(UP | x) = sigmoid(W2 . relu(W1 x))        200 hidden units, no biases, 1,280,200 weights
    A_t        = discounted return (gamma 0.99, reset at every point scored),
                 standardised over the batch of 10 episodes
    update     = RMSProp (decay 0.99, lr 1e-4, eps 1e-5) on the gradient summed over 10 episodes

That is the seed's algorithm unchanged (its pg-pong.py standardises per episode;
`--standardise episode` does that). What is new: Gymnasium + ALE instead of
gym 0.x, the forward and backward through the project's autodiff engine (one
fused op, `policy_logit`, checked against the seed's hand-written backward in
tests/test_pong_pg.py), and speed: up to 10 games play at once with one batched
forward per step, preprocessing is one vectorised expression for all games,
the emulators run in worker processes (one per core), and the forward only
reads the rows of W1 of pixels that changed (a difference frame is ~0.5%
non-zero: exact, and ~40x less work than W1 @ x for ten games).

Episodes never straddle an update. A batch is exactly 10 episodes, each played
from its first frame to its last by the policy that is then updated with it.
Games start episodes while fewer than 10 have been started in this batch; a game
whose episode ends after that waits (it is not stepped) until the update. So the
gradient is exactly on-policy, every parallel game contributes complete
episodes, and at every update boundary all games sit at the end of an episode,
which is what makes checkpoints exact: the checkpoint stores the weights, the
RMSProp cache, the counters, the learning curve, the NumPy Generator state and
each game's emulator state with its RNG, so `--resume` continues bit for bit as
if never stopped (tests/test_pong_pg.py checks this).

Measured (ALE/Pong-v5, 2 cores):
    python pong_pg.py          60 episodes / 6 updates in 16 s (4,500 env steps/s) on a
                               quiet machine; running reward -20.70 (it starts at -21)
    throughput                 benchmarks/pong_throughput.py, learning included, quiet
                               machine, OPENBLAS_NUM_THREADS=1: 4,870 vs 1,359 env steps/s
                               for the seed's loop (x3.6); BLAS as installed (2 threads):
                               4,949 vs 1,869 (x2.6)
    the long run               OPENBLAS_NUM_THREADS=1 python pong_pg.py --full --hours 2
                               --checkpoint-every 10, then --resume --hours 4.4:
                               running reward -21 -> -15 after 1.69 h
                               (episode 8,376; the bar: within 2 h), -10 at 2.11 h,
                               0 at 2.84 h (episode 13,432); stopped at 3.56 h, episode
                               16,530, 40 M env steps: running reward +2.6 (best +3.9),
                               mean score of the last 100 episodes +3.0. The first 1.78 h
                               shared the cores with other jobs (2,240 env steps/s), the
                               rest did not (3,989). The seed took ~8,000 episodes and
                               three nights to reach 0; this took 13,432 episodes.
    the trained weights        docs/pong_pg_weights_float16.npz (2.6 MB):
                               python pong_pg.py --play --play-games 50 won 40 of 50
                               games, mean score +5.2 (standard error 0.8)

Run:
    python pong_pg.py                                  # a short demonstration (~20 s)
    python pong_pg.py --full                           # the long run (hours); Ctrl-C saves
    python pong_pg.py --full --resume                  # continue runs/pong_pg/checkpoint.npz
    python pong_pg.py --play                           # the long run's agent plays the built-in AI
    python pong_pg.py --play runs/pong_pg/checkpoint.npz   # or your own checkpoint
"""

import collections
import json
import math
import os
import signal
import time

import numpy as np

import autodiff as ad

# ----------------------------------------------------------------------------
# Constants: the seed's settings
# ----------------------------------------------------------------------------
HIDDEN = 200                 # hidden ReLU units
PIXELS = 80 * 80             # input: an 80x80 difference frame
GAMMA = 0.99                 # discount of future rewards
BATCH_EPISODES = 10          # episodes per parameter update
TRAINED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs", "pong_pg_weights_float16.npz")
LEARNING_RATE = 1e-4
RMSPROP_DECAY = 0.99
RMSPROP_EPS = 1e-5
RUNNING_DECAY = 0.99         # running reward = 0.99 running + 0.01 episode score
UP, DOWN = 2, 3              # Pong's minimal action set: 2 = RIGHT (paddle up), 3 = LEFT (down)
BACKGROUND = (144, 109)      # red-channel values of the two background colours
CHECKPOINT_FORMAT = "pong_pg checkpoint v1"
GRADIENT_CHUNK = 1024        # rows of frames per forward/backward (bounds memory)


# ----------------------------------------------------------------------------
# Environment: several real ALE games, preprocessing for all of them at once
# ----------------------------------------------------------------------------
def make_game(env_id, **options):
    import ale_py
    import gymnasium
    gymnasium.register_envs(ale_py)
    return gymnasium.make(env_id, **options)


def preprocess(frames):
    """(B, 210, 160, 3) uint8 RGB -> (B, 6400) int8 in {0, 1}, as the seed's prepro:
    crop the score and borders (rows 35..194), keep every second row and column
    of the red channel, erase the two background colours, everything else
    (paddles, ball) becomes 1. One expression for all games, no Python loop."""
    red = frames[:, 35:195:2, ::2, 0]
    on = (red != 0) & (red != BACKGROUND[0]) & (red != BACKGROUND[1])
    return on.reshape(len(frames), PIXELS).astype(np.int8)


def _emulator_state(env):
    """One game's full state including the emulator's RNG (ALE's own
    serialisation, as bytes) and the env's NumPy RNG (it draws Pong-v0's
    random frameskip)."""
    blob = np.frombuffer(env.unwrapped.ale.cloneState(include_rng=True).serialize(), np.uint8)
    return blob, json.dumps(env.unwrapped.np_random.bit_generator.state)


def _set_emulator_state(env, blob, np_random_json):
    import ale_py
    env.unwrapped.ale.restoreState(ale_py.ALEState(blob.tobytes()))
    env.unwrapped.np_random.bit_generator.state = json.loads(np_random_json)


def _step_game(env, action):
    frame, reward, terminated, truncated, _ = env.step(action)
    return frame, float(reward), terminated or truncated


def _game_worker(connection, env_id, ids, seeds, frames):
    """A worker process: owns the games `ids`, writes their frames into the
    shared `frames` array, and answers the main process's commands."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C is handled by the main process
    envs = {}
    for g, s in zip(ids, seeds):
        envs[g] = make_game(env_id)
        envs[g].reset(seed=int(s))
    connection.send("ready")
    while True:
        command, ids, payload = connection.recv()
        if command == "step":
            rewards, dones = [], []
            for g, action in zip(ids, payload):
                frames[g], reward, done = _step_game(envs[g], action)
                rewards.append(reward)
                dones.append(done)
            connection.send((rewards, dones))
        elif command == "reset":
            for g in ids:
                frames[g] = envs[g].reset()[0]
            connection.send(None)
        elif command == "state":
            connection.send([_emulator_state(envs[g]) for g in ids])
        elif command == "restore":
            for g, (blob, np_random_json) in zip(ids, payload):
                _set_emulator_state(envs[g], blob, np_random_json)
            connection.send(None)
        else:
            connection.close()
            return


class Games:
    """n copies of the game. Only the games named in a call are stepped or
    reset. The last frame of every game lives in one (n, 210, 160, 3) array,
    so preprocessing runs on all of them at once.

    With workers=0 the games run in this process. With workers=k they are
    split over k processes that step their games at the same time (the
    emulator is most of the work, and it does not release the GIL, so threads
    would not help); the frames array is then shared memory, and only actions,
    rewards and done flags travel through the pipes. Either way each game is
    the same emulator driven by the same actions: results are identical."""

    def __init__(self, env_id, n, seed, workers=0):
        self.env_id, self.n = env_id, n
        shape = (n, 210, 160, 3)                        # every ALE game's RGB frame
        seeds = np.random.default_rng([seed, 7]).integers(2 ** 31, size=n)
        self.workers = min(workers, n)
        self.connections, self.processes = [], []
        if self.workers == 0:
            self.frames = np.zeros(shape, np.uint8)
            self.envs = [make_game(env_id) for _ in range(n)]
            for env, s in zip(self.envs, seeds):
                env.reset(seed=int(s))                  # seeds the emulator once; later resets continue its RNG
            return
        import mmap
        import multiprocessing
        buffer = mmap.mmap(-1, int(np.prod(shape)))    # anonymous shared memory, inherited by forked workers
        self.frames = np.frombuffer(buffer, np.uint8).reshape(shape)
        self.owner = np.arange(n) % self.workers
        context = multiprocessing.get_context("fork")
        for w in range(self.workers):
            ids = np.flatnonzero(self.owner == w)
            mine, theirs = context.Pipe()
            process = context.Process(target=_game_worker, args=(theirs, env_id, ids, seeds[ids], self.frames),
                                      daemon=True)
            process.start()
            theirs.close()                              # the worker holds the other end now
            self.connections.append(mine)
            self.processes.append(process)
        for connection in self.connections:
            connection.recv()                           # "ready"

    def __len__(self):
        return self.n

    def _ask(self, command, ids, payload=None):
        """Send each worker its part of the command; return the answers in the order of ids."""
        ids = np.asarray(ids)
        asked = []
        for w, connection in enumerate(self.connections):
            mine = np.flatnonzero(self.owner[ids] == w)
            if len(mine):
                connection.send((command, ids[mine], None if payload is None else [payload[i] for i in mine]))
                asked.append((mine, connection))
        answers = [None] * len(ids)
        for mine, connection in asked:
            reply = connection.recv()
            if reply is not None:
                for i, item in zip(mine, reply if command != "step" else zip(*reply)):
                    answers[i] = item
        return answers

    def reset(self, ids):
        if self.workers:
            self._ask("reset", ids)
            return
        for g in ids:
            self.frames[g] = self.envs[g].reset()[0]

    def step(self, ids, actions):
        """Step the games `ids` with `actions`; returns rewards and done flags (arrays)."""
        if self.workers:
            answers = self._ask("step", ids, list(actions))
            return np.array([a[0] for a in answers]), np.array([a[1] for a in answers])
        rewards, dones = np.zeros(len(ids)), np.zeros(len(ids), bool)
        for j, (g, action) in enumerate(zip(ids, actions)):
            self.frames[g], rewards[j], dones[j] = _step_game(self.envs[g], action)
        return rewards, dones

    def state(self):
        """Every game's emulator state with its RNGs, as arrays for a checkpoint."""
        states = self._ask("state", range(self.n)) if self.workers else [_emulator_state(e) for e in self.envs]
        blobs = [blob for blob, _ in states]
        return {"games_ale": np.concatenate(blobs), "games_ale_sizes": np.array([len(b) for b in blobs]),
                "games_np_random": np.array(json.dumps([r for _, r in states]))}

    def restore(self, state):
        sizes = state["games_ale_sizes"]
        if len(sizes) != self.n:
            raise ValueError(f"checkpoint holds {len(sizes)} games, this run has {self.n}")
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        rngs = json.loads(str(state["games_np_random"]))
        states = [(state["games_ale"][offsets[g]:offsets[g + 1]], rngs[g]) for g in range(self.n)]
        if self.workers:
            self._ask("restore", range(self.n), states)
        else:
            for env, (blob, np_random_json) in zip(self.envs, states):
                _set_emulator_state(env, blob, np_random_json)

    def close(self):
        for connection, process in zip(self.connections, self.processes):
            connection.send(("close", [], None))
            process.join(timeout=5)
        self.connections, self.processes, self.envs = [], [], []


# ----------------------------------------------------------------------------
# Model: z = relu(x W1) W2, P(UP) = sigmoid(z), as one fused engine op
# ----------------------------------------------------------------------------
def init_policy(rng):
    """The seed's initialisation, W1 ~ N(0, 1/D), W2 ~ N(0, 1/H). Engine layout:
    W1 is (D, H) (the seed's W1 transposed), W2 is (H,)."""
    W1 = ad.nn.parameter(rng.standard_normal((PIXELS, HIDDEN)) / math.sqrt(PIXELS), "W1")
    W2 = ad.nn.parameter(rng.standard_normal(HIDDEN) / math.sqrt(HIDDEN), "W2")
    return W1, W2


@ad.primitive
def policy_logit(x, W1, W2, needs_grad=(True, True, True)):
    """z = relu(x W1) W2 for rows x of difference frames, (N, D) -> (N,).

    Forward: only the columns of x that are non-zero in some row (the pixels
    that changed) contribute to x W1, so gather those columns and those rows
    of W1. A difference frame has ~30 of its 6400 pixels set, ten games
    together ~150, so acting reads ~2% of W1. Exact, not an approximation.
    Backward (the seed's policy_backward, batched):
        dW2 = h^T g,   dh = g W2^T (zeroed where h <= 0),   dW1 = x^T dh."""
    changed = np.flatnonzero(np.any(x != 0, axis=0))
    x_changed = x[:, changed].astype(W1.dtype)
    h = np.maximum(x_changed @ W1[changed], 0.0)
    z = h @ W2

    def vjp(g):
        dW2 = h.T @ g
        dh = np.outer(g, W2) * (h > 0)
        dW1 = np.zeros_like(W1)
        dW1[changed] = x_changed.T @ dh
        dx = dh @ W1.T if needs_grad[0] else None
        return dx, dW1, dW2
    return z, vjp


def probability_up(x, W1, W2):
    """P(UP | x) for a batch of difference frames, without recording a graph."""
    with ad.no_grad():
        z = policy_logit(ad.Tensor(x), W1, W2)
    return ad.stable_sigmoid(z.data)


# ----------------------------------------------------------------------------
# Loss: minus the advantage-weighted log-likelihood of the sampled actions
# ----------------------------------------------------------------------------
def discounted_returns(rewards, gamma=GAMMA):
    """R_t = r_t + gamma R_{t+1}, restarted at every point scored: in Pong a
    point ends a rally, and actions of one rally do not cause the next."""
    returns = np.zeros(len(rewards))
    running = 0.0
    for t in reversed(range(len(rewards))):
        if rewards[t] != 0:
            running = 0.0
        running = running * gamma + rewards[t]
        returns[t] = running
    return returns


def advantages(episodes, standardise="batch"):
    """Standardised returns, one array per episode. 'batch' uses the mean and
    std of all steps of the batch (the issue's choice: better episodes get
    more credit); 'episode' standardises each episode alone (the seed's code)."""
    returns = [discounted_returns(e["rewards"]) for e in episodes]
    if standardise == "episode":
        return [(r - r.mean()) / (r.std() or 1.0) for r in returns]
    everything = np.concatenate(returns)
    mean, std = everything.mean(), everything.std() or 1.0
    return [(r - mean) / std for r in returns]


def policy_loss(x, up, advantage, W1, W2):
    """-sum_t A_t log pi(a_t | x_t). With s = +1 for UP and -1 for DOWN,
    log pi(a | x) = log sigmoid(s z) = -softplus(-s z); its gradient with
    respect to z is s sigmoid(-s z) = y - P(UP), the seed's 'fake label' error."""
    z = policy_logit(ad.Tensor(x), W1, W2)
    sign = np.where(up, 1.0, -1.0)
    return ad.sum(ad.softplus(z * -sign) * advantage)


def accumulate_gradient(episodes, W1, W2, standardise="batch", chunk=GRADIENT_CHUNK):
    """Sum the gradient of the loss over all steps of all episodes into
    W1.grad and W2.grad, a chunk of frames at a time (the engine accumulates
    .grad of leaves across backward calls). Returns the summed loss."""
    total = 0.0
    for episode, advantage in zip(episodes, advantages(episodes, standardise)):
        for start in range(0, len(advantage), chunk):
            rows = slice(start, start + chunk)
            loss = policy_loss(episode["x"][rows], episode["up"][rows], advantage[rows], W1, W2)
            loss.backward()
            total += loss.item()
    return total


# ----------------------------------------------------------------------------
# Playing: exactly n complete episodes, spread over the parallel games
# ----------------------------------------------------------------------------
def play_episodes(games, W1, W2, rng, n_episodes, stop=None, film=None):
    """Play `n_episodes` whole episodes with the fixed policy (W1, W2).

    All playing games are preprocessed and forwarded together (one batched
    forward per step); then each samples UP with probability P(UP) and steps.
    A game that finishes starts another episode only while fewer than
    n_episodes have been started, so every episode is played from start to end
    by this policy and no episode is left half-played. Returns the episodes in
    the order they ended, each a dict of x (T, 6400) int8 difference frames,
    up (T,) bool, rewards (T,); or None if `stop()` became true. `film`, a
    deque, receives the RGB frames of game 0's first episode."""
    n = len(games)
    playing = np.zeros(n, bool)
    first_frame = np.zeros(n, bool)
    previous = np.zeros((n, PIXELS), np.int8)
    record = [None] * n
    started = 0

    def start(ids):
        nonlocal started
        games.reset(ids)
        playing[ids], first_frame[ids] = True, True
        for g in ids:
            record[g] = {"x": [], "up": [], "rewards": []}
        started += len(ids)

    start(np.arange(min(n, n_episodes)))
    episodes, filming = [], film is not None
    while playing.any():
        if stop is not None and stop():
            return None
        ids = np.flatnonzero(playing)
        current = preprocess(games.frames[ids])
        x = current - previous[ids]                 # difference frame, values in {-1, 0, 1}
        x[first_frame[ids]] = 0                     # the seed's first input: no previous frame, zeros
        previous[ids], first_frame[ids] = current, False
        up = rng.random(len(ids)) < probability_up(x, W1, W2)
        if filming and playing[0]:
            film.append(games.frames[0].copy())
        rewards, dones = games.step(ids, np.where(up, UP, DOWN))
        for j, g in enumerate(ids):
            record[g]["x"].append(x[j])
            record[g]["up"].append(up[j])
            record[g]["rewards"].append(rewards[j])
        ended = ids[dones]
        for g in ended:
            episodes.append({"x": np.stack(record[g]["x"]), "up": np.array(record[g]["up"]),
                             "rewards": np.array(record[g]["rewards"])})
            record[g] = None
        filming = filming and 0 not in ended
        playing[ended] = False
        restart = ended[:max(0, n_episodes - started)]     # start new episodes while fewer than n were started
        if len(restart):
            start(restart)
    return episodes


# ----------------------------------------------------------------------------
# Training state and checkpoints (.npz, allow_pickle=False)
# ----------------------------------------------------------------------------
def new_state(args):
    rng = np.random.default_rng(args.seed)
    W1, W2 = init_policy(rng)
    optimizer = ad.optim.RMSProp([W1, W2], lr=LEARNING_RATE, decay=RMSPROP_DECAY, eps=RMSPROP_EPS)
    games = Games(args.env_id, args.games, args.seed, args.workers)
    return {"W1": W1, "W2": W2, "optimizer": optimizer, "rng": rng, "games": games,
            "config": config_of(args), "episode": 0, "updates": 0, "env_steps": 0,
            "running_reward": None, "seconds": 0.0,
            "history": {"score": [], "length": [], "hours": [], "running_reward": []},
            "boundary": None}


def config_of(args):
    """The settings a checkpoint must agree with to be resumed."""
    return {"env_id": args.env_id, "games": args.games, "hidden": HIDDEN, "pixels": PIXELS,
            "batch_episodes": BATCH_EPISODES, "standardise": args.standardise}


def mark_boundary(state):
    """Remember the RNG and game states at an update boundary: what a
    checkpoint saves, even if Ctrl-C arrives in the middle of the next batch."""
    state["boundary"] = {"rng": json.dumps(state["rng"].bit_generator.state), **state["games"].state()}


def save_checkpoint(path, state):
    history = {f"history_{k}": np.array(v, dtype=float) for k, v in state["history"].items()}
    optimizer = {f"rmsprop_{k}": v for k, v in state["optimizer"].state_dict().items()}
    running = state["running_reward"]
    ad.nn.save_parameters(
        path, {"W1": state["W1"], "W2": state["W2"]},
        format=np.array(CHECKPOINT_FORMAT), config=np.array(json.dumps(state["config"])),
        episode=np.array(state["episode"]), updates=np.array(state["updates"]),
        env_steps=np.array(state["env_steps"]), seconds=np.array(state["seconds"]),
        running_reward=np.array(np.nan if running is None else running),
        rng=np.array(state["boundary"]["rng"]),
        games_ale=state["boundary"]["games_ale"], games_ale_sizes=state["boundary"]["games_ale_sizes"],
        games_np_random=state["boundary"]["games_np_random"], **optimizer, **history)


def load_checkpoint(path, state):
    """Load `path` into a fresh `state`, refusing (ValueError naming the
    problem) a file that is corrupt, is not a pong_pg checkpoint, or was made
    with other settings."""
    arrays = ad.nn.load_arrays(path)
    if str(arrays.get("format", "")) != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT!r} file (keys: {sorted(arrays)[:6]}...)")
    saved = json.loads(str(arrays["config"]))
    for key, value in state["config"].items():
        if saved.get(key) != value:
            raise ValueError(f"{path}: checkpoint was made with {key}={saved.get(key)!r}, this run has "
                             f"{key}={value!r}; use the same settings or a new --out folder")
    try:
        ad.nn.load_parameters(path, {"W1": state["W1"], "W2": state["W2"]})
        state["optimizer"].load_state_dict({k[len("rmsprop_"):]: v for k, v in arrays.items()
                                            if k.startswith("rmsprop_")})
        state["games"].restore(arrays)
        state["rng"].bit_generator.state = json.loads(str(arrays["rng"]))
        state["episode"], state["updates"] = int(arrays["episode"]), int(arrays["updates"])
        state["env_steps"], state["seconds"] = int(arrays["env_steps"]), float(arrays["seconds"])
        running = float(arrays["running_reward"])
        state["running_reward"] = None if math.isnan(running) else running
        state["history"] = {k: arrays[f"history_{k}"].tolist() for k in state["history"]}
    except (KeyError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: damaged checkpoint ({type(error).__name__}: {error})") from None
    if len(state["history"]["score"]) != state["episode"]:
        raise ValueError(f"{path}: damaged checkpoint (history has {len(state['history']['score'])} "
                         f"episodes, counter says {state['episode']})")
    mark_boundary(state)
    return state


def load_weights(path):
    """W1, W2 from a checkpoint or a weights-only .npz (e.g. float16)."""
    W1, W2 = ad.nn.parameter(np.zeros((PIXELS, HIDDEN)), "W1"), ad.nn.parameter(np.zeros(HIDDEN), "W2")
    ad.nn.load_parameters(path, {"W1": W1, "W2": W2})
    return W1, W2


# ----------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------
def train_batch(state, stop=None):
    """Play one batch of 10 episodes, then one RMSProp step. Returns the
    episodes (None if stopped before the batch was complete: then nothing in
    `state` changed except the RNGs, and the boundary marks where to resume)."""
    W1, W2, optimizer = state["W1"], state["W2"], state["optimizer"]
    episodes = play_episodes(state["games"], W1, W2, state["rng"], BATCH_EPISODES, stop=stop)
    if episodes is None:
        return None
    optimizer.zero_grad()
    accumulate_gradient(episodes, W1, W2, state["config"]["standardise"])
    optimizer.step()                # RMSProp descent on -A log pi = the seed's ascent on A log pi
    state["updates"] += 1
    return episodes


def record_batch(state, episodes, hours):
    for e in episodes:
        score = float(e["rewards"].sum())
        previous = state["running_reward"]
        state["running_reward"] = score if previous is None else (
            RUNNING_DECAY * previous + (1 - RUNNING_DECAY) * score)
        state["episode"] += 1
        state["env_steps"] += len(e["rewards"])
        for key, value in (("score", score), ("length", len(e["rewards"])), ("hours", hours),
                           ("running_reward", state["running_reward"])):
            state["history"][key].append(value)


def train(state, args, out, log=print):
    """Train until args.episodes episodes (or args.hours of training time);
    checkpoint every args.checkpoint_every updates and on Ctrl-C."""
    checkpoint = os.path.join(out, "checkpoint.npz")
    stop_requested = []

    def on_ctrl_c(signum, frame):
        stop_requested.append(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)   # a second Ctrl-C stops at once

    previous_handler = signal.signal(signal.SIGINT, on_ctrl_c)
    session_start, session_steps = time.perf_counter(), 0
    state["session_start"] = session_start
    seconds_before = state["seconds"]
    first_episode = state["episode"]
    progress = ad.runs.Progress(max(args.episodes - first_episode, 1), label="episodes this session", every=0)
    if state["boundary"] is None:
        mark_boundary(state)
    try:
        while state["episode"] < args.episodes and (args.hours is None or state["seconds"] < args.hours * 3600):
            batch_start = time.perf_counter()
            episodes = train_batch(state, stop=lambda: bool(stop_requested))
            if episodes is None:
                break
            state["seconds"] = seconds_before + time.perf_counter() - session_start
            record_batch(state, episodes, state["seconds"] / 3600)
            mark_boundary(state)
            steps = sum(len(e["rewards"]) for e in episodes)
            session_steps += steps
            if state["updates"] % args.checkpoint_every == 0:
                save_outputs(state, args, out, checkpoint)
            due = args.checkpoint_every - state["updates"] % args.checkpoint_every
            batch_seconds = time.perf_counter() - batch_start
            progress.update(state["episode"] - first_episode, episode=state["episode"],
                            running_reward=state["running_reward"],
                            batch_mean=float(np.mean([e["rewards"].sum() for e in episodes])),
                            steps_per_s=round(steps / batch_seconds),
                            next_checkpoint=f"{due} updates ~{ad.runs.format_seconds(due * batch_seconds)}")
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    if stop_requested:
        log(f"Ctrl-C: saving the state after update {state['updates']} (episode {state['episode']}) "
            f"to {checkpoint}; continue with --resume")
    save_outputs(state, args, out, checkpoint)
    session_seconds = time.perf_counter() - session_start
    return {"interrupted": bool(stop_requested), "session_seconds": session_seconds,
            "session_steps_per_s": session_steps / max(session_seconds, 1e-9)}


def save_outputs(state, args, out, checkpoint):
    """Checkpoint, learning curve data (CSV, rewritten whole each time so it
    always matches the checkpoint), float16 weights, the two figures."""
    save_checkpoint(checkpoint, state)
    ad.nn.save_parameters(os.path.join(out, "weights_float16.npz"),
                          {"W1": state["W1"].data.astype(np.float16), "W2": state["W2"].data.astype(np.float16)})
    h = state["history"]
    table = np.column_stack([np.arange(1, len(h["score"]) + 1), h["hours"], h["score"], h["length"],
                             h["running_reward"]]) if h["score"] else np.zeros((0, 5))
    temporary = os.path.join(out, ".curve.csv.tmp")
    np.savetxt(temporary, table, delimiter=",", fmt=["%d", "%.5f", "%g", "%d", "%.4f"],
               header="episode,hours,score,steps,running_reward", comments="")
    os.replace(temporary, os.path.join(out, "curve.csv"))
    if h["score"]:
        plot_learning_curve(h, os.path.join(out, "pong_pg_curve.png"))
    plot_neurons(state["W1"].data, os.path.join(out, "pong_pg_neurons.png"))
    ad.runs.write_metrics(out, run_metrics(state), args, state["session_start"])


def run_metrics(state):
    h = state["history"]
    reached = [e + 1 for e, r in enumerate(h["running_reward"]) if r >= -15]
    compared = min(100, max(1, len(h["score"]) // 2))          # first and last episodes, for a before/after
    return {
        "env_id": state["config"]["env_id"], "games_in_parallel": state["config"]["games"],
        "episodes": state["episode"], "updates": state["updates"], "env_steps": state["env_steps"],
        "training_hours": state["seconds"] / 3600,
        "env_steps_per_s_overall": state["env_steps"] / max(state["seconds"], 1e-9),
        "running_reward": state["running_reward"],
        "best_running_reward": max(h["running_reward"]) if h["running_reward"] else None,
        "compared_episodes": compared,
        "mean_score_first_episodes": float(np.mean(h["score"][:compared])) if h["score"] else None,
        "mean_score_last_episodes": float(np.mean(h["score"][-compared:])) if h["score"] else None,
        "first_episode_running_reward_at_least_-15": reached[0] if reached else None,
        "hours_to_running_reward_-15": h["hours"][reached[0] - 1] if reached else None,
    }


# ----------------------------------------------------------------------------
# Evaluation: play the built-in AI
# ----------------------------------------------------------------------------
def play_games(env_id, W1, W2, n_games, seed, gif_path=None, n_parallel=10, workers=0):
    """Play n_games episodes with the (sampling) policy; returns per-game
    (points won, points lost) and writes a GIF of the last 150 frames of one game."""
    rng = np.random.default_rng([seed, 11])
    games = Games(env_id, min(n_parallel, n_games), seed + 12345, workers)
    film = collections.deque(maxlen=300) if gif_path else None
    episodes = play_episodes(games, W1, W2, rng, n_games, film=film)
    games.close()
    if gif_path and film:
        ad.runs.save_gif(gif_path, list(film)[::2], fps=15)
    return [(int((e["rewards"] > 0).sum()), int((e["rewards"] < 0).sum())) for e in episodes]


# ----------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------
def plot_learning_curve(history, path):
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    episodes = np.arange(1, len(history["score"]) + 1)
    for ax, xs, label in ((axes[0], episodes, "episodes"), (axes[1], np.array(history["hours"]),
                                                            "wall-clock hours of training (2 cores)")):
        ax.plot(xs, history["score"], ".", ms=2, color="0.7", label="episode score")
        ax.plot(xs, history["running_reward"], color="C0", label="running reward (EMA 0.99)")
        ax.axhline(-15, color="C3", ls=":", lw=1, label="bar: -15")
        ax.axhline(0, color="C2", ls="--", lw=1, label="even with the built-in AI")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("points won - points lost")
    axes[0].set_ylim(-21.5, 21.5)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Pong from pixels, policy gradients (ALE Pong)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_neurons(W1, path, count=40, columns=8):
    """The seed's picture: the input weights of the first `count` hidden units,
    each as an 80x80 image (white positive, black negative, each scaled to its
    own largest weight), tiled with 2-pixel gaps at one pixel per weight."""
    from PIL import Image  # installed with matplotlib
    rows = count // columns
    mosaic = np.ones((rows * 82 - 2, columns * 82 - 2))            # white gaps
    for k in range(count):
        image = W1[:, k].reshape(80, 80)
        r, c = divmod(k, columns)
        mosaic[r * 82:r * 82 + 80, c * 82:c * 82 + 80] = 0.5 + 0.5 * image / (np.abs(image).max() or 1.0)
    Image.fromarray(np.round(mosaic * 255).astype(np.uint8), mode="L").save(path, optimize=True)


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def build_parser():
    parser = ad.runs.parser(__doc__, "pong_pg")
    parser.add_argument("--env-id", default="ALE/Pong-v5", help="any ALE Pong id, e.g. the seed's Pong-v0")
    parser.add_argument("--games", type=ad.runs.positive_int, default=BATCH_EPISODES,
                        help=f"games played in parallel (1..{BATCH_EPISODES})")
    parser.add_argument("--workers", type=ad.runs.nonnegative_int, default=2,
                        help="processes that run the games (0: all in this one); results do not depend on it")
    parser.add_argument("--episodes", type=ad.runs.positive_int, default=None,
                        help="train until this many episodes in total (default 60; --full: 30000)")
    parser.add_argument("--hours", type=ad.runs.positive_float, default=None,
                        help="also stop after this many hours of training in total")
    parser.add_argument("--checkpoint-every", type=ad.runs.positive_int, default=20, help="updates between checkpoints")
    parser.add_argument("--standardise", choices=("batch", "episode"), default="batch",
                        help="standardise returns over the batch (issue) or per episode (seed's code)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--play", nargs="?", const=TRAINED_WEIGHTS, metavar="CHECKPOINT",
                        help="play the built-in AI with these weights (a checkpoint or weights .npz; "
                             "default: the long run's weights, docs/pong_pg_weights_float16.npz)")
    parser.add_argument("--play-games", type=ad.runs.positive_int, default=3, help="games for --play")
    return parser


def print_table(rows):
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.games > BATCH_EPISODES:
        parser.error(f"--games {args.games}: at most {BATCH_EPISODES} (the episodes per update)")
    out = ad.runs.prepare_out(args.out)
    started = time.perf_counter()

    if args.play:
        try:
            W1, W2 = load_weights(args.play)
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"--play: {error}")
        gif = os.path.join(out, "pong_pg_play.gif")
        results = play_games(args.env_id, W1, W2, args.play_games, args.seed, gif, workers=args.workers)
        for i, (won, lost) in enumerate(results, 1):
            print(f"game {i}: agent {won} - {lost} built-in AI  (score {won - lost:+d})")
        mean = float(np.mean([w - l for w, l in results]))
        print(f"mean score over {len(results)} games: {mean:+.2f}   GIF of one game: {gif}")
        ad.runs.write_metrics(out, {"play_scores": [w - l for w, l in results], "play_mean_score": mean},
                              args, started)
        return {"scores": results, "mean": mean}

    if args.episodes is None:
        args.episodes = 30000 if args.full else 60
    state = new_state(args)
    if args.resume:
        checkpoint = os.path.join(out, "checkpoint.npz")
        try:
            load_checkpoint(checkpoint, state)
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"--resume: {error}")
        print(f"resumed from {checkpoint}: episode {state['episode']}, update {state['updates']}, "
              f"running reward {state['running_reward']}")
    print(f"{args.env_id}: {args.games} games in parallel, {BATCH_EPISODES} episodes per update, "
          f"training to episode {args.episodes}" + (f" or {args.hours} h" if args.hours else ""))
    session = train(state, args, out)
    state["games"].close()

    h = state["history"]
    gif = os.path.join(out, "pong_pg_game.gif")
    demo = [] if session["interrupted"] else play_games(args.env_id, state["W1"], state["W2"], 1, args.seed, gif)
    metrics = {**run_metrics(state), "steps_per_s_this_session": session["session_steps_per_s"],
               "demo_game_score": demo[0][0] - demo[0][1] if demo else None}
    ad.runs.write_metrics(out, metrics, args, started)
    print("\nresults")
    print_table([
        ("episodes / updates", f"{state['episode']} / {state['updates']}"),
        ("environment steps", f"{state['env_steps']:,}"),
        ("training time", ad.runs.format_seconds(state["seconds"])),
        ("env steps/s (this session, learning included)", f"{session['session_steps_per_s']:.0f}"),
        ("running reward", f"{state['running_reward']:.2f}" if h["score"] else "-"),
        (f"mean score, first / last {metrics['compared_episodes']} episodes",
         f"{metrics['mean_score_first_episodes']:.2f} / {metrics['mean_score_last_episodes']:.2f}"
         if h["score"] else "-"),
        ("demo game vs built-in AI", f"{demo[0][0]}-{demo[0][1]}" if demo else "skipped"),
    ])
    print(f"\nwrote {out}/: metrics.json, checkpoint.npz, weights_float16.npz, curve.csv, "
          f"pong_pg_curve.png, pong_pg_neurons.png" + (", pong_pg_game.gif" if demo else ""))
    if not args.full:
        print("\nThis was a short demonstration; the policy is still close to random (the seed needed "
              "~8,000 episodes).\nStart a real run (hours; Ctrl-C saves, --resume continues):\n"
              "    python pong_pg.py --full\n    python pong_pg.py --full --resume\n"
              f"Watch this checkpoint play:\n    python pong_pg.py --play {out}/checkpoint.npz\n"
              "Watch the agent of our long run (3.6 h, running reward +2.6) play:\n    python pong_pg.py --play")
    return {"state": state, "metrics": metrics}


if __name__ == "__main__":
    main()
