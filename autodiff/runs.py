"""What every script shares: its command line, run folder, progress lines, results and input checks.

Nothing here is about automatic differentiation; it lives in the package so that the six scripts import
one copy of it. A script uses it like this:

    SETTINGS = {"seed": 0, "episodes": 10, "lr": 0.01}           # the lesson run
    FULL = {"episodes": 100}                                    # what --full changes
    HELP = {"episodes": "training episodes", "lr": "Adam step size"}

    def main(argv=None):
        args = ad.runs.command_line(__doc__, "cartpole_dp", SETTINGS, FULL, HELP, argv=argv)
        out = ad.runs.prepare_out(args.out)                     # usable, or a one-line error, before any work
        streams = ad.runs.random_streams(args.seed, "init", "train")
        progress = ad.runs.Progress(total=args.episodes, label="train")
        ...
        progress.update(episode + 1, loss=loss)                 # prints elapsed and ETA
        ad.runs.check_finite("loss", loss, f"episode {episode}")  # a diverged run stops, named
        ad.runs.write_metrics(out, metrics, args, started)        # atomic, with the command and versions

    if __name__ == "__main__":
        ad.runs.run(main)                                       # bad input -> one line on stderr, exit 2

Errors meant for the user are `BadInput` (exit 2) and `Diverged` (exit 3): `run` prints them as one line,
`prog: error: ...`, never as a traceback.
"""

import argparse
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib

import numpy as np

SEED_LIMIT = 2**32     # seeds are stored in .npz files as int64 and fed to SeedSequence; this keeps both exact


# ----------------------------------------------------------------------------
# Errors for the user (one line each)
# ----------------------------------------------------------------------------
class BadInput(ValueError):
    """A file, folder or flag the user gave is unusable. `run` prints it as one line and exits 2."""


class MissingFile(BadInput, FileNotFoundError):
    """A file the user named does not exist (a BadInput, and a FileNotFoundError for callers that catch that)."""


class Diverged(Exception):
    """Training produced a non-finite number. `run` prints it as one line and exits 3."""


def check_finite(name, value, when=""):
    """Raise Diverged if `value` (a number, array or Tensor) holds nan or inf; `when` says where in the run."""
    data = getattr(value, "data", value)
    array = np.asarray(data)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
        where = f" at {when}" if when else ""
        raise Diverged(f"{name} is not finite{where} (training diverged; try a smaller learning rate)")
    return value


# what the scripts need at run time besides NumPy (requirements.txt); pong_pg.py adds ale_py
NEEDS = ("matplotlib", "gymnasium")


def run(main, argv=None, prog=None, needs=NEEDS):
    """Call main(argv) and turn the user's errors into one line on stderr and a non-zero exit:
    BadInput and MemoryError -> 2, Diverged -> 3, Ctrl-C -> 130. Anything else is a bug and keeps its traceback.
    A package in `needs` that is not installed stops the run before any work (exit 2), not at the figures an hour
    later, when the training would be lost."""
    prog = prog or os.path.basename(sys.argv[0] or "script")
    missing = [name for name in needs if importlib.util.find_spec(name) is None]
    if missing:
        _die(prog, f"{', '.join(missing)} not installed in this Python ({sys.executable}); "
                   f"install the requirements first: pip install -r requirements.txt", 2)
    try:
        main(argv)
    except BadInput as error:
        _die(prog, error, 2)
    except Diverged as error:
        _die(prog, error, 3)
    except MemoryError:
        _die(prog, "out of memory: a size on the command line is too large for this machine", 2)
    except KeyboardInterrupt:
        _die(prog, "interrupted", 130)


def _die(prog, message, code):
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


# ----------------------------------------------------------------------------
# Command line: the settings dict becomes the flags
# ----------------------------------------------------------------------------
class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (`prog: error: ...`), not the usage block and then the error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _whole_number(text, minimum, maximum=None):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and <= {maximum:,}" if maximum is not None else ""
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}{upper}, got {value}")
    return value


def whole(minimum=0, maximum=None):
    """An argparse type: a whole number in [minimum, maximum]."""
    def parse(text):
        return _whole_number(text, minimum, maximum)
    parse.__name__ = "whole number"
    return parse


def number(minimum=None, maximum=None, exclusive_minimum=None):
    """An argparse type: a finite number in the given range."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = (not math.isfinite(value) or (minimum is not None and value < minimum)
               or (maximum is not None and value > maximum)
               or (exclusive_minimum is not None and value <= exclusive_minimum))
        if bad:
            parts = [f"> {exclusive_minimum}" if exclusive_minimum is not None else "",
                     f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else ""]
            wanted = " and ".join(p for p in parts if p)
            raise argparse.ArgumentTypeError(f"expected a finite number{' ' + wanted if wanted else ''}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def positive_int(text):
    return _whole_number(text, 1)


def one_of(*choices):
    """An argparse type: one of the given words."""
    def parse(text):
        if text not in choices:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text
    parse.__name__ = "choice"
    return parse


positive_float = number(exclusive_minimum=0.0)
seed_type = whole(0, SEED_LIMIT - 1)


def _type_for(default, size_limit):
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return whole(0, size_limit)
    if isinstance(default, float):
        return number()
    return str


def command_line(doc, name, settings, full=None, help=None, types=None, argv=None, size_limit=10**9,
                 add_arguments=None, command=None):
    """Build the command line from the lesson's SETTINGS dict and parse argv.

    Every key becomes a flag (`episodes` -> `--episodes`); its type comes from the default (whole numbers
    are bounded by `size_limit`, so a typo like 1e11 is refused instead of exhausting memory), or from
    `types[key]`. A bool default makes an on/off switch (`--flag` / `--no-flag`). `full` is the --full
    overlay: with --full its values replace the defaults, but a flag given explicitly still wins.
    --seed, --full and --out are always there. The --help text shows the value each mode really uses.
    `add_arguments(parser)` may add flags that are not settings (e.g. --play, --resume). `command` is the
    command to record in the results when it is not `python <name>.py ARGV` (a study that calls main).
    Returns an argparse.Namespace."""
    full, help, types = dict(full or {}), dict(help or {}), dict(types or {})
    settings = {"seed": 0, **settings}
    unknown = set(full) - set(settings)
    if unknown:
        raise ValueError(f"--full overlay names settings that do not exist: {sorted(unknown)}")
    first_line = (doc or name).strip().splitlines()[0]
    p = OneLineParser(prog=f"{name}.py", description=first_line)
    p.add_argument("--full", action="store_true", help="the long run instead of the one-minute lesson run")
    p.add_argument("--out", default=None, help=f"output folder (default runs/{name}; runs/{name}_full with --full)")
    help.setdefault("seed", "random seed; the same seed gives the same numbers")
    types.setdefault("seed", seed_type)
    for key, default in settings.items():
        flag = "--" + key.replace("_", "-")
        shown = f"default {default!r}" + (f"; --full: {full[key]!r}" if key in full else "")
        text = f"{help.get(key, key.replace('_', ' '))} ({shown})"
        if isinstance(default, bool):
            p.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = types.get(key) or _type_for(default, size_limit)
            p.add_argument(flag, dest=key, type=kind, default=None, help=text, metavar=key.upper())
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(argv)
    for key, default in settings.items():
        if getattr(args, key) is None:
            setattr(args, key, full[key] if args.full and key in full else default)
    if args.out is None:
        args.out = os.path.join("runs", name + ("_full" if args.full else ""))
    args.command = command or " ".join(["python", f"{name}.py", *(sys.argv[1:] if argv is None else list(argv))])
    args.provenance_at_start = provenance(args)     # the code that ran, even if the tree changes during a long run
    return args


# ----------------------------------------------------------------------------
# The output folder: checked before any work
# ----------------------------------------------------------------------------
def prepare_out(path):
    """Make sure `path` is a folder we can write to, creating it (and its parents) if needed.
    Anything else is a BadInput naming the folder, raised within a second, before any training."""
    if path is None or str(path).strip() == "":
        raise BadInput("--out is empty: give a folder for the results")
    path = str(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"--out {path}: exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise BadInput(f"--out {path}: cannot write there ({reason})") from None
    return path


def refuse_overwrite(path, what, how_to_allow):
    """BadInput if `path` exists: a new run must not replace `what` (e.g. a long run's checkpoint) unless asked."""
    if os.path.exists(path):
        raise BadInput(f"{path} already holds {what}; {how_to_allow}")


# ----------------------------------------------------------------------------
# Random streams
# ----------------------------------------------------------------------------
def random_streams(seed, *names):
    """One independent np.random.Generator per name, all from one seed.

    Each stream is keyed by its name (not by its position), so adding a stream never changes another:
    `random_streams(0, "init", "train")["train"]` is the same as `random_streams(0, "train")["train"]`."""
    if not 0 <= int(seed) < SEED_LIMIT:
        raise BadInput(f"seed {seed}: expected 0 <= seed < 2**32")
    return {name: np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(name.encode()),)))
            for name in names}


# ----------------------------------------------------------------------------
# Progress lines
# ----------------------------------------------------------------------------
def format_seconds(seconds):
    if not math.isfinite(seconds):
        return "?"
    if seconds < 90:
        return f"{seconds:.1f}s"
    if seconds < 5400:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.2f}h"


class Progress:
    """Prints `label k/total | key=value ... | elapsed | eta` at most every `every` seconds (and always at
    the last step). With `deadline` (seconds from now), the ETA is the sooner of the two ends."""

    def __init__(self, total, label="", every=2.0, stream=None, deadline=None):
        self.total, self.label, self.every, self.deadline = total, label, every, deadline
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.last_print = -math.inf

    def elapsed(self):
        return time.perf_counter() - self.started

    def eta(self, done):
        elapsed = time.perf_counter() - self.started
        eta = elapsed / done * (self.total - done) if done > 0 else math.inf
        if self.deadline is not None:
            eta = min(eta, max(0.0, self.deadline - elapsed))
        return eta

    def update(self, done, force=False, **fields):
        now = time.perf_counter()
        if not force and done < self.total and now - self.last_print < self.every:
            return
        self.last_print = now
        parts = [f"{self.label} {done}/{self.total}".strip()]
        parts += [f"{k}={_format_value(v)}" for k, v in fields.items()]
        parts += [f"elapsed {format_seconds(now - self.started)}", f"eta {format_seconds(self.eta(done))}"]
        print(" | ".join(parts), file=self.stream, flush=True)


def _format_value(v):
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------
# Summaries and tables
# ----------------------------------------------------------------------------
def mean_and_se(values):
    """(mean, standard error of the mean with ddof=1) of a 1-d sample; se is nan for one value."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return math.nan, math.nan
    se = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else math.nan
    return float(values.mean()), float(se)


def paired_difference(a, b):
    """Mean and standard error of a - b over the same starts or tasks (paired): {"mean", "se", "n"}."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} and {b.shape} are not the same starts")
    mean, se = mean_and_se(a - b)
    return {"mean": mean, "se": se, "n": int(a.size)}


def first_reaching(xs, ys, level):
    """The first x whose y is >= level (e.g. the step count at which a learning curve reaches a bar), or None."""
    return next((x for x, y in zip(xs, ys) if y >= level), None)


def format_cell(value):
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)):
        return f"{value:,}"
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"


def print_table(header, rows, title=None):
    """Print rows (lists of cells) under a header, right-aligned columns; numbers get 3 significant digits
    unless already formatted as strings."""
    cells = [[format_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    if title:
        print(f"\n{title}")
    print("  ".join(str(h).rjust(w) for h, w in zip(header, widths)))
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


# ----------------------------------------------------------------------------
# Results: metrics.json, with what is needed to trace every figure
# ----------------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def cpu_description():
    """The CPU's model name and whether it has AVX-512 (OpenBLAS picks its kernels by it): another CPU may round
    float products differently in the last bit, and a long training run amplifies that."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.machine())
    return f"{model}, {'with' if ' avx512f' in info else 'without'} AVX-512"


def provenance(args=None):
    """What is needed to reproduce a figure: the command, the commit, the library versions, the machine."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("gymnasium", "ale_py", "matplotlib"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", None)
    command = getattr(args, "command", None) if args is not None and not isinstance(args, dict) else None
    return {"command": command or " ".join(["python", *sys.argv]), "commit": commit, "uncommitted_changes": dirty,
            "versions": versions, "cores": os.cpu_count(), "cpu": cpu_description(),
            "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def write_json(path, record):
    """Write JSON atomically: to a temporary file beside it, then rename (a crash never leaves half a file)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(_jsonable(record), f, indent=2)
    os.replace(temporary, path)
    return path


def write_metrics(out, metrics, args, started, name="metrics.json"):
    """Write out/metrics.json: the measured figures, the arguments, the wall time and the provenance.
    Copy it to docs/results/<script>.json when the README quotes it."""
    arguments = dict(vars(args) if not isinstance(args, dict) else args)
    at_start = arguments.pop("provenance_at_start", None)
    record = {"metrics": metrics, "args": arguments, "wall_time_s": round(time.perf_counter() - started, 2),
              "provenance": at_start or provenance(args), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    return write_json(os.path.join(out, name), record)


# ----------------------------------------------------------------------------
# Loading files the user gives: one-line errors naming the file
# ----------------------------------------------------------------------------
def load_arrays(path, expected=None, what="parameter file"):
    """Read an .npz of numeric arrays, never unpickling; every problem is a BadInput naming the file.

    `expected` maps a name to a shape (a tuple, with None for any length) or to None (any shape): those
    arrays must be present, real floating point or integer, finite and of that shape. Returns {name: array}."""
    path = str(path)
    if not os.path.exists(path):
        raise MissingFile(f"{path}: no such {what}")
    if os.path.isdir(path):
        raise BadInput(f"{path}: is a folder, not a {what} (.npz)")
    if not zipfile.is_zipfile(path):
        raise BadInput(f"{path}: not a readable .npz archive of arrays (empty, truncated or another kind of file)")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for member in archive.files:
                try:
                    value = archive[member]
                except ValueError:
                    raise BadInput(f"{path}: {member!r} is a pickled object, which is never loaded") from None
                if not isinstance(value, np.ndarray):
                    raise BadInput(f"{path}: member {member!r} is not a NumPy array")
                arrays[member] = value
    except BadInput:
        raise
    except FileNotFoundError:
        raise MissingFile(f"{path}: no such {what}") from None
    except Exception as error:  # zipfile.BadZipFile, a damaged member, OSError, ...
        raise BadInput(f"{path}: not a readable .npz archive of arrays ({type(error).__name__})") from None
    for key, shape in (expected or {}).items():
        if key not in arrays:
            raise BadInput(f"{path}: missing {key!r}, not a {what} of this script (it has {sorted(arrays)[:8]})")
        check_array(arrays[key], f"{path}: {key!r}", shape)
    return arrays


def check_array(value, name, shape=None, minimum=None):
    """BadInput unless `value` is a finite real (float or integer) array of `shape` (None entries match any
    length) and, if given, every element is >= minimum."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise BadInput(f"{name} has dtype {array.dtype}, expected real numbers")
    if shape is not None and (array.ndim != len(shape)
                              or any(s is not None and s != n for s, n in zip(shape, array.shape))):
        wanted = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
        raise BadInput(f"{name} has shape {array.shape}, expected {wanted}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise BadInput(f"{name} contains nan or inf")
    if minimum is not None and array.size and array.min() < minimum:
        raise BadInput(f"{name} has values below {minimum}")
    return array


# ----------------------------------------------------------------------------
# Playing a policy on a Gymnasium environment
# ----------------------------------------------------------------------------
def play_episodes(env_id, policy, seeds, max_steps=None, set_start=None, watch=None, **make_kwargs):
    """Play one episode of `env_id` per reset seed, all environments in lockstep.

    policy(obs) maps a (B, obs_dim) batch of the still-running episodes' observations to B actions.
    set_start(env, i) may replace episode i's start after reset (it returns the new observation).
    watch(t, obs, running) is called before every step, e.g. to record angles.
    Returns {"returns": (N,), "lengths": (N,), "last_obs": (N, obs_dim)} in the order of `seeds`."""
    import gymnasium as gym
    envs = [gym.make(env_id, **make_kwargs) for _ in seeds]
    try:
        first = [env.reset(seed=int(s))[0] for env, s in zip(envs, seeds)]
        if set_start is not None:
            first = [set_start(env, i) for i, env in enumerate(envs)]
        obs = np.array(first)
        returns, lengths = np.zeros(len(envs)), np.zeros(len(envs), dtype=np.int64)
        running = np.ones(len(envs), dtype=bool)
        t = 0
        while running.any() and (max_steps is None or t < max_steps):
            if watch is not None:
                watch(t, obs, running)
            active = np.flatnonzero(running)
            actions = np.asarray(policy(obs[active]))
            for action, i in zip(actions, active):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                returns[i] += reward
                lengths[i] += 1
                running[i] = not (terminated or truncated)
            t += 1
        return {"returns": returns, "lengths": lengths, "last_obs": obs}
    finally:
        for env in envs:
            env.close()


def reset_states(env_id, seeds, **make_kwargs):
    """The float64 states env.unwrapped.state that Gymnasium's reset(seed=s) gives, one row per seed: the
    starts a differentiable twin replays exactly."""
    import gymnasium as gym
    env = gym.make(env_id, **make_kwargs)
    try:
        states = []
        for seed in seeds:
            env.reset(seed=int(seed))
            states.append(np.array(env.unwrapped.state, dtype=np.float64))
        return np.array(states)
    finally:
        env.close()


# ----------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------
def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def figure_problems(fig):
    """What a reader would miss in a figure: axes without a title or axis labels, or several labelled lines
    without a legend. Image tiles (axes turned off) are exempt. Returns a list of strings (empty is good)."""
    problems = []
    for i, ax in enumerate(fig.axes):
        if not ax.axison or ax.get_label() == "<colorbar>":
            continue
        name = ax.get_title() or f"axes {i}"
        if not (ax.get_title() or (fig._suptitle is not None and len(fig.axes) == 1)):
            problems.append(f"{name}: no title")
        if not ax.get_xlabel():
            problems.append(f"{name}: no x-axis label")
        if not ax.get_ylabel():
            problems.append(f"{name}: no y-axis label")
        labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        if len(labelled) > 1 and ax.get_legend() is None:
            problems.append(f"{name}: {len(labelled)} labelled lines but no legend")
    return problems


def save_figure(fig, out, filename, dpi=120):
    """Save a matplotlib figure to out/filename and close it; returns the path."""
    plt = pyplot()
    path = os.path.join(out, filename)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_gif(path, frames, fps=30):
    """Write a list of RGB uint8 frames (H, W, 3) as an animated GIF."""
    from PIL import Image  # installed with matplotlib
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def figure_to_array(fig):
    """Render a matplotlib figure to an RGB uint8 array (for GIF frames)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
