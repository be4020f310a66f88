"""`python -m bench` runs every `bench/*.py` module that has a `main()`; `python -m bench NAME [ARGS...]` runs one."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ROOT, print_table

BENCH_DIR = Path(__file__).resolve().parent
_NOT_BENCHMARKS = {"__init__", "__main__", "common"}


def has_main(path: Path) -> bool:
    """True when the module at path defines a top-level function `main` (read without importing it)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError):
        # A broken module is still listed, so that running it shows its error instead of hiding it.
        return True
    return any(isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "main" for node in tree.body)


def discover() -> list[str]:
    """The benchmark modules and packages (a package's main() is in its __init__.py), by name, in alphabetical order."""
    found = {path.stem: path for path in BENCH_DIR.glob("*.py")}
    found.update({path.parent.name: path for path in BENCH_DIR.glob("*/__init__.py")})
    return sorted(name for name, path in found.items() if name not in _NOT_BENCHMARKS and has_main(path))


def normalize(name: str) -> str:
    """`private_api`, `bench.private_api` and `bench/private_api.py` all name the same module."""
    name = name.removeprefix("bench/").removeprefix("bench.").removesuffix(".py")
    return name


def run_one(name: str, args: list[str]) -> int:
    """Import bench.<name> and call its main() with args as its command line; its exit code."""
    sys.argv = [f"python -m bench {name}", *args]
    module = importlib.import_module(f"bench.{name}")
    result = module.main()
    return result if isinstance(result, int) else 0


def run_all(names: list[str]) -> int:
    """Run each benchmark in its own process (a crash or a leak of one cannot skew the next); 1 if any failed."""
    rows = []
    failed = 0
    for name in names:
        print(f"\n## bench.{name}\n", flush=True)
        start = time.monotonic()
        code = subprocess.run([sys.executable, "-m", "bench", name], cwd=ROOT).returncode
        rows.append((name, "ok" if code == 0 else f"FAILED (exit {code})", f"{time.monotonic() - start:.0f}"))
        failed += code != 0
    print("\n## Summary\n")
    print_table(("benchmark", "result", "seconds"), rows)
    return 1 if failed else 0


def main() -> int:
    """Parse the command line and run one benchmark or all of them."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the benchmarks in bench/ (each prints a table and writes bench/results/<name>.json).",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("name", nargs="?", help="run only this benchmark (default: all of them)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments for that benchmark")
    options = parser.parse_args()
    names = discover()
    if options.list:
        print("\n".join(names))
        return 0
    if options.name is None:
        if not names:
            parser.error(f"no benchmark modules with a main() in {BENCH_DIR}")
        return run_all(names)
    name = normalize(options.name)
    if name not in names:
        parser.error(f"no benchmark named {options.name!r}; there are: {', '.join(names) or 'none'}")
    return run_one(name, options.args)


if __name__ == "__main__":
    sys.exit(main())
