"""Pong from pixels with policy gradients, on the real Atari game, ten games at a time.

The idea (Karpathy, "Pong from Pixels", 2016): a two-layer network looks at the difference of two
consecutive 80x80 frames and outputs P(UP). We sample UP or DOWN, play whole games (first to 21) against
the built-in AI, then treat every sampled action as if it had been the correct label, weighted by how
well it turned out: supervised learning on your own samples, weighted by the advantage.

    maximise   sum_t A_t log pi(a_t | x_t)
    pi(UP | x) = sigmoid(W2 . relu(W1 x))       200 hidden units, no biases, 1,280,200 weights
    A_t        = discounted return (gamma 0.99, restarted at every point), standardised
    update     = RMSProp (decay 0.99, lr 1e-4, eps 1e-5) on the gradient summed over 10 episodes

The claim: this learns from pixels alone to beat the built-in AI; the original (Karpathy's pg-pong.py)
took ~8,000 episodes, three nights on a laptop, to get slightly better than it. Unlike the original,
returns are standardised over the batch (`--standardise episode`: per episode, as the original) and
ALE/Pong-v5 repeats each action 4 frames (`--env-id Pong-v0`: 2-4 at random, as the original).
New: the engine's backward, ten games at once, exact checkpoints.

Run:
    python pong_pg.py                   # the lesson run: 60 episodes, 6 updates, still close to random
    python pong_pg.py --full            # the long run (hours), in runs/pong_pg_full; Ctrl-C saves
    python pong_pg.py --full --resume   # continue it, bit for bit
    python pong_pg.py --play            # our trained agent (docs/pong_pg_weights_float16.npz) plays

Results: see README.md, section pong_pg.py.
"""

import autodiff as ad          # before NumPy: it makes BLAS single-threaded (small matrices, busy cores)

import argparse
import json
import math
import os
import shlex
import signal
import time

import numpy as np

# ----------------------------------------------------------------------------
# 1. Settings: the original's hyperparameters, then the run's flags
# ----------------------------------------------------------------------------
HIDDEN = 200                 # hidden ReLU units
PIXELS = 80 * 80             # input: an 80x80 difference frame
GAMMA = 0.99                 # discount of future rewards
BATCH_EPISODES = 10          # episodes per parameter update
LEARNING_RATE, RMSPROP_DECAY, RMSPROP_EPS = 1e-4, 0.99, 1e-5
RUNNING_DECAY = 0.99         # running reward = 0.99 running + 0.01 episode score
UP, DOWN = 2, 3              # Pong's actions 2 (RIGHT: paddle up) and 3 (LEFT: down), as in the original
BACKGROUND = (144, 109)      # red-channel values of the two background colours

SETTINGS = {"env_id": "ALE/Pong-v5", "standardise": "batch", "episodes": 60, "hours": None,
            "games": BATCH_EPISODES, "workers": 2, "checkpoint_every": 20, "play_games": 3}
FULL = {"episodes": 30000}
# the flags' help text and types: Part 2, "The command line"


# ----------------------------------------------------------------------------
# 2. Environment: the real ALE game; preprocessing for all games at once
# ----------------------------------------------------------------------------
# The game: Gymnasium's ALE Pong, ten copies at once (Part 2: make_game, `Games`, the worker processes).


def preprocess(frames):
    """B frames (210, 160, 3) uint8 RGB -> (B, 6400) int8 in {0, 1}, as the original's prepro: crop the
    score and borders (rows 35..194), keep every second row and column of the red channel, erase the two
    background colours; everything else (paddles, ball) becomes 1. One expression for all games."""
    red = np.stack([frame[35:195:2, ::2, 0] for frame in frames])   # (B, 80, 80), only these bytes copied
    on = (red != 0) & (red != BACKGROUND[0]) & (red != BACKGROUND[1])
    return on.reshape(len(frames), PIXELS).view(np.int8)            # True/False as the bytes 1/0


# ----------------------------------------------------------------------------
# 3. Model: z = relu(x W1) W2, P(UP) = sigmoid(z)
# ----------------------------------------------------------------------------
def init_policy(rng):
    """The original's initialisation, W1 ~ N(0, 1/D), W2 ~ N(0, 1/H). Engine layout: W1 is (D, H)
    (the original's W1 transposed), W2 is (H,)."""
    W1 = ad.nn.parameter(rng.standard_normal((PIXELS, HIDDEN)) / math.sqrt(PIXELS), "W1")
    W2 = ad.nn.parameter(rng.standard_normal(HIDDEN) / math.sqrt(HIDDEN), "W2")
    return W1, W2


def policy_logit_plain(x, W1, W2):
    """z = relu(x W1) W2 for rows x of difference frames, (N, D) -> (N,), in the engine's elementary ops.
    The backward the engine derives from them is the original's policy_backward, for a batch:
        dW2 = h^T g,   dh = g W2^T (zeroed where h <= 0),   dW1 = x^T dh."""
    return ad.matmul(ad.relu(ad.matmul(x, W1)), W2)


# policy_logit: the same in one fused op, faster (tested equal in tests/test_pong_pg.py): only the pixels
# that changed (~2% of them) contribute to x W1, so it reads only their rows of W1. probability_up,
# acting's P(UP | x) = sigmoid(z): its forward without the engine's graph. Both in Part 2, "The fused model".


# ----------------------------------------------------------------------------
# 4. Loss: minus the advantage-weighted log-likelihood of the sampled actions
# ----------------------------------------------------------------------------
def discounted_returns(rewards, gamma=GAMMA):
    """R_t = r_t + gamma R_{t+1}, restarted at every point scored: in Pong a point ends a rally, and
    the actions of one rally do not cause the next."""
    rewards = np.asarray(rewards, float).tolist()         # Python floats: a faster loop, the same sums
    returns, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        if rewards[t] != 0:
            running = 0.0
        running = running * gamma + rewards[t]
        returns[t] = running
    return np.array(returns)


def advantages(episodes, standardise="batch"):
    """Standardised returns, one array per episode. 'batch' uses the mean and std of all steps of the
    batch, so a better episode gets more credit than a worse one; 'episode' standardises each episode
    alone, as the original does."""
    returns = [discounted_returns(e["rewards"]) for e in episodes]
    if standardise == "episode":
        return [(r - r.mean()) / (r.std() or 1.0) for r in returns]
    everything = np.concatenate(returns)
    mean, std = everything.mean(), everything.std() or 1.0
    return [(r - mean) / std for r in returns]


def policy_loss(x, up, advantage, W1, W2):
    """-sum_t A_t log pi(a_t | x_t). With s = +1 for UP and -1 for DOWN, log pi(a | x) = log sigmoid(s z)
    = -softplus(-s z); its gradient with respect to z is y - P(UP), the original's 'fake label' error."""
    z = policy_logit(ad.Tensor(x), W1, W2)
    sign = np.where(up, 1.0, -1.0)
    return ad.sum(ad.softplus(z * -sign) * advantage)


# ----------------------------------------------------------------------------
# 5. Update: the gradient summed over the batch, then one RMSProp step
# ----------------------------------------------------------------------------
def episode_gradient(episode, advantage, W1, W2, chunk=4096, into=None):
    """The gradient of one episode's loss with respect to (W1, W2), and the loss; `chunk` frames at a
    time to bound memory (the engine adds up .grad of leaves across backward calls; with `into`, two
    arrays of zeros, it adds them up there: a worker's rows of shared memory)."""
    W1, W2 = ad.Tensor(W1, requires_grad=True), ad.Tensor(W2, requires_grad=True)   # fresh leaves
    W1.grad, W2.grad = into if into is not None else (None, None)
    total = 0.0
    for start in range(0, len(advantage), chunk):
        rows = slice(start, start + chunk)
        loss = policy_loss(episode["x"][rows], episode["up"][rows], advantage[rows], W1, W2)
        loss.backward()
        total += loss.item()
    return W1.grad, W2.grad, total


def add_gradients(gradients, W1, W2):
    """W1.grad, W2.grad = the sum of the episodes' gradients, added in episode order (so the sum is the
    same to the bit wherever each episode's gradient was computed); returns the batch's loss."""
    W1.grad, W2.grad = gradients[0][0].copy(), gradients[0][1].copy()
    for dW1, dW2, _ in gradients[1:]:
        W1.grad += dW1
        W2.grad += dW2
    return sum(g[2] for g in gradients)


def update(state, episodes):
    """One step: RMSProp descent on -sum A log pi, which is the original's ascent on sum A log pi. The
    advantages need every episode's rewards; then each episode's gradient, summed in episode order
    (games.gradient: add_gradients of the episode_gradients, wherever the episodes were played), then
    RMSProp: c <- decay c + (1 - decay) g^2,  W <- W - lr g / (sqrt(c) + eps)."""
    state["optimizer"].zero_grad()
    advantage = advantages(episodes, state["config"]["standardise"])
    loss = state["games"].gradient(episodes, advantage, state["W1"], state["W2"])
    checked_step(state, loss)           # Part 2: that step (in place); a loss or weight not finite stops the run
    state["updates"] += 1


# ----------------------------------------------------------------------------
# 6. Training: play exactly 10 whole episodes with the current policy, update, repeat
# ----------------------------------------------------------------------------
def play_episodes(games, W1, W2, n_episodes, stop=None, film=None, greedy=False, progress=None):
    """Play whole episodes with the fixed policy (W1, W2) on `games`: one batched forward per step, then
    each game samples UP with probability P(UP) from its own random stream (greedy: the likelier one).
    Game g of a batch of n games plays episodes g, g + n, g + 2n, ... below n_episodes, so what happens
    in an episode depends on nothing else. Returns the episodes in their order, dicts of x (T, 6400) int8
    difference frames, up (T,) bool, rewards (T,); None if stop() became true."""
    book = Episodes(games, n_episodes, film, progress)   # Part 2: who plays, their steps, the film, progress
    while book.playing.any():
        if stop is not None and stop():
            return None
        ids = np.flatnonzero(book.playing)
        current = preprocess([games.frames[g] for g in ids.tolist()])     # all playing games at once
        x = current - book.previous[ids]            # difference frame, values in {-1, 0, 1}
        x[book.first_frame[ids]] = 0                # the original's first input: no previous frame, zeros
        book.previous[ids], book.first_frame[ids] = current, False
        p_up = probability_up(x, W1, W2)
        up = p_up > 0.5 if greedy else np.array([games.rngs[g].random() for g in ids.tolist()]) < p_up
        rewards, dones = games.step(ids, np.where(up, UP, DOWN))
        book.add(ids, x, up, rewards, dones)        # record the step; end and restart episodes
    return sorted(book.finished, key=lambda episode: episode["number"])


def train_batch(state, stop=None):
    """Play one batch of 10 episodes, then one update. Returns the episodes (None if stopped before the
    batch was complete: then nothing changed but the games, and the boundary marks where to resume).
    `games.play` is play_episodes, on all the games here or on each worker process's share (Part 2)."""
    episodes = state["games"].play(state["W1"], state["W2"], BATCH_EPISODES, stop=stop)
    if episodes is not None:
        update(state, episodes)
    return episodes


def train(state, args, out, log=print):
    """Train until args.episodes episodes or args.hours of training in total, checkpointing every
    args.checkpoint_every updates; Ctrl-C or SIGTERM saves the last update's state and stops."""
    session = start_session(state, args, out)          # Part 2: the clock, progress line, checkpoint path
    with StopRequests() as stop:
        while state["episode"] < args.episodes and (args.hours is None or state["seconds"] < args.hours * 3600):
            batch_start = time.perf_counter()
            episodes = train_batch(state, stop=stop)
            if episodes is None:
                break
            finish_batch(state, args, out, session, episodes, batch_start)   # Part 2: history, checkpoint
    return end_session(state, args, out, session["checkpoint"], session, stop.requested, log)


# ----------------------------------------------------------------------------
# 7. Baseline: a policy that ignores the screen
# ----------------------------------------------------------------------------
def screen_blind_policy():
    """All weights zero: P(UP) = 1/2 whatever the screen shows. The floor a learned policy must beat
    (the built-in AI, the opponent, is the bar)."""
    return ad.nn.parameter(np.zeros((PIXELS, HIDDEN)), "W1"), ad.nn.parameter(np.zeros(HIDDEN), "W2")


# ----------------------------------------------------------------------------
# 8. Measurement: whole games against the built-in AI, on games no training saw
# ----------------------------------------------------------------------------
def play_games(env_id, W1, W2, n_games, seed, n_parallel=10, workers=0, greedy=False, film=None, progress=None):
    """Play n_games whole games; returns per-game (points won, points lost). The emulators are seeded
    from seed + 12345 (training's from seed), so these are not the games the policy trained on."""
    games = make_games(env_id, min(n_parallel, n_games), seed + 12345, workers)
    try:
        episodes = games.play(W1, W2, n_games, film=film, greedy=greedy, progress=progress)
    finally:
        games.close()
    return [(int((e["rewards"] > 0).sum()), int((e["rewards"] < 0).sum())) for e in episodes]


# ----------------------------------------------------------------------------
# 9. main: train (or --play), then measure and report
# ----------------------------------------------------------------------------
def main(argv=None):
    args = parse_arguments(argv)
    out = ad.runs.prepare_out(args.out)                 # usable, or a one-line error, before any work
    started = time.perf_counter()
    if args.play or args.curve:
        return (play_command if args.play else curve_command)(args, out, started)
    resumed = read_checkpoint_for(args, out)             # validated before any game starts
    state = new_state(args)
    try:
        if resumed is not None:
            apply_checkpoint(resumed, state)
        print_start(args, state, resumed)
        session = train(state, args, out)
    finally:
        state["games"].close()
    film = PointFilm()
    demo = [] if session["interrupted"] else play_games(args.env_id, state["W1"], state["W2"], 1, args.seed,
                                                        film=film)
    metrics = report(args, state, session, demo, film, resumed, out, started)     # Part 2: files, table
    return {"state": state, "metrics": metrics}


# ============================== Part 2: running the experiment ==============================
# The fused model, the games in worker processes, the episodes' and the session's bookkeeping, exact
# checkpoints, Ctrl-C, --play, figures, the command line (help text and flag types).


# ----------------------------------------------------------------------------
# The fused model: policy_logit (section 3's model in one op) and acting's forward
# ----------------------------------------------------------------------------
@ad.primitive
def policy_logit(x, W1, W2, needs_grad=(True, True, True), block=256):
    """Same as policy_logit_plain (section 3), tested equal in tests/test_pong_pg.py; one fused op, faster.

    Forward: only the pixels that changed (non-zero in some row of x) contribute to x W1, so gather those
    columns of x and rows of W1, `block` rows of x at a time. Ten games' difference frames have ~150 of
    6400 pixels set: acting reads ~2% of W1, exactly; 256 frames of one game change ~440 pixels, 1024 ~690.
    Backward (the original's policy_backward, batched, block by block into one dW1):
        dW2 = h^T g,   dh = g W2^T (zeroed where h <= 0),   dW1 = x^T dh."""
    blocks = [hidden_units(x[start:start + block], W1) for start in range(0, len(x), block)]
    h = np.concatenate([hidden for _, _, hidden in blocks]) if blocks else np.zeros((0, len(W2)))
    z = h @ W2

    def vjp(g):
        dh = np.outer(g, W2) * (h > 0)
        dW1 = np.zeros_like(W1)
        for start, (changed, x_changed, _) in zip(range(0, len(x), block), blocks):
            dW1[changed] += x_changed.T @ dh[start:start + block]
        return (dh @ W1.T if needs_grad[0] else None), dW1, h.T @ g
    return z, vjp


def hidden_units(x, W1):
    """h = relu(x W1) from the pixels that changed (their indices and columns of x are returned too)."""
    changed = np.flatnonzero(x.any(axis=0))
    x_changed = x[:, changed].astype(W1.dtype)
    return changed, x_changed, np.maximum(x_changed @ W1[changed], 0.0)


def probability_up(x, W1, W2):
    """P(UP | x) for a batch of difference frames: policy_logit's forward, in NumPy (acting records no
    graph, and skipping the engine's bookkeeping matters at every step)."""
    _, _, h = hidden_units(x, W1.data)
    return ad.stable_sigmoid(h @ W2.data)


# ----------------------------------------------------------------------------
# The games: n copies of the game, stepped in worker processes
# ----------------------------------------------------------------------------
def make_game(env_id, **options):
    """One Atari game through Gymnasium (ale-py ships the Pong ROM). Part 2's `Games` runs ten of them."""
    import ale_py
    import gymnasium
    gymnasium.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)    # no banner on stderr
    return gymnasium.make(env_id, **options)


def _emulator_state(env):
    """One game's full state including the emulator's RNG (ALE's own serialisation, as bytes) and the
    env's NumPy RNG (it draws Pong-v0's random frameskip)."""
    blob = np.frombuffer(env.unwrapped.ale.cloneState(include_rng=True).serialize(), np.uint8)
    return blob, json.dumps(env.unwrapped.np_random.bit_generator.state)


def _set_emulator_state(env, blob, np_random_json):
    """Restore one game; any failure (a damaged state) is a ValueError."""
    import ale_py
    try:
        env.unwrapped.ale.restoreState(ale_py.ALEState(blob.tobytes()))
        env.unwrapped.np_random.bit_generator.state = json.loads(np_random_json)
    except Exception as error:      # ALE raises a bare SystemError for bytes that are not a state
        raise ValueError(f"a game's emulator state cannot be restored ({type(error).__name__})") from None


def _step_game(env, action):
    frame, reward, terminated, truncated, _ = env.step(action)
    return frame, float(reward), terminated or truncated


def make_games(env_id, n, seed, workers=0):
    """n games, in this process (workers=0) or split over worker processes; both play the same episodes."""
    return Games(env_id, n, seed) if workers == 0 else GamePool(env_id, n, seed, min(workers, n))


class Games:
    """Games number `numbers` (default: all) of a batch of n, in this process. Each has its own emulator,
    seeded from (seed, its number), and its own sampling stream (a SeedSequence keyed by its number), so a
    game plays the same whichever process runs it and however the others are split. Only the games named
    in a call are stepped or reset. `frames` holds each game's last frame (the array the emulator made;
    never copied), and preprocessing takes them all at once. (Gymnasium's AsyncVectorEnv steps every game from the main
    process at every step, the very round trip the worker pool avoids, and resets a finished game by
    itself or not at all, where exactly-10-episode batches leave it idle; hence this small class.)"""

    def __init__(self, env_id, n, seed, numbers=None):
        self.env_id, self.total = env_id, n
        self.numbers = np.arange(n) if numbers is None else np.asarray(numbers)
        emulator_seeds = np.random.default_rng([seed, 7]).integers(2 ** 31, size=n)[self.numbers]
        self.rngs = [np.random.default_rng(np.random.SeedSequence([seed, 11], spawn_key=(int(g),)))
                     for g in self.numbers]
        self.frames = [np.zeros((210, 160, 3), np.uint8)] * len(self.numbers)    # every ALE game's RGB frame
        self.envs = [make_game(env_id) for _ in self.numbers]
        for env, s in zip(self.envs, emulator_seeds):
            env.reset(seed=int(s))                  # seeds the emulator once; later resets continue its RNG
        self.ahead, self.boundary = set(), None     # see reset_ahead
        self.spare = []                             # arrays for episodes' frames, free to reuse (a worker's)

    def __len__(self):
        return len(self.numbers)

    def play(self, W1, W2, n_episodes, **options):
        return play_episodes(self, W1, W2, n_episodes, **options)

    def gradient(self, episodes, advantage, W1, W2):
        """The batch's gradient into W1.grad, W2.grad; returns the loss."""
        return batch_gradient(episodes, advantage, W1, W2)

    def reset(self, ids):
        """Start a new episode in the games `ids` (a game that reset_ahead has reset keeps that reset)."""
        for g in map(int, ids):
            if g in self.ahead:
                self.ahead.discard(g)
            else:
                self.frames[g] = self.envs[g].reset()[0]
        self.boundary = None

    def reset_ahead(self, busy):
        """A worker's idle time at the end of a batch: reset each game for its next episode now, one at a
        time while busy() is false. Each game does what it would do anyway, in the same order (reset, then
        the next batch's steps), so nothing changes but when; game_states() keeps answering with the
        states from before the first of these resets: the batch boundary that checkpoints save. (It resets every
        game: right because every game starts an episode in the next batch, games <= BATCH_EPISODES.)"""
        for g in range(len(self)):
            if busy():
                return False
            if g not in self.ahead:
                self.boundary = self.boundary or self.game_states()
                self.frames[g] = self.envs[g].reset()[0]
                self.ahead.add(g)
        return True

    def step(self, ids, actions):
        """Step the games `ids` with `actions`; returns rewards and done flags (arrays)."""
        rewards, dones = np.zeros(len(ids)), np.zeros(len(ids), bool)
        for j, (g, action) in enumerate(zip(ids.tolist(), actions.tolist())):    # Python ints: faster
            self.frames[g], rewards[j], dones[j] = _step_game(self.envs[g], action)
        return rewards, dones

    def game_states(self):
        """Per game: (emulator bytes, its env's RNG state as JSON, its sampling stream's state as JSON)."""
        if self.boundary is not None:
            return self.boundary
        return [(*_emulator_state(env), json.dumps(rng.bit_generator.state)) for env, rng in zip(self.envs, self.rngs)]

    def restore(self, states):
        """states: one game_states() entry per game; a damaged one is a ValueError."""
        self.ahead, self.boundary = set(), None
        for env, rng, (blob, np_random_json, sampling_json) in zip(self.envs, self.rngs, states):
            _set_emulator_state(env, blob, np_random_json)
            rng.bit_generator.state = json.loads(sampling_json)

    def state(self):
        """Every game's state, as arrays for a checkpoint."""
        return state_arrays(self.game_states())

    def close(self):
        for env in self.envs:
            env.close()
        self.envs = []


def state_arrays(states):
    blobs = [s[0] for s in states]
    return {"games_ale": np.concatenate(blobs), "games_ale_sizes": np.array([len(b) for b in blobs]),
            "games_np_random": np.array(json.dumps([s[1] for s in states])),
            "games_sampling": np.array(json.dumps([s[2] for s in states]))}


class GamePool:
    """The n games split over k worker processes (game g in worker g mod k). For a batch the main process
    writes the weights into shared memory once; then each worker plays its games' episodes with
    play_episodes, exactly as Games.play does in one process, and sends back their actions and rewards
    when done (the frames stay with it). No step waits for another process, so both cores step emulators
    all batch long; the wall time of a batch is the slower worker's (the emulator is most of the work
    and holds the GIL: threads would not help). For the update, the main process computes the advantages
    from all rewards, each worker writes the gradient of each of its episodes into shared memory, and
    then adds up its slice of all of them (so the main process does not add them alone while both cores
    wait). A worker that waits (for the other one, or for the RMSProp step) resets its games for the next
    batch meanwhile (Games.reset_ahead), until the batch boundary, instead of at the next batch's start."""

    def __init__(self, env_id, n, seed, workers):
        import mmap
        import multiprocessing
        self.env_id, self.total, self.workers = env_id, n, workers
        size = PIXELS * HIDDEN + HIDDEN
        shared = np.frombuffer(mmap.mmap(-1, 8 * (size * (2 + BATCH_EPISODES) + 1)), np.float64)
        self.W1, self.W2 = shared[:PIXELS * HIDDEN].reshape(PIXELS, HIDDEN), shared[PIXELS * HIDDEN:size]
        self.gradients = shared[size:-size - 1].reshape(BATCH_EPISODES, size)   # one row per episode of a batch
        self.summed = shared[-size - 1:-1]              # their sum, W1's then W2's
        self.stop_flag = shared[-1:]                    # set to 1: the workers abandon the batch
        bounds = np.linspace(0, size, workers + 1).astype(int)
        self.slices = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))    # worker w adds up slice w
        self.numbers = [np.arange(w, n, workers) for w in range(workers)]
        self.connections, self.processes = [], []
        context = multiprocessing.get_context("fork")   # the workers inherit the shared memory
        for numbers in self.numbers:
            mine, theirs = context.Pipe()
            process = context.Process(target=_game_worker, daemon=True, args=(
                theirs, self.connections + [mine], env_id, n, seed, numbers, self.W1, self.W2,
                (self.gradients, self.summed), self.stop_flag))
            process.start()
            theirs.close()                              # the worker holds the other end now
            self.connections.append(mine)
            self.processes.append(process)
        self._gather("ready")

    def __len__(self):
        return self.total

    def _gather(self, command, payloads=None, stop=None, progress=None):
        """Send each worker its command; wait for every reply (checking stop() 5 times a second), in worker order."""
        from multiprocessing.connection import wait
        for w, connection in enumerate(self.connections):
            if command != "ready":
                connection.send((command, None if payloads is None else payloads[w]))
        replies, ended = [None] * self.workers, [0] * self.workers
        pending = dict(zip(self.connections, range(self.workers)))
        while pending:
            if stop is not None and stop():             # also before the first wait: a short batch may end in it
                self.stop_flag[0] = 1.0
            for connection in wait(list(pending), timeout=None if stop is None else 0.2):
                w = pending[connection]
                try:
                    kind, value = connection.recv()
                except EOFError:
                    raise RuntimeError(f"game worker {w} died") from None
                if kind == "error":
                    raise ValueError(value)
                if kind == "ended":                     # an episode ended in worker w (for progress)
                    ended[w] = value
                    progress.update(sum(ended))
                    continue
                replies[w] = value
                del pending[connection]
        self.stop_flag[0] = 0.0
        return replies

    def play(self, W1, W2, n_episodes, stop=None, film=None, greedy=False, progress=None):
        """play_episodes on all games, each worker on its own; the same episodes as Games.play."""
        self.W1[...], self.W2[...] = ad.Tensor(W1).data, ad.Tensor(W2).data
        orders = [(n_episodes, greedy, film is not None and w == 0, progress is not None) for w in range(self.workers)]
        replies = self._gather("play", orders, stop=stop, progress=progress)
        if any(reply is None for reply in replies):
            return None
        if film is not None:
            vars(film).update(replies[0][1])            # game 0 is worker 0's first game
        return sorted((e for episodes, _ in replies for e in episodes), key=lambda e: e["number"])

    def gradient(self, episodes, advantage, W1, W2):
        """Games.gradient, shared out: the worker that played an episode computes its episode_gradient (with
        the weights it played with, still in shared memory), then each worker adds up its slice of all the
        episodes' gradients in episode order, as add_gradients does (element by element: the same bits).
        W1.grad and W2.grad are views of that shared sum, until the next batch; returns the loss."""
        mine = [{e["number"]: a for e, a in zip(episodes, advantage) if e["number"] % self.total
                 % self.workers == w} for w in range(self.workers)]
        losses = {number: loss for reply in self._gather("gradients", mine) for number, loss in reply.items()}
        order = [e["number"] for e in episodes]
        self._gather("sum", [(order, start, end) for start, end in self.slices])
        W1.grad, W2.grad = self.summed[:PIXELS * HIDDEN].reshape(PIXELS, HIDDEN), self.summed[PIXELS * HIDDEN:]
        return sum(losses[number] for number in order)

    def game_states(self):
        states = [None] * self.total
        for numbers, reply in zip(self.numbers, self._gather("state")):
            for g, s in zip(numbers, reply):
                states[g] = s
        return states

    def state(self):
        return state_arrays(self.game_states())

    def restore(self, states):
        self._gather("restore", [[states[g] for g in numbers] for numbers in self.numbers])

    def close(self):
        self.stop_flag[0] = 1.0                         # a worker still playing stops and reads "close"
        for connection, process in zip(self.connections, self.processes):
            try:
                connection.send(("close", None))
            except OSError:
                pass
            process.join(timeout=5)
        self.connections, self.processes = [], []


def _game_worker(connection, inherited, env_id, n, seed, numbers, W1, W2, gradients, stop_flag):
    """A worker process: owns the games `numbers` and plays their episodes when asked. It exits when the
    main process closes the pipe or dies. `gradients`: the shared rows (one per episode) and their sum."""
    for other in inherited:              # the main process's ends of the pipes: without closing them here,
        other.close()                    # this worker would never see the end of its own pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)        # Ctrl-C and SIGTERM are for the main process,
    signal.signal(signal.SIGTERM, signal.SIG_IGN)       # which saves; this worker then exits with it
    _keep_freed_memory()
    try:
        _serve(connection, Games(env_id, n, seed, numbers), ad.Tensor(W1), ad.Tensor(W2), gradients, stop_flag)
    except (EOFError, OSError):           # the main process went away: nothing left to do
        pass


def add_rows(rows, summed, order, start, end):
    """summed[start:end] = the sum of rows[order][start:end], added in that order (as add_gradients adds)."""
    part = summed[start:end]
    np.copyto(part, rows[order[0], start:end])
    for number in order[1:]:
        part += rows[number, start:end]


def _keep_freed_memory():
    """Ask glibc's malloc to keep the memory of freed large arrays for the next ones, instead of returning
    it to the system and mapping fresh pages (each then zeroed by the kernel when first touched, ~3 us per
    4 KB page on this machine): an episode's gradient allocates some 30 MB of temporaries. No effect
    elsewhere than glibc."""
    import ctypes
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)                       # M_MMAP_THRESHOLD: up to 1 GB from the heap
        libc.mallopt(-1, 1 << 31)                       # M_TRIM_THRESHOLD: keep up to 2 GB freed
    except (OSError, AttributeError):
        pass


class _EndedMessages:
    """A worker's `progress`: tells the main process how many of its episodes have ended."""

    def __init__(self, connection):
        self.connection = connection

    def update(self, done):
        self.connection.send(("ended", done))


def _serve(connection, games, W1, W2, gradients, stop_flag):
    (rows, summed), parent = gradients, os.getppid()
    played, idle_resets = {}, False                      # the last batch's episodes, by number

    def stop():                                          # asked by the main process, or orphaned
        return stop_flag[0] != 0 or os.getppid() != parent
    connection.send(("ready", None))
    while True:
        if idle_resets:                 # from the end of a whole batch to its boundary: reset for the next one
            idle_resets = not games.reset_ahead(connection.poll)
        while not connection.poll(1.0):
            if os.getppid() != parent:
                return                                   # orphaned: the main process died
        command, payload = connection.recv()
        if command == "play":
            games.spare += [e["x"].base for e in played.values()]   # last batch's frames: done with, reused
            played = {}
            n_episodes, filming, reporting = payload[0], payload[2], payload[3]
            film = PointFilm() if filming else None
            episodes = play_episodes(games, W1, W2, n_episodes, stop=stop, film=film, greedy=payload[1],
                                     progress=_EndedMessages(connection) if reporting else None)
            played, idle_resets = {e["number"]: e for e in episodes or []}, episodes is not None
            light = [{k: v for k, v in e.items() if k != "x"} for e in episodes or []]   # the frames stay here
            connection.send(("played", None if episodes is None else (light, vars(film) if filming else None)))
        elif command == "gradients":
            losses = {}
            for number, advantage in payload.items():
                row = rows[number]
                row.fill(0.0)                            # 0 + g: g's values (a -0.0 becomes +0.0)
                into = (row[:PIXELS * HIDDEN].reshape(PIXELS, HIDDEN), row[PIXELS * HIDDEN:])
                losses[number] = episode_gradient(played[number], advantage, W1.data, W2.data, into=into)[2]
            connection.send(("gradients", losses))
        elif command == "sum":
            add_rows(rows, summed, *payload)
            connection.send(("summed", None))
        elif command == "state":                         # the batch boundary (the main process's mark_boundary)
            connection.send(("state", games.game_states()))
            idle_resets = False                          # the next batch follows: its start resets the rest
        elif command == "restore":
            try:
                games.restore(payload)
                idle_resets = False
                connection.send(("restored", True))
            except ValueError as error:
                connection.send(("error", str(error)))
        else:
            games.close()
            connection.close()
            return


class Episodes:
    """play_episodes' bookkeeping: which games are playing, each one's previous frame and steps so far,
    the episodes that ended. Game g (of a batch of n) plays episodes g, g + n, ... while they are below
    n_episodes, then stays idle: every episode is played whole by the one policy, exactly 10 per batch
    however many games run at once, and each episode's number says which one it is. `games` may be one
    worker's share. `film.add(frame, reward)` receives game 0's first episode (each frame with the reward
    of the step taken from it); `progress.update(done)` hears of each finished episode."""

    room = 4096             # steps of frames an episode's array holds at first (it grows if need be)

    def __init__(self, games, n_episodes, film=None, progress=None):
        n = len(games)
        self.games, self.n_episodes, self.next = games, n_episodes, np.array(games.numbers)
        self.playing, self.first_frame = np.zeros(n, bool), np.zeros(n, bool)
        self.previous, self.steps = np.zeros((n, PIXELS), np.int8), [None] * n
        self.finished, self.film, self.progress = [], film, progress
        self.start(np.flatnonzero(self.next < n_episodes))
        self.frame_0 = games.frames[0] if film is not None and self.playing[0] else None   # before the step

    def start(self, ids):
        self.games.reset(ids)
        self.playing[ids], self.first_frame[ids] = True, True
        for g in ids:       # the frames go straight into one array per episode (a spare one, if the games have)
            frames = self.games.spare.pop() if self.games.spare else np.empty((self.room, PIXELS), np.int8)
            self.steps[g] = {"number": int(self.next[g]), "x": frames, "up": [], "rewards": []}
        self.next[ids] += self.games.total

    def add(self, ids, x, up, rewards, dones):
        """Record one step of the games `ids`; end the episodes that are done, start each game's next
        one if it has one. Returns the games whose episode ended."""
        for j, (g, action_up, reward) in enumerate(zip(ids.tolist(), up.tolist(), rewards.tolist())):
            steps = self.steps[g]
            t = len(steps["up"])
            if t == len(steps["x"]):                # a long episode: twice the room
                frames, steps["x"] = steps["x"], np.empty((2 * t, PIXELS), np.int8)
                steps["x"][:t] = frames
            steps["x"][t] = x[j]
            steps["up"].append(action_up)
            steps["rewards"].append(reward)
        if self.frame_0 is not None:                # ids is sorted: game 0 comes first
            self.film.add(self.frame_0, rewards[0])
            self.frame_0 = None if dones[0] else self.games.frames[0]
        if not dones.any():
            return ids[:0]
        ended = ids[dones]
        for g in ended:
            steps = self.steps[g]
            self.finished.append({"number": steps["number"], "x": steps["x"][:len(steps["up"])],
                                  "up": np.array(steps["up"]), "rewards": np.array(steps["rewards"])})
            self.steps[g] = None
        self.playing[ended] = False
        restart = ended[self.next[ended] < self.n_episodes]
        if len(restart):
            self.start(restart)
        if self.progress is not None:
            self.progress.update(len(self.finished))
        return ended


# ----------------------------------------------------------------------------
# Training state, bookkeeping, progress, Ctrl-C
# ----------------------------------------------------------------------------
def new_state(args):
    W1, W2 = init_policy(np.random.default_rng(args.seed))
    optimizer = InPlaceRMSProp([W1, W2], lr=LEARNING_RATE, decay=RMSPROP_DECAY, eps=RMSPROP_EPS)
    games = make_games(args.env_id, args.games, args.seed, args.workers)
    return {"W1": W1, "W2": W2, "optimizer": optimizer, "games": games,
            "config": config_of(args), "episode": 0, "updates": 0, "env_steps": 0,
            "running_reward": None, "seconds": 0.0, "session_start": time.perf_counter(),
            "history": {"score": [], "length": [], "hours": [], "running_reward": []}, "boundary": None}


def checked_step(state, loss):
    """The RMSProp step, between checks: a loss or a weight that is not finite raises Diverged (exit 3),
    and since this happens before any checkpoint of this update, the last checkpoint keeps finite weights."""
    when = f"update {state['updates'] + 1}"
    ad.runs.check_finite("the loss", loss, when)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):    # check_finite names a blow-up
        state["optimizer"].step()
    for p in (state["W1"], state["W2"]):
        ad.runs.check_finite(f"weight {p.name}", p, when)


def batch_gradient(episodes, advantage, W1, W2, chunk=4096):
    """The batch's gradient into W1.grad, W2.grad, in this process, episode by episode; returns the loss."""
    gradients = [episode_gradient(e, a, W1.data, W2.data, chunk) for e, a in zip(episodes, advantage)]
    return add_gradients(gradients, W1, W2)


def accumulate_gradient(episodes, W1, W2, standardise="batch", chunk=4096):
    """batch_gradient with the advantages computed here from the episodes' rewards (what the tests use)."""
    return batch_gradient(episodes, advantages(episodes, standardise), W1, W2, chunk)


class InPlaceRMSProp(ad.optim.RMSProp):
    """ad.optim.RMSProp's step, c <- decay c + (1 - decay) g^2;  W <- W - lr g / (sqrt(c) + eps), in place: the
    same operations in the same order (the same bits, tested in tests/test_pong_pg.py) into two scratch
    arrays per weight, instead of five new 10 MB arrays at every update while the workers wait."""

    def __init__(self, params, **options):
        super().__init__(params, **options)
        self.scratch = [(np.empty_like(p.data), np.empty_like(p.data)) for p in self.params]

    def _update(self, i, p, g):
        c, (a, b) = self.cache[i], self.scratch[i]
        np.multiply(1.0 - self.decay, g, out=a)
        a *= g                                  # (1 - decay) g g
        c *= self.decay
        c += a                                  # c = decay c + (1 - decay) g^2
        np.multiply(self.lr, g, out=a)
        np.sqrt(c, out=b)
        b += self.eps
        a /= b                                  # lr g / (sqrt(c) + eps)
        p.data -= a                             # (the engine notes this change of W, as with ad.optim's)

    def state_dict(self):
        """Copies: the cache arrays change in place at every step, and a saved state must not change with them."""
        return {k: np.array(v) for k, v in super().state_dict().items()}


def config_of(args):
    """The settings a checkpoint must agree with to be resumed."""
    return {"env_id": args.env_id, "games": args.games, "hidden": HIDDEN, "pixels": PIXELS,
            "batch_episodes": BATCH_EPISODES, "standardise": args.standardise}


def start_session(state, args, out):
    """This session's clock and progress line, and the first boundary: what a checkpoint saves if
    stopped during the first batch."""
    session = {"start": time.perf_counter(), "steps": 0, "seconds_before": state["seconds"],
               "checkpoint": os.path.join(out, "checkpoint.npz")}
    state["session_start"] = session["start"]
    session["progress"] = progress_for(state, args)
    if state["boundary"] is None:
        mark_boundary(state)
    return session


def finish_batch(state, args, out, session, episodes, batch_start):
    """After an update: the clock, the history, the boundary, a checkpoint when due, the progress line."""
    state["seconds"] = session["seconds_before"] + time.perf_counter() - session["start"]
    record_batch(state, episodes, state["seconds"] / 3600)
    mark_boundary(state)
    if state["updates"] % args.checkpoint_every == 0:
        save_outputs(state, args, out, session["checkpoint"])
    batch_seconds = time.perf_counter() - batch_start
    session["steps"] += report_batch(session["progress"], state, args, episodes, batch_seconds)


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


def progress_for(state, args):
    """Progress per batch; with --hours the ETA is the sooner of the episode target and the time budget."""
    deadline = None if args.hours is None else max(0.0, args.hours * 3600 - state["seconds"])
    progress = ad.runs.Progress(max(args.episodes - state["episode"], 1), label="episodes this session", every=0,
                                deadline=deadline)
    progress.first_episode = state["episode"]
    return progress


def report_batch(progress, state, args, episodes, batch_seconds):
    steps = sum(len(e["rewards"]) for e in episodes)
    due = args.checkpoint_every - state["updates"] % args.checkpoint_every
    progress.update(state["episode"] - progress.first_episode, episode=state["episode"],
                    running_reward=state["running_reward"],
                    batch_mean=float(np.mean([e["rewards"].sum() for e in episodes])),
                    steps_per_s=round(steps / batch_seconds),
                    next_checkpoint=f"{due} updates ~{ad.runs.format_seconds(due * batch_seconds)}")
    return steps


class StopRequests:
    """Within this block, Ctrl-C or SIGTERM asks the loop to stop at a safe point (calling the object says
    whether one came); a second Ctrl-C stops at once."""

    def __enter__(self):
        self.requested = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _handle(self, signum, frame):
        self.requested = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __call__(self):
        return self.requested is not None

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def end_session(state, args, out, checkpoint, session, stopped_by, log):
    """Save the outputs; after Ctrl-C or SIGTERM say where and how to continue. Returns the session's figures."""
    if stopped_by:
        log(f"{stopped_by}: saved the state after update {state['updates']} (episode {state['episode']}) "
            f"to {checkpoint}. Continue with:\n    {continue_command(args)}")
    save_outputs(state, args, out, checkpoint)
    seconds = time.perf_counter() - session["start"]
    return {"interrupted": bool(stopped_by), "session_seconds": seconds,
            "session_steps_per_s": session["steps"] / max(seconds, 1e-9)}


def continue_command(args):
    """The command that continues this run: its flags, the folder named, and --resume."""
    defaults = {"seed": 0, **SETTINGS, **(FULL if args.full else {})}
    words = ["python", "pong_pg.py"] + (["--full"] if args.full else [])
    for key, default in defaults.items():
        if key != "play_games" and getattr(args, key) != default:
            words += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    return " ".join(words + ["--out", shlex.quote(args.out), "--resume"])


# ----------------------------------------------------------------------------
# Checkpoints (.npz, never pickled): exact, atomic, validated array by array on load
# ----------------------------------------------------------------------------
CHECKPOINT_FORMAT = "pong_pg checkpoint v2"      # v2: each game has its own sampling stream


def mark_boundary(state):
    """Remember the games' states (emulators and sampling streams) at an update boundary: what a
    checkpoint saves, even if Ctrl-C arrives in the middle of the next batch."""
    state["boundary"] = state["games"].state()


def save_checkpoint(path, state):
    """Write the whole training state atomically; refuse (Diverged) weights or caches that are not finite."""
    optimizer = {f"rmsprop_{k}": v for k, v in state["optimizer"].state_dict().items()}
    for name, value in [("W1", state["W1"]), ("W2", state["W2"])] + list(optimizer.items()):
        ad.runs.check_finite(name, value, f"update {state['updates']} (no checkpoint written)")
    history = {f"history_{k}": np.array(v, dtype=float) for k, v in state["history"].items()}
    running = state["running_reward"]
    ad.nn.save_parameters(
        path, {"W1": state["W1"], "W2": state["W2"]},
        format=np.array(CHECKPOINT_FORMAT), config=np.array(json.dumps(state["config"])),
        episode=np.array(state["episode"]), updates=np.array(state["updates"]),
        env_steps=np.array(state["env_steps"]), seconds=np.array(state["seconds"]),
        running_reward=np.array(np.nan if running is None else running),
        **state["boundary"], **optimizer, **history)


def _text(arrays, key, path):
    value = arrays.get(key)
    if value is None or value.dtype.kind != "U" or value.shape != ():
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} is missing or not a text)")
    return str(value)


def _json(arrays, key, path, kind):
    try:
        value = json.loads(_text(arrays, key, path))
    except json.JSONDecodeError:
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} is not JSON)") from None
    if not isinstance(value, kind):
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} is not a JSON {kind.__name__})")
    return value


def _loads(text):
    """Each game's RNG state is stored as JSON text inside the JSON list; None if it is not."""
    try:
        return json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        return None


def _rng_state(value, where, path):
    """A NumPy PCG64 state, checked by loading it into a scratch generator."""
    try:
        np.random.default_rng().bit_generator.state = value
    except (TypeError, ValueError, KeyError):
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({where} is not a NumPy random state)") from None
    return value


def _number(arrays, key, path, kind="f", minimum=None, above=None, allow_nan=False):
    value = arrays.get(key)
    if value is None or value.shape != () or value.dtype.kind not in ("iu" if kind == "i" else "fiu"):
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} is missing or not a {'whole ' if kind == 'i' else ''}number)")
    number = value.item()
    if (not allow_nan and not math.isfinite(number)) or (minimum is not None and number < minimum) \
            or (above is not None and not number > above) or (math.isinf(number)):
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} is {number}, out of range)")
    return number


def read_checkpoint(path, config):
    """Every array of the checkpoint at `path`, validated (dtype, shape, finite, range) against this
    run's `config`; any problem is one BadInput naming the file and the array. Nothing is changed."""
    arrays = ad.runs.load_arrays(path, what="pong_pg checkpoint")
    if str(arrays.get("format", "")) == "pong_pg checkpoint v1":
        raise ad.runs.BadInput(f"{path}: a checkpoint of an older pong_pg.py (one sampling stream for all games), "
                               f"which this version cannot continue: start a new run, or resume it with that version")
    if str(arrays.get("format", "")) != CHECKPOINT_FORMAT:
        raise ad.runs.BadInput(f"{path}: not a {CHECKPOINT_FORMAT!r} file (keys: {sorted(arrays)[:6]}...)")
    saved = _json(arrays, "config", path, dict)
    for key, value in config.items():
        if saved.get(key) != value:
            raise ad.runs.BadInput(f"{path}: checkpoint was made with {key}={saved.get(key)!r}, this run has "
                                   f"{key}={value!r}; use the same settings or a new --out folder")
    episode = _number(arrays, "episode", path, "i", minimum=0)
    checked = {"path": path, "arrays": arrays, "episode": episode,
               "updates": _number(arrays, "updates", path, "i", minimum=0),
               "env_steps": _number(arrays, "env_steps", path, "i", minimum=0),
               "seconds": _number(arrays, "seconds", path, minimum=0),
               "steps": _number(arrays, "rmsprop_steps", path, "i", minimum=0),
               "lr": _number(arrays, "rmsprop_lr", path, above=0),
               "running_reward": _number(arrays, "running_reward", path, allow_nan=episode == 0)}
    shapes = {"W1": (PIXELS, HIDDEN), "W2": (HIDDEN,), "rmsprop_cache_0": (PIXELS, HIDDEN),
              "rmsprop_cache_1": (HIDDEN,), "games_ale_sizes": (config["games"],), "games_ale": (None,),
              **{f"history_{k}": (episode,) for k in ("score", "length", "hours", "running_reward")}}
    for key, shape in shapes.items():
        if key not in arrays:
            raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} is missing)")
        ad.runs.check_array(arrays[key], f"{path}: {key!r}", shape, minimum=0 if "cache" in key else None)
    sizes, blob = arrays["games_ale_sizes"], arrays["games_ale"]
    if sizes.dtype.kind not in "iu" or blob.dtype != np.uint8 or sizes.min() <= 0 or sizes.sum() != len(blob):
        raise ad.runs.BadInput(f"{path}: damaged checkpoint (the games' emulator states do not add up)")
    rngs = {key: _json(arrays, key, path, list) for key in ("games_np_random", "games_sampling")}
    for key, states in rngs.items():
        if len(states) != config["games"]:
            raise ad.runs.BadInput(f"{path}: damaged checkpoint ({key!r} holds {len(states)} games, "
                                   f"expected {config['games']})")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    checked["games"] = [(blob[offsets[g]:offsets[g + 1]], json.dumps(_rng_state(_loads(r), f"game {g}'s RNG", path)),
                         json.dumps(_rng_state(_loads(q), f"game {g}'s sampling stream", path)))
                        for g, (r, q) in enumerate(zip(rngs["games_np_random"], rngs["games_sampling"]))]
    return checked


def apply_checkpoint(checked, state):
    """Put a checkpoint read by read_checkpoint into a fresh `state` (games included)."""
    arrays, path = checked["arrays"], checked["path"]
    try:
        state["games"].restore(checked["games"])
    except ValueError as error:
        raise ad.runs.BadInput(f"{path}: damaged checkpoint ({error})") from None
    state["W1"].data, state["W2"].data = arrays["W1"].astype(float), arrays["W2"].astype(float)
    state["optimizer"].load_state_dict({"steps": checked["steps"], "lr": checked["lr"],
                                        "cache_0": arrays["rmsprop_cache_0"], "cache_1": arrays["rmsprop_cache_1"]})
    for key in ("episode", "updates", "env_steps", "seconds"):
        state[key] = checked[key]
    running = checked["running_reward"]
    state["running_reward"] = None if math.isnan(running) else float(running)
    state["history"] = {k: arrays[f"history_{k}"].tolist() for k in state["history"]}
    mark_boundary(state)
    return state


def load_checkpoint(path, state):
    """read_checkpoint, then apply_checkpoint: `state` continues where the checkpoint left off."""
    return apply_checkpoint(read_checkpoint(path, state["config"]), state)


def read_checkpoint_for(args, out):
    """With --resume: the validated checkpoint in `out`. Without: make sure no checkpoint gets replaced."""
    path = os.path.join(out, "checkpoint.npz")
    if not args.resume:
        if not args.overwrite:
            ad.runs.refuse_overwrite(path, "a training checkpoint",
                                     "continue it with --resume, replace it with --overwrite, or choose another --out")
        return None
    checked = read_checkpoint(path, config_of(args))
    if checked["episode"] >= args.episodes or (args.hours is not None and checked["seconds"] >= args.hours * 3600):
        raise ad.runs.BadInput(f"{path} is at episode {checked['episode']} ({checked['seconds'] / 3600:.2f} h), "
                               f"already past --episodes {args.episodes}" + (f" / --hours {args.hours}" if args.hours else "")
                               + ": nothing to train (add --full, or a larger --episodes / --hours)")
    return checked


def load_weights(path):
    """W1, W2 from a checkpoint or a weights-only .npz (e.g. float16), checked (shape, finite)."""
    arrays = ad.runs.load_arrays(path, {"W1": (PIXELS, HIDDEN), "W2": (HIDDEN,)}, what="pong_pg weights file")
    return ad.nn.parameter(arrays["W1"], "W1"), ad.nn.parameter(arrays["W2"], "W2")


# ----------------------------------------------------------------------------
# Outputs: checkpoint, weights, curve, figures, metrics
# ----------------------------------------------------------------------------
def save_outputs(state, args, out, checkpoint):
    """Checkpoint, learning curve data (CSV, rewritten whole so it always matches the checkpoint),
    float16 weights (params.npz, what --play reads), the two figures, metrics.json."""
    save_checkpoint(checkpoint, state)
    ad.nn.save_parameters(os.path.join(out, "params.npz"),
                          {"W1": state["W1"].data.astype(np.float16), "W2": state["W2"].data.astype(np.float16)})
    h = state["history"]
    table = np.column_stack([np.arange(1, len(h["score"]) + 1), h["hours"], h["score"], h["length"],
                             h["running_reward"]]) if h["score"] else np.zeros((0, 5))
    temporary = os.path.join(out, ".curve.csv.tmp")
    np.savetxt(temporary, table, delimiter=",", fmt=["%d", "%.5f", "%g", "%d", "%.4f"],
               header="episode,hours,score,steps,running_reward", comments="")
    os.replace(temporary, os.path.join(out, "curve.csv"))
    if h["score"]:
        plot_learning_curve(h, out)
    plot_neurons(state["W1"].data, state["W2"].data, out)
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


def print_start(args, state, resumed):
    if resumed is not None:
        print(f"resumed from {resumed['path']}: episode {state['episode']}, update {state['updates']}, "
              f"running reward {state['running_reward']}")
    print(f"{args.env_id}: {args.games} games at once, {BATCH_EPISODES} episodes per update, "
          f"training to episode {args.episodes}" + (f" or {args.hours} h" if args.hours else ""))


def report(args, state, session, demo, film, resumed, out, started):
    """The demo game's GIF, metrics.json, the results table; after a lesson run, what to try next."""
    if film.kept:
        ad.runs.save_gif(os.path.join(out, "pong_pg_game.gif"), film.kept[::2], fps=15)
    metrics = {**run_metrics(state), "steps_per_s_this_session": session["session_steps_per_s"],
               "demo_game_score": demo[0][0] - demo[0][1] if demo else None}
    ad.runs.write_metrics(out, metrics, args, started)
    print_results(state, session, metrics, demo, out)
    if not args.full and resumed is None:
        print_next_steps(out)
    return metrics


def print_results(state, session, metrics, demo, out):
    h = state["history"]
    first_last = (f"{metrics['mean_score_first_episodes']:.2f} / {metrics['mean_score_last_episodes']:.2f}"
                  if h["score"] else "-")
    ad.runs.print_table(["", "value"], [
        ["episodes / updates", f"{state['episode']} / {state['updates']}"],
        ["environment steps", f"{state['env_steps']:,}"],
        ["training time", ad.runs.format_seconds(state["seconds"])],
        ["env steps/s (this session, learning included)", f"{session['session_steps_per_s']:.0f}"],
        ["running reward", f"{state['running_reward']:.2f}" if h["score"] else "-"],
        [f"mean score, first / last {metrics['compared_episodes']} episodes", first_last],
        ["demo game vs built-in AI", f"{demo[0][0]}-{demo[0][1]}" if demo else "skipped"],
    ], title="results")
    print(f"\nwrote {out}/: metrics.json, checkpoint.npz, params.npz, curve.csv, pong_pg_curve.png, "
          f"pong_pg_neurons.png" + (", pong_pg_game.gif" if demo else ""))


def print_next_steps(out):
    print("\nThis was a short lesson run; the policy is still close to random (the original needed "
          "~8,000 episodes).\nStart a real run (hours; Ctrl-C saves, --resume continues):\n"
          "    python pong_pg.py --full\n    python pong_pg.py --full --resume\n"
          f"Watch this checkpoint play:\n    python pong_pg.py --play {shlex.quote(out)}/checkpoint.npz\n"
          "Watch the agent of our long run play:\n    python pong_pg.py --play")


def plot_learning_curve(history, out):
    plt = ad.runs.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    episodes = np.arange(1, len(history["score"]) + 1)
    for ax, xs, label in ((axes[0], episodes, "episodes"),
                          (axes[1], np.array(history["hours"]), "hours of training (wall clock, 2 cores)")):
        ax.plot(xs, history["score"], ".", ms=2, color="0.7", label="episode score")
        ax.plot(xs, history["running_reward"], color="C0", label="running reward (EMA 0.99)")
        ax.axhline(-15, color="C3", ls=":", lw=1, label="bar: -15")
        ax.axhline(0, color="C2", ls="--", lw=1, label="even with the built-in AI")
        ax.set_xlabel(label)
        ax.set_ylabel("points won - points lost")
        ax.set_title(f"score against {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-21.5, 21.5)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle("Pong from pixels, policy gradients (ALE Pong)", fontsize=10)
    ad.runs.save_figure(fig, out, "pong_pg_curve.png", dpi=100)


def plot_neurons(W1, W2, out, count=24, columns=8):
    """The original's picture, made readable: the input weights of the `count` hidden units with the
    largest say in the output (|W2_k| times the norm of W1's column k), each as an 80x80 image."""
    plt = ad.runs.pyplot()
    influence = np.abs(W2) * np.linalg.norm(W1, axis=0)
    units = np.argsort(-influence)[:count]
    rows = int(math.ceil(count / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.5, rows * 1.5 + 0.8))
    for ax, k in zip(axes.ravel(), units):
        image = W1[:, k].reshape(80, 80)
        limit = np.abs(image).max() or 1.0       # each tile on its own scale: the strongest paths stand out
        ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"unit {k}: W2 {W2[k]:+.2f}", fontsize=7)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"What the first layer looks for: the {count} most influential of {HIDDEN} hidden units",
                 fontsize=10)
    fig.text(0.5, 0.01, "Each tile: one unit's 6,400 input weights as the 80x80 difference frame (red +, blue -, "
             "each on its own scale). Units ranked by |W2| x |W1 column|; W2 > 0 votes UP.",
             ha="center", fontsize=7)
    ad.runs.save_figure(fig, out, "pong_pg_neurons.png", dpi=90)


# ----------------------------------------------------------------------------
# --play: the trained agent against the built-in AI, beside the argmax policy and the baseline
# ----------------------------------------------------------------------------
class PointFilm:
    """Frames of game 0's current point; keeps the first point the agent wins (else the last one seen)."""

    def __init__(self):
        self.current, self.kept, self.won = [], [], False

    def add(self, frame, reward):
        if self.won:
            return
        self.current.append(frame)
        if reward != 0:
            self.kept, self.current, self.won = self.current, [], reward > 0


def summarise_games(results):
    """Games won, mean score (points won - points lost) with its standard error, fraction of points won."""
    scores = [won - lost for won, lost in results]
    mean, se = ad.runs.mean_and_se(scores)
    points_won, points = sum(w for w, _ in results), sum(w + l for w, l in results)
    return {"games": len(results), "games_won": sum(s > 0 for s in scores), "mean_score": mean,
            "mean_score_se": se, "points_won_fraction": points_won / max(points, 1), "scores": scores}


def play_command(args, out, started):
    W1, W2 = load_weights(args.play)
    film, rows, summaries = PointFilm(), [], {}
    for name, weights, greedy in (("sampling (as trained)", (W1, W2), False), ("argmax", (W1, W2), True),
                                  ("screen-blind, P(UP) = 1/2", screen_blind_policy(), False)):
        results = play_games(args.env_id, *weights, args.play_games, args.seed, workers=args.workers,
                             greedy=greedy, film=film if not greedy and weights[0] is W1 else None,
                             progress=ad.runs.Progress(args.play_games, label=f"games, {name}", every=10))
        s = summaries[name] = summarise_games(results)
        rows.append([name, f"{s['games_won']} of {s['games']}", f"{s['mean_score']:+.2f} ± {s['mean_score_se']:.2f}",
                     f"{100 * s['points_won_fraction']:.0f}%"])
    ad.runs.print_table(["policy", "games won", "mean score ± SE", "points won"], rows,
                        title=f"{args.env_id}: {args.play_games} games per policy against the built-in AI "
                              f"(the same game seeds for each)")
    gif = os.path.join(out, "pong_pg_play.gif")
    if film.kept:
        ad.runs.save_gif(gif, film.kept[::2], fps=15)
    plot_neurons(W1.data, W2.data, out)
    ad.runs.write_metrics(out, {"weights": args.play, "policies": summaries}, args, started, name="play.json")
    print(f"wrote {out}/: play.json, pong_pg_play.gif (one whole point{', won' if film.won else ''}), "
          f"pong_pg_neurons.png")
    return summaries


# ----------------------------------------------------------------------------
# --curve: the figures of a learning curve (e.g. the committed long run's), from its curve.csv
# ----------------------------------------------------------------------------
def curve_command(args, out, started):
    """Read a curve.csv this script wrote; write OUT/curve_summary.json with when the running reward first
    reached -15, -10 and 0 and how the run ended. This is how the README's long-run figures are made."""
    try:
        table = np.loadtxt(args.curve, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as error:
        raise ad.runs.BadInput(f"{args.curve}: not a curve.csv of this script ({type(error).__name__})") from None
    if table.shape[1] != 5 or not len(table) or not np.all(np.isfinite(table)):
        raise ad.runs.BadInput(f"{args.curve}: not a curve.csv of this script (expected 5 finite columns)")
    episode, hours, score, steps, running = table.T
    summary = {"curve": args.curve, "episodes": int(episode[-1]), "hours": float(hours[-1]),
               "env_steps": int(steps.sum()), "running_reward": float(running[-1]),
               "best_running_reward": float(running.max()), "mean_score_last_100_episodes": float(score[-100:].mean())}
    batches = steps[:len(steps) // BATCH_EPISODES * BATCH_EPISODES].reshape(-1, BATCH_EPISODES)
    # a game whose episode ended waits for the batch's longest one: the share of game-steps actually played
    summary["game_slots_busy"] = float(batches.sum() / (BATCH_EPISODES * batches.max(axis=1)).sum()) if len(batches) else None
    for level in (-15, -10, 0):
        first = ad.runs.first_reaching(range(len(running)), running, level)
        summary[f"first_running_reward_at_least_{level}"] = None if first is None else {
            "episode": int(episode[first]), "hours": float(hours[first]), "env_steps": int(steps[:first + 1].sum())}
    ad.runs.write_metrics(out, summary, args, started, name="curve_summary.json")
    print(json.dumps(summary, indent=1))
    return summary


# ----------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------
HELP = {"env_id": "a Pong id of ale-py; Pong-v0 is the original's (random frameskip 2-4)",
        "standardise": "standardise returns over the 'batch' of 10 episodes, or per 'episode' (the original)",
        "episodes": "train until this many episodes in total",
        "hours": "also stop after this many hours of training in total; None is no time limit",
        "games": f"games played at once (1..{BATCH_EPISODES}); game g plays episodes g, g + games, ... of each batch",
        "workers": "processes that play the games (0: all in this one); results do not depend on it",
        "checkpoint_every": "updates between checkpoints",
        "play_games": "games per policy for --play"}
TRAINED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "docs", "pong_pg_weights_float16.npz")


def pong_env_id(text):
    """An argparse type: a Pong environment that ale-py registers (this preprocessing and these actions
    are Pong's)."""
    import ale_py
    import gymnasium
    gymnasium.register_envs(ale_py)
    try:
        spec = gymnasium.spec(text)
    except Exception:
        raise argparse.ArgumentTypeError(f"{text!r} is not a Gymnasium environment id (try ALE/Pong-v5 or "
                                         f"Pong-v0)") from None
    if spec.kwargs.get("game") != "pong":
        raise argparse.ArgumentTypeError(f"{text!r} is not Pong; this script's preprocessing and UP/DOWN "
                                         f"actions are Pong's (try ALE/Pong-v5 or Pong-v0)")
    return text


def standardise_choice(text):
    if text not in ("batch", "episode"):
        raise argparse.ArgumentTypeError(f"expected 'batch' or 'episode', got {text!r}")
    return text


def extra_flags(parser):
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    parser.add_argument("--overwrite", action="store_true", help="start a new run over OUT/checkpoint.npz")
    parser.add_argument("--play", nargs="?", const=TRAINED_WEIGHTS, metavar="WEIGHTS",
                        help="play the built-in AI with these weights (a checkpoint.npz or params.npz; "
                             "default: our long run's, docs/pong_pg_weights_float16.npz); writes OUT/play.json")
    parser.add_argument("--curve", metavar="CSV", help="summarise a curve.csv (e.g. docs/pong_pg_curve.csv) "
                                                        "into OUT/curve_summary.json, without training")


def parse_arguments(argv=None):
    args = ad.runs.command_line(__doc__, "pong_pg", SETTINGS, FULL, HELP, argv=argv, add_arguments=extra_flags,
                                types={"env_id": pong_env_id, "standardise": standardise_choice,
                                       "hours": ad.runs.number(exclusive_minimum=0.0),
                                       "games": ad.runs.whole(1, BATCH_EPISODES), "workers": ad.runs.whole(0, 16),
                                       "episodes": ad.runs.whole(1, 10**7), "checkpoint_every": ad.runs.whole(1),
                                       "play_games": ad.runs.whole(1, 10**4)})
    if args.play and (args.resume or args.overwrite):
        raise ad.runs.BadInput("--play only plays (it writes play.json); drop --resume / --overwrite")
    if args.resume and args.overwrite:
        raise ad.runs.BadInput("--resume continues the checkpoint and --overwrite replaces it: choose one")
    return args


def build_parser():
    """For tests and tools: build_parser().parse_args(argv) gives the settings a run with argv uses."""
    import types
    return types.SimpleNamespace(parse_args=parse_arguments)


if __name__ == "__main__":
    ad.runs.run(main, needs=(*ad.runs.NEEDS, "ale_py"))
