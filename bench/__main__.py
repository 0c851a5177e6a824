"""``python -m bench all`` runs every benchmark (bench/all.py); ``python -m bench
<name>`` one of them, with its own options (``python -m bench <name> --help``)."""

from __future__ import annotations

import runpy
import sys

NAMES = ("append", "overhead", "workers", "projection", "replay", "scale", "peers", "live")
NAMES += ("examples", "telemetry", "writepath", "looplag", "fold", "isolation", "views")
NAMES += ("pages",)
NAMES += ("fanout",)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        print(f"benchmarks: all, {', '.join(NAMES)}")
        return 0 if len(sys.argv) >= 2 else 2
    name, rest = sys.argv[1], sys.argv[2:]
    if name == "all":
        from bench.all import main as run_all

        return run_all(rest)
    if name not in NAMES:
        print(f"unknown benchmark {name!r}; known: all, {', '.join(NAMES)}", file=sys.stderr)
        return 2
    sys.argv = [f"bench.{name}", *rest]
    runpy.run_module(f"bench.{name}", run_name="__main__", alter_sys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
