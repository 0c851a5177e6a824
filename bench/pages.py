"""Open run pages against a live run: a fan-out timed with 0 and with 3 pages open.

    .venv/bin/python -m bench pages [--items 5000] [--pages 3] [--rounds 2] [--apart]

Starts ``sisas up --pipelines tests/pipelines.py --concurrency 16`` (its own data folder,
its dashboard on a free port; ``--apart``: ``sisas up --no-dashboard`` and a ``sisas
dashboard`` process of its own, so the dashboard's CPU is its own), warms it with a
50-item run, then runs the ``wide`` pipeline over ``--items`` items ``--rounds`` times
with no page open and with ``--pages`` headless Chromiums (Debian's chromium and
chromium-driver, as the dashboard's tests) each showing the run's page, alternated
(the machine may be shared: the load average is printed with each run).

The Chromiums are started on a blank page before the run is requested and sent to its
page as soon as its id is known, so their start-up is not counted; the run's time is
the projection's (requested to ended), so how it is waited for is not either. Per run:
the time, the CPU seconds (from /proc: the process and its descendants) of ``sisas
up`` (and of its nats-server apart), of the dashboard when ``--apart``, and of each
Chromium over the run; per page its loads of the summary, the bytes it downloaded and
the events it heard (``window.sisas``). Last, the floor: ``--pages`` Chromiums with a
static page open for ``--idle`` seconds, their CPU, and the ratio of the medians with
the Chromiums' own CPU taken out of the 3-page run's time (what the run would take if
they ran on a machine of their own, at best).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
PIPES = str(ROOT / "tests" / "pipelines.py")
SISAS = [sys.executable, "-m", "sisas.cli"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TICK = os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _procs() -> dict[int, tuple[int, float, str]]:
    """Every process: pid -> (parent pid, CPU seconds so far, command name)."""
    out: dict[int, tuple[int, float, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdecimal():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # after the name: state ppid ... utime(14) stime(15) cutime(16) cstime(17), 1-based
        cpu = sum(int(f) for f in fields[11:15]) / TICK
        out[int(entry)] = (int(fields[1]), cpu, name)
    return out


def tree_cpu(root: int, procs: dict[int, tuple[int, float, str]] | None = None) -> float:
    """CPU seconds of ``root`` and its live descendants (with their reaped children)."""
    procs = procs if procs is not None else _procs()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            total += procs[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def _named_child_cpu(root: int, name: str) -> float:
    procs = _procs()
    return sum(
        tree_cpu(pid, procs) for pid, (ppid, _, n) in procs.items() if ppid == root and n == name
    )


class Served:
    """``sisas up`` (and a ``sisas dashboard`` of its own when ``apart``), stopped by
    :meth:`stop`."""

    def __init__(self, home: Path, apart: bool) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SISAS_", "OTEL_"))}
        self.env = {**env, "SISAS_HOME": str(home)}
        up = [*SISAS, "up", "--pipelines", PIPES, "--concurrency", "16"]
        up += ["--no-dashboard"] if apart else ["--dashboard-port", str(self.port)]
        self.up = self._start(up)
        self.dashboard: subprocess.Popen[bytes] | None = None
        if apart:
            self._wait(lambda: self._ran("status").returncode == 0, "sisas up")
            self.dashboard = self._start([*SISAS, "dashboard", "--port", str(self.port)])
        self._wait(self._healthy, "the dashboard")

    def _start(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _ran(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*SISAS, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=600
        )

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, ok: Any, what: str) -> None:
        deadline = time.monotonic() + 60
        while not ok():
            if self.up.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not come up")
            time.sleep(0.3)

    def request(self, items: int) -> str:
        """A run of ``wide`` over ``items`` items requested; its id."""
        payload = self.home / f"wide-{items}.json"
        payload.write_text(json.dumps({"n": items}))
        done = self._ran("run", "wide", "--input", str(payload), "--json")
        if done.returncode != 0:
            raise SystemExit(f"sisas run failed: {done.stderr}")
        return str(json.loads(done.stdout.strip().splitlines()[-1])["run_id"])

    def ended(self, run_id: str, timeout: float = 900) -> dict[str, Any]:
        """The run's row in the projection once it has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                runs = httpx.get(f"{self.url}/api/runs?limit=5", timeout=10).json()["runs"]
            except (httpx.HTTPError, KeyError):
                continue
            row = next((r for r in runs if r["run_id"] == run_id), None)
            if row is not None and row["status"] in ("completed", "failed", "cancelled"):
                return dict(row)
        raise SystemExit(f"run {run_id} did not end in {timeout} s")

    def cpu(self) -> dict[str, float]:
        out = {"up": tree_cpu(self.up.pid), "nats": _named_child_cpu(self.up.pid, "nats-server")}
        if self.dashboard is not None:
            out["dashboard"] = tree_cpu(self.dashboard.pid)
        return out

    def stop(self) -> None:
        for proc in (self.dashboard, self.up):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _chromium() -> webdriver.Chrome:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1100")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get("about:blank")
    return driver


def _browser_cpu(driver: webdriver.Chrome) -> float:
    return tree_cpu(driver.service.process.pid)


def one_run(served: Served, items: int, pages: int) -> dict[str, Any]:
    """One run of ``wide`` over ``items`` items with ``pages`` run pages open."""
    browsers = [_chromium() for _ in range(pages)]
    try:
        time.sleep(1)  # their start-up settles
        load = os.getloadavg()[0]
        before, b_before = served.cpu(), [_browser_cpu(b) for b in browsers]
        run_id = served.request(items)
        for b in browsers:
            b.get(f"{served.url}/runs/{run_id}")
        row = served.ended(run_id)
        deadline = time.monotonic() + 30  # a short run may end before a page has loaded
        while time.monotonic() < deadline and not all(
            b.execute_script("return (window.sisas || {}).loads || 0") for b in browsers
        ):
            time.sleep(0.2)
        stats = [
            b.execute_script("return window.sisas || {}") if b else {} for b in browsers
        ]  # fmt: skip
        after, b_after = served.cpu(), [_browser_cpu(b) for b in browsers]
    finally:
        for b in browsers:
            b.quit()
    health = httpx.get(f"{served.url}/healthz", timeout=10).json()
    out: dict[str, Any] = {
        "pages": pages,
        "run_id": run_id,
        "status": row["status"],
        "seconds": float(row["duration"]),
        "load": load,
        "cpu": {k: after[k] - before[k] for k in after},
        "chromium_cpu": [a - b for a, b in zip(b_after, b_before, strict=True)],
        "page_loads": [int(s.get("loads", 0)) for s in stats],
        "page_bytes": [int(s.get("bytes", 0)) for s in stats],
        "page_events": [int(s.get("events", 0)) for s in stats],
        "health": {k: v for k, v in health.items() if k.startswith("index")},
    }
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in out["cpu"].items())
    pages_txt = ""
    if pages:
        per = [
            f"{c:.1f} s CPU, {n} loads, {by / max(n, 1) / 1024:.1f} KiB/load"
            for c, n, by in zip(
                out["chromium_cpu"], out["page_loads"], out["page_bytes"], strict=True
            )
        ]
        pages_txt = "; pages: " + " | ".join(per)
    print(
        f"  {pages} pages: {out['seconds']:6.1f} s (load {load:.1f}); CPU s: {cpu}{pages_txt}",
        flush=True,
    )
    return out


def idle_floor(served: Served, pages: int, seconds: float) -> dict[str, Any]:
    """``pages`` Chromiums showing a static page (the dashboard's stylesheet) for
    ``seconds``: their CPU, the floor an open page costs whatever it shows."""
    browsers = [_chromium() for _ in range(pages)]
    try:
        for b in browsers:
            b.get(f"{served.url}/static/style.css")
        time.sleep(1)
        before = [_browser_cpu(b) for b in browsers]
        time.sleep(seconds)
        cpu = [_browser_cpu(b) - c for b, c in zip(browsers, before, strict=True)]
    finally:
        for b in browsers:
            b.quit()
    print(
        f"  floor: {pages} Chromiums on a static page for {seconds:.0f} s: CPU "
        + ", ".join(f"{c:.2f}" for c in cpu)
        + " s",
        flush=True,
    )
    return {"seconds": seconds, "chromium_cpu": cpu}


def measure(items: int, pages: int, rounds: int, apart: bool, idle: float) -> dict[str, Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        raise SystemExit(f"{', '.join(missing)} missing: apt-get install chromium chromium-driver")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        served = Served(Path(tmp) / "home", apart)
        try:
            served.ended(served.request(50))  # warm: code loaded, streams made
            print(
                f"wide over {items:,} items, {pages} run pages or none, {rounds} rounds "
                f"({os.cpu_count()} CPUs; the dashboard "
                f"{'in its own process' if apart else 'served by sisas up'})",
                flush=True,
            )
            for r in range(rounds):
                order = (0, pages) if r % 2 == 0 else (pages, 0)
                runs.extend(one_run(served, items, n) for n in order)
            floor = idle_floor(served, pages, idle) if idle else None
        finally:
            served.stop()
    none = [r["seconds"] for r in runs if r["pages"] == 0]
    some = [r["seconds"] for r in runs if r["pages"] == pages]
    cores = os.cpu_count() or 1
    own = [r["seconds"] - sum(r["chromium_cpu"]) / cores for r in runs if r["pages"]]
    ratio = statistics.median(some) / statistics.median(none)
    net = statistics.median(own) / statistics.median(none)
    # CPU, less at the mercy of the machine's other load than wall time: what the run
    # cost with the pages (sisas up's and the Chromiums') over what it cost without.
    served_cpu = [(r["pages"], r["cpu"]["up"] + r["cpu"].get("dashboard", 0.0)) for r in runs]
    up_none = statistics.median(c for n, c in served_cpu if not n)
    up_some = statistics.median(c for n, c in served_cpu if n)
    browsers = statistics.median(sum(r["chromium_cpu"]) for r in runs if r["pages"])
    cpu_ratio = (up_some + browsers) / up_none
    print(
        f"  median {statistics.median(none):.1f} s with none, {statistics.median(some):.1f} s "
        f"with {pages}: {ratio:.2f}x; the Chromiums' CPU spread over the "
        f"{os.cpu_count()} CPUs taken out: {net:.2f}x\n"
        f"  CPU: sisas up{' and the dashboard' if apart else ''} {up_none:.1f} s with none, "
        f"{up_some:.1f} s with {pages} "
        f"(+{up_some - up_none:.1f}), the Chromiums {browsers:.1f} s: "
        f"{cpu_ratio:.2f}x the CPU of the run with none",
        flush=True,
    )
    return {
        "runs": runs,
        "ratio": ratio,
        "ratio_without_browsers": net,
        "cpu_ratio": cpu_ratio,
        "floor": floor,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=5000)
    p.add_argument("--pages", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--idle", type=float, default=15.0, help="seconds of the floor (0: none)")
    p.add_argument("--apart", action="store_true", help="the dashboard in its own process")
    p.add_argument("--json", action="store_true", help="print the figures as JSON last")
    a = p.parse_args(argv)
    out = measure(a.items, a.pages, a.rounds, a.apart, a.idle)
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
