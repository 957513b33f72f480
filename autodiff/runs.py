"""What every script shares: its command line, progress lines, and run folder.

    parser = runs.parser(__doc__, "pendulum_bptt")      # --seed --full --out
    args = parser.parse_args()
    out = runs.prepare_out(args.out)
    progress = runs.Progress(total=steps, label="train")
    progress.update(step + 1, loss=loss)                # prints with elapsed/ETA
    runs.write_metrics(out, {"mean_return": ...}, args, started)

Nothing here is about automatic differentiation; it lives in the package so
that the six scripts can import one copy of it.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------
def _whole_number(text, minimum):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
    return value


def positive_int(text):
    return _whole_number(text, 1)


def nonnegative_int(text):
    return _whole_number(text, 0)


def positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def parser(doc, name):
    """An ArgumentParser with the options every script has:
    --seed N (reproducible), --full (the long run), --out DIR (default runs/NAME)."""
    first_line = (doc or name).strip().splitlines()[0]
    p = argparse.ArgumentParser(prog=f"{name}.py", description=first_line,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed; the same seed gives the same run")
    p.add_argument("--full", action="store_true", help="the long run instead of the one-minute lesson run")
    p.add_argument("--out", default=os.path.join("runs", name), help="folder for metrics.json, params.npz, figures")
    return p


def prepare_out(path):
    os.makedirs(path, exist_ok=True)
    return path


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
    """Prints `label k/total | key=value ... | elapsed | eta` at most every
    `every` seconds (and always at the last step)."""

    def __init__(self, total, label="", every=2.0, stream=None):
        self.total, self.label, self.every = total, label, every
        self.stream = stream or sys.stdout
        self.started = time.perf_counter()
        self.last_print = -math.inf

    def elapsed(self):
        return time.perf_counter() - self.started

    def update(self, done, force=False, **fields):
        now = time.perf_counter()
        if not force and done < self.total and now - self.last_print < self.every:
            return
        self.last_print = now
        elapsed = now - self.started
        eta = elapsed / done * (self.total - done) if done > 0 else math.inf
        parts = [f"{self.label} {done}/{self.total}".strip()]
        parts += [f"{k}={_format_value(v)}" for k, v in fields.items()]
        parts += [f"elapsed {format_seconds(elapsed)}", f"eta {format_seconds(eta)}"]
        print(" | ".join(parts), file=self.stream, flush=True)


def _format_value(v):
    if isinstance(v, (float, np.floating)):
        return f"{v:.4g}"
    return str(v)


# ----------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------
def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_metrics(out, metrics, args, started):
    """Write metrics.json: the measured figures, the arguments, the wall time."""
    record = {"metrics": metrics, "args": vars(args) if not isinstance(args, dict) else args,
              "wall_time_s": round(time.perf_counter() - started, 2)}
    path = os.path.join(out, "metrics.json")
    temporary = path + ".tmp"
    with open(temporary, "w") as f:
        json.dump(_jsonable(record), f, indent=2)
    os.replace(temporary, path)
    return path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_gif(path, frames, fps=30):
    """Write a list of RGB uint8 frames (H, W, 3) as an animated GIF."""
    from PIL import Image  # installed with matplotlib
    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def figure_to_array(fig):
    """Render a matplotlib figure to an RGB uint8 array (for GIF frames)."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
