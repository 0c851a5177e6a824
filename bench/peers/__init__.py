"""Peer orchestrators (Temporal, Prefect 3, Dagster) on the same 7-step no-op workflow.

Each peer is installed into its own venv under ``build/peers/<peer>/venv`` (created here, never
the project's venv), and its bench script runs there and prints one JSON line per variant:
wall time per run (p50, p90) and p50 / 7 per step. With fan-out widths, each also runs a
fan-out of N no-op items and a join the peer's idiomatic way (rows with ``kind: "fanout"``;
bench/fanout.py puts sisas's beside them). See :func:`run_peers`.
"""

from __future__ import annotations

from bench.peers.runner import PEERS, run_peers

__all__ = ["PEERS", "run_peers"]
