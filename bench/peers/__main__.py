"""``python -m bench.peers [--runs N] [--only temporal,prefect,dagster] [--fanout 100,1000]
[--fanout-runs R] [--json]``."""

from __future__ import annotations

from bench.peers.runner import main

if __name__ == "__main__":
    raise SystemExit(main())
