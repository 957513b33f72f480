"""python -m autodiff: every primitive, where its forward and VJP are written.

    python -m autodiff                        the engine's ops and fused kernels
    python -m autodiff --script trebuchet.py  and the fused ops that script defines (importing it runs nothing)
    python -m autodiff --all-scripts          and those of every script in this folder
"""

import argparse
import glob
import importlib.util
import os
import re
import sys

from . import engine

PACKAGE = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(PACKAGE)


def primitive_lines(ops, base):
    """One line per primitive: name, file:line relative to `base`, and the first line of its docstring."""
    lines = []
    for name, op in ops:
        path, line = engine.where_defined(op)
        summary = (op.__doc__ or "").strip().splitlines()[0] if op.__doc__ else ""
        lines.append(f"  {name:24s} {os.path.relpath(path, base)}:{line:<5d} {summary}")
    return lines


def load_script(path):
    """Import a script by path (as the test suite does): its primitives register themselves."""
    name = os.path.splitext(os.path.basename(path))[0]
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def scripts_here():
    """Scripts in the repository folder that define their own primitives."""
    found = []
    for path in sorted(glob.glob(os.path.join(REPOSITORY, "*.py"))):
        with open(path, encoding="utf-8") as file:
            if re.search(r"^@(\w+\.)?primitive\b", file.read(), re.MULTILINE):
                found.append(path)
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m autodiff", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--script", action="append", default=[], metavar="FILE.py",
                        help="also list the primitives this script defines (repeatable)")
    parser.add_argument("--all-scripts", action="store_true", help="also list those of every script here")
    args = parser.parse_args(argv)

    by_file = {}
    for name, op in engine.PRIMITIVES.items():
        by_file.setdefault(engine.where_defined(op)[0], []).append((name, op))
    print("Every primitive: a NumPy forward and its hand-written VJP, side by side at file:line.\n")
    for title, filename in (("Elementary ops", "ops.py"), ("Fused kernels", "kernels.py")):
        ops = by_file.pop(os.path.join(PACKAGE, filename), [])
        print(f"{title} (autodiff/{filename}, {len(ops)}):")
        print("\n".join(primitive_lines(ops, REPOSITORY)) + "\n")

    scripts = [os.path.abspath(p) for p in args.script] + (scripts_here() if args.all_scripts else [])
    if not scripts:
        names = ", ".join(os.path.basename(p) for p in scripts_here()) or "none found"
        print("The scripts register their own fused ops the same way (@ad.primitive), e.g. a whole physics\n"
              "step as one node. List one script's with\n"
              "    python -m autodiff --script trebuchet.py\n"
              f"or all of them with --all-scripts (scripts here that define some: {names}).")
        return 0
    for path in dict.fromkeys(scripts):
        if not os.path.isfile(path):
            print(f"python -m autodiff: error: --script {path}: no such file", file=sys.stderr)
            return 2
        before = set(engine.PRIMITIVES)
        try:
            load_script(path)
        except Exception as error:  # a script that does not import is reported, the listing goes on
            print(f"{os.path.basename(path)}: could not be imported ({type(error).__name__}: {error})\n")
            continue
        ops = [(name, op) for name, op in engine.PRIMITIVES.items()
               if engine.where_defined(op)[0] == path or name not in before]
        print(f"Fused ops of {os.path.basename(path)} ({len(ops)}):")
        print("\n".join(primitive_lines(ops, os.path.dirname(path))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
