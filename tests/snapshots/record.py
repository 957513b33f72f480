"""Record (or re-record) a script's behaviour snapshot: its metrics.json for a short, fixed command.

    python tests/snapshots/record.py cartpole_dp --ignore train_seconds --ignore seconds -- --dp-seeds 2 --rl-seeds 0

writes tests/snapshots/cartpole_dp.json. tests/test_snapshots.py reruns the command and compares.
Re-record only in the commit that changes what the script computes, and say why in its message."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run_script(script, argv):
    """Run `python script.py argv --out TMP` from the project root; return metrics.json's "metrics"."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, MPLBACKEND="Agg")
        done = subprocess.run([sys.executable, f"{script}.py", *argv, "--out", out], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{script}.py {' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        with open(os.path.join(out, "metrics.json")) as f:
            return json.load(f)["metrics"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("script", help="script name without .py")
    p.add_argument("--ignore", action="append", default=[], metavar="KEY",
                   help="a key (at any depth) that holds a timing, not a result; repeat for more")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the script's flags")
    args = p.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    metrics = run_script(args.script, argv)
    path = os.path.join(HERE, f"{args.script}.json")
    with open(path, "w") as f:
        json.dump({"script": args.script, "argv": argv, "ignore": args.ignore, "metrics": metrics}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
