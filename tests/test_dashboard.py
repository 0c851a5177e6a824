"""The dashboard in a real headless Chromium, fed by a real `sisas up` (nats-server,
orchestrator, projector, worker), with runs started from the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.browser import SCREENSHOTS, Up
from tests.browser import free_port as _free_port
from tests.browser import page_wait as _wait
from tests.cli_process import SISAS, sisas, sisas_async
from tests.runs import ROOT


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    server = Up(tmp_path / "home", _free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def wide_up(tmp_path: Path) -> Iterator[Up]:
    """`sisas up` whose worker runs 16 phases at once: fan-outs of hundreds of items."""
    server = Up(tmp_path / "home", _free_port(), "--concurrency", "16")
    server.start()
    yield server
    server.stop()


def _statuses(driver: webdriver.Chrome) -> dict[str, str]:
    """Every phase row's status, read in one go (the table may re-render between reads)."""
    return dict(
        driver.execute_script(
            "return [...document.querySelectorAll('#phases tr[data-phase]')]"
            ".map(r => [r.dataset.phase, r.dataset.status])"
        )
    )


def test_a_run_started_from_the_cli_goes_live_on_the_page_without_a_reload(
    up: Up, browser: webdriver.Chrome
) -> None:
    browser.get(up.url)
    _wait(browser, "live").until(lambda d: d.find_element(By.ID, "live").text == "live")
    browser.execute_script("window.__sameDocument = true")
    payload = up.home / "nap.json"
    payload.write_text(json.dumps({"seconds": 2.5}))
    started = sisas(
        "run", "slow", "--input", str(payload), "--json", "--seed", "3", "--tag", "team=data",
        env=up.env,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout.strip().splitlines()[-1])["run_id"]
    row = f'tr[data-run-id="{run_id}"]'
    _wait(browser, "row").until(lambda d: d.find_element(By.CSS_SELECTOR, row))
    _wait(browser, "1 run").until(lambda d: d.find_element(By.ID, "count").text == "1 run")
    assert browser.execute_script("return window.__sameDocument") is True  # no reload
    browser.find_element(By.CSS_SELECTOR, row).click()
    _wait(browser, "run page").until(lambda d: d.find_element(By.ID, "run-id").text == run_id)
    browser.execute_script("window.__sameDocument = true")
    seen: list[str] = []

    def nap_done(d: webdriver.Chrome) -> bool:
        statuses = _statuses(d)
        status = statuses.get("nap", "")
        if not seen or seen[-1] != status:
            seen.append(status)
        return statuses.get("after") == "completed"

    _wait(browser, "completed", timeout=60).until(nap_done)
    assert "running" in seen and seen[-1] == "completed", seen  # watched it turn
    assert browser.execute_script("return window.__sameDocument") is True
    assert browser.execute_script("return window.sisas.events") > 0
    # The page reloaded as the run went, and the run was read once: each reload took in
    # only the signals since the one before.
    health = httpx.get(f"{up.url}/healthz").json()
    assert health["indexes_built"] == 1 and health["indexes_continued"] >= 1, health
    assert browser.find_element(By.ID, "run-status").text == "completed"
    nodes = browser.find_elements(By.CSS_SELECTOR, "#dag g.node")
    assert {n.get_attribute("data-status") for n in nodes} == {"completed"}
    assert browser.find_elements(By.CSS_SELECTOR, "#gantt rect[data-status=completed]")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "run-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
    # The audit report the page links to opens and names the run.
    browser.get(browser.find_element(By.ID, "report-link").get_attribute("href") or "")
    assert f"sisas audit: {run_id}" in browser.title
    assert "state digest" in browser.page_source and "completed" in browser.page_source
    # Tags: on the run page, in the list, and a filter (as `sisas runs --tag`).
    browser.get(f"{up.url}/runs/{run_id}")
    _wait(browser, "tags").until(
        lambda d: "tags team=data" in d.find_element(By.ID, "run-meta").text
    )
    browser.get(up.url)
    _wait(browser, "row").until(lambda d: d.find_element(By.CSS_SELECTOR, row))
    assert browser.find_element(By.CSS_SELECTOR, f"{row} td.tags").text == "team=data"
    browser.find_element(By.ID, "tag").send_keys("team=ops")
    _wait(browser, "filtered out").until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
    browser.find_element(By.ID, "tag").clear()
    browser.find_element(By.ID, "tag").send_keys("team=data")
    _wait(browser, "filtered in").until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.run-row")) == 1
    browser.find_element(By.ID, "tag").clear()
    browser.find_element(By.ID, "tag").send_keys("team")
    _wait(browser, "refused").until(lambda d: "KEY=VALUE" in d.find_element(By.ID, "count").text)
    bad = httpx.get(f"{up.url}/api/runs", params={"tag": "team"})
    assert bad.status_code == 400 and "KEY=VALUE (team=data)" in bad.json()["error"]


def test_the_page_recovers_after_the_server_restarts(up: Up, browser: webdriver.Chrome) -> None:
    browser.get(up.url)
    _wait(browser, "live").until(lambda d: d.find_element(By.ID, "live").text == "live")
    browser.execute_script("window.__sameDocument = true")
    up.stop()
    _wait(browser, "lost").until(lambda d: d.find_element(By.ID, "live").text != "live")
    up.start()
    _wait(browser, "back", timeout=60).until(lambda d: d.find_element(By.ID, "live").text == "live")
    payload = up.home / "nap.json"
    payload.write_text(json.dumps({"seconds": 0.1}))
    started = sisas("run", "slow", "--input", str(payload), "--json", "--wait", env=up.env)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout.strip().splitlines()[-1])["run_id"]
    done = f'tr[data-run-id="{run_id}"][data-status="completed"]'
    _wait(browser, "new run").until(lambda d: d.find_element(By.CSS_SELECTOR, done))
    assert browser.execute_script("return window.__sameDocument") is True


def test_many_clients_get_every_event_and_nothing_can_be_posted(up: Up) -> None:
    async def client(events: list[dict[str, object]], ready: asyncio.Event, n: int) -> None:
        async with (
            httpx.AsyncClient(timeout=60) as http,
            http.stream("GET", f"{up.url}/events") as response,
        ):
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                    if kind == "hello":
                        ready.set()
                elif line.startswith("data: ") and kind == "signal":
                    events.append(json.loads(line[6:]))
                    if events[-1]["kind"] == "run_completed":
                        return

    async def main() -> list[list[dict[str, object]]]:
        got: list[list[dict[str, object]]] = [[] for _ in range(10)]
        ready = [asyncio.Event() for _ in range(10)]
        tasks = [asyncio.create_task(client(got[i], ready[i], i)) for i in range(10)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 30)
        payload = up.home / "nap.json"
        payload.write_text(json.dumps({"seconds": 0.1}))
        await sisas_async("run", "slow", "--input", str(payload), env=up.env)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        return got

    got = asyncio.run(main())
    seqs = [[e["seq"] for e in events] for events in got]
    assert all(s == list(range(1, len(s) + 1)) for s in seqs), seqs  # in order, none missed
    assert len({tuple(s) for s in seqs}) == 1  # every client saw the same
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/api/runs", "/events", "/runs/x"):
            assert httpx.request(method, f"{up.url}{path}").status_code == 405
    assert re.search(r"sisas", httpx.get(up.url).text)


def _wide_run(up: Up, n: int) -> str:
    """A finished run of ``wide`` over ``n`` items (it fails at INV-TOTAL, by design)."""
    payload = up.home / f"wide-{n}.json"
    payload.write_text(json.dumps({"n": n}))
    done = sisas(
        "run", "wide", "--input", str(payload), "--json", "--wait", env=up.env, timeout=240
    )
    assert done.returncode == 1, done.stderr  # INV-TOTAL breaks: the run fails at `total`
    return str(json.loads(done.stdout.strip().splitlines()[-1])["run_id"])


def _shoot(browser: webdriver.Chrome, tmp_path: Path, name: str) -> Path:
    """A screenshot of the whole page (the window stretched to it), in the test's tmp
    folder and in build/screenshots."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(int(height) + 40, 6000))
    shot = tmp_path / name
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / name).write_bytes(shot.read_bytes())
    browser.set_window_size(1400, 1100)
    print(f"screenshot: {shot}")
    return shot


def _text(browser: webdriver.Chrome, css: str) -> str:
    return str(browser.execute_script(f"return document.querySelector({css!r})?.textContent"))


@pytest.mark.timeout(180)
def test_a_fan_out_is_one_row_its_items_are_paged_and_the_page_stays_bounded(
    wide_up: Up, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    small, big = _wide_run(wide_up, 50), _wide_run(wide_up, 500)
    sizes = {
        n: len(httpx.get(f"{wide_up.url}/api/runs/{r}").content)
        for n, r in ((50, small), (500, big))
    }
    # Ten times the items, the same page: no per-item data in the run's JSON (an item
    # would cost it at least 50 bytes: 22 KB more).
    assert sizes[500] < sizes[50] * 1.2, sizes
    print(f"run page JSON: {sizes}")

    browser.get(f"{wide_up.url}/runs/{big}")
    _wait(browser, "page").until(lambda d: d.find_element(By.ID, "run-status").text == "failed")
    rows = browser.find_elements(By.CSS_SELECTOR, "#phases tr[data-phase]")
    assert [r.get_attribute("data-phase") for r in rows] == ["source", "work", "total"]
    work = browser.find_element(By.CSS_SELECTOR, '#phases tr[data-phase="work"]')
    assert "completed 500" in work.text and "retried 2" in work.text  # 7 and 27
    assert re.search(r"\d+ ms / \d+ ms / 3\d\d ms", work.text), work.text  # item 3 slept 0.3 s
    total = browser.find_element(By.CSS_SELECTOR, '#phases tr[data-phase="total"]')
    assert "InvariantViolation" in total.text and "ms" in total.text  # an error, a duration
    # Slowest and failed first: item 3 is the slowest, item 7 the first retried.
    _wait(browser, "summary").until(lambda d: _text(d, "#items-slowest li") != "None")
    assert _text(browser, "#items-slowest li").startswith("work[3]")
    assert _text(browser, "#items-failed li").startswith("work[7]")
    # The item list: 50 a page, retried first, paged and searched on the server.
    _wait(browser, "items").until(lambda d: _text(d, "#items-range") == "1-50 of 500")
    first = browser.find_elements(By.CSS_SELECTOR, "#items tbody tr")
    assert len(first) == 50 and first[0].get_attribute("data-item") == "7"
    assert "retried after: HardFailure: RuntimeError: item 7" in first[0].text
    whole = first[0].find_element(By.CSS_SELECTOR, "details.whole pre")  # the traceback
    assert "Traceback" in str(whole.get_attribute("textContent"))
    # Each attempt's log, fetched when opened: attempt 0's holds its traceback.
    log = first[0].find_element(By.CSS_SELECTOR, 'details.log[data-attempt="0"]')
    log.find_element(By.TAG_NAME, "summary").click()
    pre = log.find_element(By.TAG_NAME, "pre")
    _wait(browser, "log").until(lambda d: "fails its first attempt on purpose" in pre.text)
    assert "Traceback" in pre.text
    pages = browser.execute_script("return window.sisas.itemPages")
    browser.find_element(By.ID, "items-next").click()
    _wait(browser, "page 2").until(lambda d: _text(d, "#items-range") == "51-100 of 500")
    assert browser.execute_script("return window.sisas.itemPages") > pages
    browser.find_element(By.ID, "item-q").send_keys("123")
    _wait(browser, "search").until(lambda d: _text(d, "#items-range") == "1-1 of 1 (of 500 items)")
    assert (
        browser.find_element(By.CSS_SELECTOR, "#items tbody tr").get_attribute("data-item") == "123"
    )
    # One timeline lane for 500 items, one bar per plain attempt.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gantt g.lane-items")) == 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#gantt rect[data-status]")) == 2
    # Every dependency drawn.
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to"))
        for e in browser.find_elements(By.CSS_SELECTOR, "#dag path.edge")
    }
    assert edges == {("source", "work"), ("work", "total")}
    _shoot(browser, tmp_path, "fan-out-500.png")
    # Two runs read, each once, however many pages of them were asked for.
    assert httpx.get(f"{wide_up.url}/healthz").json()["indexes_built"] == 2


@pytest.mark.timeout(180)
def test_checks_are_grouped_failures_first_and_paged(
    wide_up: Up, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    run_id = _wide_run(wide_up, 60)
    browser.get(f"{wide_up.url}/runs/{run_id}")
    _wait(browser, "page").until(lambda d: d.find_element(By.ID, "run-status").text == "failed")
    groups = browser.find_elements(By.CSS_SELECTOR, "#check-groups tr.group")
    names = [g.get_attribute("data-group") for g in groups]
    assert names[0] == "total/invariant/INV-TOTAL", names  # the failing group first
    assert len(names) == len(set(names)) < 10  # one row per contract or invariant
    assert "observed 1770, expected < 100" in groups[0].text
    assert "work/invariant/INV-ITEM" in names
    summary = _text(browser, "#checks-summary")
    assert f"in {len(names)} groups, 1 failed" in summary, summary
    item_group = groups[names.index("work/invariant/INV-ITEM")]
    item_group.find_element(By.CSS_SELECTOR, "button").click()
    _wait(browser, "checks").until(lambda d: _text(d, "#checks-range") == "1-50 of 60")
    row = browser.find_element(By.CSS_SELECTOR, "#checks tbody tr")
    assert "passed" in row.text and ">= 0" in row.text  # observed and expected shown
    browser.find_element(By.ID, "checks-next").click()
    _wait(browser, "checks 2").until(lambda d: _text(d, "#checks-range") == "51-60 of 60")
    _shoot(browser, tmp_path, "checks-60.png")


_CROSSES = """
const [path, box] = arguments;
const r = box.getBBox();
for (let at = 0; at <= path.getTotalLength(); at += 2) {
  const p = path.getPointAtLength(at);
  const inside = (v, lo, size) => v > lo + 1 && v < lo + size - 1;
  if (inside(p.x, r.x, r.width) && inside(p.y, r.y, r.height)) return true;
}
return false;
"""


def test_every_dependency_is_drawn_and_skips_and_cancels_read_apart_from_failures(
    up: Up, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    payload = up.home / "one.json"
    payload.write_text("1")
    done = sisas("run", "diamond", "--input", str(payload), "--json", "--wait", env=up.env)
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    browser.get(f"{up.url}/runs/{run_id}")
    _wait(browser, "page").until(lambda d: d.find_element(By.ID, "run-status").text == "completed")
    edges = {
        (e.get_attribute("data-from"), e.get_attribute("data-to")): e
        for e in browser.find_elements(By.CSS_SELECTOR, "#dag path.edge")
    }
    assert set(edges) == {("a", "b"), ("b", "c"), ("a", "c"), ("c", "notify")}
    boxes = {
        g.get_attribute("data-phase"): g.find_element(By.TAG_NAME, "rect")
        for g in browser.find_elements(By.CSS_SELECTOR, "#dag g.node")
    }
    for (src, dst), edge in edges.items():  # no edge runs behind a box it does not join
        for name, box in boxes.items():
            if name not in (src, dst):
                assert not browser.execute_script(_CROSSES, edge, box), (src, dst, name)
    notify = browser.find_element(By.CSS_SELECTOR, '#phases tr[data-phase="notify"]')
    assert notify.get_attribute("data-status") == "skipped"
    detail = notify.find_element(By.CSS_SELECTOR, "td.detail span")
    assert detail.text == "skipped: disabled" and detail.get_attribute("class") == "muted"
    colour = (
        "const e = document.createElement('span'); e.className = 'status st-' + arguments[0];"
        "document.body.append(e); const c = getComputedStyle(e).backgroundColor; e.remove();"
        "return c;"
    )
    colours = {s: browser.execute_script(colour, s) for s in ("failed", "cancelled", "skipped")}
    assert len(set(colours.values())) == 3, colours  # each its own colour
    a = browser.find_element(By.CSS_SELECTOR, '#phases tr[data-phase="a"] td.duration')
    assert re.fullmatch(r"\d+ ms|\d+\.\d\d s", a.text), a.text
    _shoot(browser, tmp_path, "diamond.png")


def test_a_run_page_and_the_runs_list_hear_of_changes_coalesced_not_of_every_signal(
    wide_up: Up,
) -> None:
    payload = wide_up.home / "wide-300.json"
    payload.write_text(json.dumps({"n": 300}))
    other = wide_up.home / "wide-20.json"
    other.write_text(json.dumps({"n": 20}))
    started = sisas("run", "wide", "--input", str(payload), "--json", env=wide_up.env)
    run_id = json.loads(started.stdout.strip().splitlines()[-1])["run_id"]

    async def listen() -> list[tuple[int, int]]:
        changes: list[tuple[int, int]] = []
        async with (
            httpx.AsyncClient(timeout=120) as http,
            http.stream("GET", f"{wide_up.url}/events?run={run_id}") as response,
        ):
            await sisas_async("run", "wide", "--input", str(other), env=wide_up.env)
            kind, seq = "", 0
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: ") and kind == "changed":
                    changes.append((seq, int(line[6:])))
                    page = (await http.get(f"{wide_up.url}/api/runs/{run_id}")).json()
                    if page["status"] in ("completed", "failed"):
                        return changes

        return changes

    async def runs_list(counts: list[int]) -> None:
        """What the runs list hears meanwhile: how many signals the run has so far."""
        async with (
            httpx.AsyncClient(timeout=120) as http,
            http.stream("GET", f"{wide_up.url}/events?runs=1") as response,
        ):
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "runs":
                    runs = json.loads(line[6:])
                    if run_id in runs:
                        counts.append(runs[run_id][0])

    async def both() -> tuple[list[tuple[int, int]], list[int]]:
        counts: list[int] = []
        listing = asyncio.create_task(runs_list(counts))
        try:
            return await asyncio.wait_for(listen(), 120), counts
        finally:
            listing.cancel()

    changes, counts = asyncio.run(both())
    signals = httpx.get(f"{wide_up.url}/api/runs/{run_id}").json()["signals"]
    assert counts == sorted(counts) and 0 < len(counts) < signals / 5, (len(counts), signals)
    heard = sum(n for _, n in changes)
    # Every signal of the run, and of no other run, counted; in far fewer events.
    assert heard <= signals and len(changes) < signals / 5, (len(changes), heard, signals)
    assert [s for s, _ in changes] == sorted(s for s, _ in changes)
    assert httpx.get(f"{wide_up.url}/events?run=no.dots", timeout=5).status_code == 400


def _cells(driver: webdriver.Chrome, backfill_id: str) -> dict[str, str]:
    """Each partition square of a backfill's grid and its status, read in one go."""
    return dict(
        driver.execute_script(
            "return [...document.querySelectorAll("
            f"'.bf-grid[data-backfill=\"{backfill_id}\"] .bf-cell')]"
            ".map(c => [c.dataset.partition, c.dataset.status])"
        )
    )


def test_the_backfills_page_shows_a_partition_grid_per_pipeline(
    up: Up, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    done = sisas(
        "backfill", "slow", "--partitions", "0,0.05,x,0.1",
        "--input-template", '{"seconds": "$.partition"}', "--json", env=up.env,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr  # partition x fails: float("x")
    finished = json.loads(done.stdout)
    going = subprocess.Popen(
        [*SISAS, "backfill", "slow", "--from", "2026-01-01", "--to", "2026-01-01T08:00",
         "--every", "1h", "--max-concurrent", "2", "--input-template", '{"seconds": 30}'],
        env=up.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        browser.get(up.url)  # found from the runs page, as a user finds it
        _wait(browser, "nav").until(lambda d: d.find_element(By.ID, "nav-backfills")).click()
        _wait(browser, "backfills page").until(lambda d: d.current_url.endswith("/backfills"))
        keys = [f"2026-01-01T{h:02d}:00:00+00:00" for h in range(8)]

        def in_flight(d: webdriver.Chrome) -> dict[str, str] | None:
            grids = d.find_elements(By.CSS_SELECTOR, ".bf-grid[data-backfill]")
            ids = [g.get_attribute("data-backfill") for g in grids]
            other = next((i for i in ids if i != finished["backfill_id"]), None)
            if other is None:
                return None
            cells = _cells(d, other)
            running = [k for k, s in cells.items() if s == "running"]
            return cells if len(running) == 2 and list(cells) == keys else None

        cells = _wait(browser, "a backfill going", timeout=60).until(in_flight)
        assert sorted(cells.values()) == ["missing"] * 6 + ["running"] * 2  # at most 2 at once
        assert _cells(browser, finished["backfill_id"]) == {
            "0": "completed",
            "0.05": "completed",
            "x": "failed",
            "0.1": "completed",
        }
        [section] = browser.find_elements(By.CSS_SELECTOR, "section.bf-pipeline")
        assert section.get_attribute("data-pipeline") == "slow"
        assert "2 backfills" in section.text and "at most 2 at once" in section.text
        _shoot(browser, tmp_path, "backfills.png")
        failed = next(r["run_id"] for r in finished["results"] if r["partition"] == "x")
        browser.find_element(By.CSS_SELECTOR, ".bf-cell[data-partition=x]").click()
        _wait(browser, "run page").until(lambda d: d.find_element(By.ID, "run-id").text == failed)
        browser.find_element(By.ID, "nav-backfills").click()  # and back from a run page
        _wait(browser, "grids").until(lambda d: d.find_elements(By.CSS_SELECTOR, ".bf-grid"))
        browser.find_element(By.ID, "nav-runs").click()
        _wait(browser, "runs page").until(lambda d: d.find_element(By.ID, "runs"))
    finally:
        going.send_signal(signal.SIGINT)
        going.communicate(timeout=30)


def test_a_page_in_a_hidden_tab_loads_nothing_until_it_is_seen_again(
    up: Up, browser: webdriver.Chrome
) -> None:
    payload = up.home / "nap.json"
    payload.write_text(json.dumps({"seconds": 2.5}))
    started = sisas("run", "slow", "--input", str(payload), "--json", env=up.env)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout.strip().splitlines()[-1])["run_id"]
    browser.get(f"{up.url}/runs/{run_id}")
    _wait(browser, "run page").until(lambda d: d.find_element(By.ID, "run-id").text == run_id)
    _wait(browser, "a load").until(lambda d: d.execute_script("return window.sisas.loads") > 0)
    heard = browser.execute_script("return window.sisas.events")
    page = browser.current_window_handle
    browser.switch_to.new_window("tab")  # the run page is now a hidden tab
    deadline = time.monotonic() + 60
    while httpx.get(f"{up.url}/api/runs/{run_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline, "the run did not end in 60 s"
        time.sleep(0.3)
    browser.close()
    browser.switch_to.window(page)  # seen again: it loads once, and shows the run's end
    _wait(browser, "completed").until(
        lambda d: d.find_element(By.ID, "run-status").text == "completed"
    )
    hidden = browser.execute_script("return [window.sisas.events, window.sisas.hiddenLoads]")
    assert hidden[0] > heard  # it heard of the changes meanwhile ...
    assert not hidden[1]  # ... and loaded nothing while hidden
    assert _statuses(browser)["after"] == "completed"


def test_the_pages_ask_for_nothing_the_server_does_not_serve(
    up: Up, browser: webdriver.Chrome
) -> None:
    """No request of the pages fails (a /favicon.ico answered 404 on every page, an
    error in the browser's console)."""
    loaded = 'return document.readyState === "complete"'
    for path in ("/", "/backfills"):
        browser.get(up.url + path)
        _wait(browser, path).until(lambda d: d.execute_script(loaded))
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
