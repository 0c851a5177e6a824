"""The dashboard's actions, clicked in a real headless Chromium against a real `sisas up`
(nats-server, orchestrator, projector, worker): launch, cancel, re-execute from failure,
re-run; what a reader without a session sees and may do; and, with security on (a
nats-server with the users of `sisas security init`), signing in with the operator's
credentials, an auditor's, and a wrong one."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field, TypeAdapter
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from sisas.security.profile import init_profile, user_seed
from tests.browser import SCREENSHOTS, Up, free_port
from tests.browser import page_wait as _wait
from tests.cli_process import SISAS, base_env, env_file, sisas
from tests.conftest import NatsServer, spawn_nats
from tests.runs import ROOT

ACTION_PIPES = str(ROOT / "tests" / "action_pipelines.py")


class ActingUp(Up):
    """`sisas up --dashboard-actions`: the sign-in address it prints carries the token."""

    def __init__(self, home: Path, port: int, *options: str) -> None:
        super().__init__(home, port, "--pipelines", ACTION_PIPES, *options)
        self.sign_in = ""

    def start(self) -> None:
        super().start()
        assert self.proc is not None and self.proc.stdout is not None
        if "--dashboard-actions" in self.options:
            for line in self.proc.stdout:  # printed right after the panel
                if line.startswith("operator sign-in: "):
                    self.sign_in = line.removeprefix("operator sign-in: ").strip()
                    break
            assert "?token=" in self.sign_in


@pytest.fixture
def acting(tmp_path: Path) -> Iterator[ActingUp]:
    server = ActingUp(tmp_path / "home", free_port(), "--dashboard-actions")
    server.start()
    yield server
    server.stop()


def _shot(browser: webdriver.Chrome, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / name
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def _status(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.ID, "run-status").get_attribute("data-status") or "")


def _run_id(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.ID, "run-id").text)


def _requested(env: dict[str, str], run_id: str, kind: str = "run_requested") -> dict[str, Any]:
    """The body of ``run_id``'s ``kind`` signal, as ``sisas signals --json`` prints it."""
    out = sisas("signals", run_id, "--json", env=env)
    assert out.returncode == 0, out.stderr
    for rec in json.loads(out.stdout)["signals"]:
        if rec["signal"]["body"]["kind"] == kind:
            return dict(rec["signal"]["body"])
    raise AssertionError(f"no run_requested in {out.stdout[:500]}")


def _launch(browser: webdriver.Chrome, pipeline: str, value: str, seed: str = "") -> None:
    """Fill the launch form on the runs page and click launch."""
    if not browser.find_element(By.ID, "launch").is_displayed():
        browser.find_element(By.ID, "launch-open").click()
    Select(browser.find_element(By.ID, "launch-pipeline")).select_by_value(pipeline)
    box = browser.find_element(By.ID, "launch-input")
    box.clear()
    box.send_keys(value)
    seed_box = browser.find_element(By.ID, "launch-seed")
    seed_box.clear()
    if seed:
        seed_box.send_keys(seed)
    browser.find_element(By.ID, "launch-submit").click()


def _runs(up: Up) -> list[dict[str, Any]]:
    answer = httpx.get(f"{up.url}/api/runs", timeout=10).json()
    return list(answer["runs"])


def test_an_operator_launches_cancels_re_executes_and_re_runs_by_clicking(
    acting: ActingUp, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    browser.get(acting.sign_in + "&name=ann")  # as Jupyter's ?token=
    _wait(browser, "signed in").until(lambda d: d.find_element(By.ID, "launch-open"))
    assert "?token=" not in browser.current_url  # the token left the address bar
    assert "ann" in browser.find_element(By.ID, "operator").text

    # An input the contract refuses is not sent: the page says what the schema says.
    _launch(browser, "greet", '{"name": "ann", "times": 9}')
    error = browser.find_element(By.ID, "launch-error")
    _wait(browser, "refused").until(lambda d: error.is_displayed())
    assert "input.times: 9 is greater than the maximum of 5" in error.text, error.text
    assert browser.execute_script("return window.sisasActions.refused") == 1
    _shot(browser, "actions-launch-refused.png")
    assert _runs(acting) == []  # nothing reached the bus

    # A valid input: the run is launched, the page follows it to its end.
    _launch(browser, "greet", '{"name": "ann", "times": 2}', seed="11")
    _wait(browser, "run page").until(lambda d: d.find_element(By.ID, "run-id").text)
    _wait(browser, "completed", 60).until(lambda d: _status(d) == "completed")
    greet_run = _run_id(browser)
    asked = _requested(acting.env, greet_run)
    assert asked["requested_by"] == "dashboard: ann (dashboard, token)"
    assert asked["seed"] == 11

    # Re-run with the same input: a new run, same input digest and seed, completed.
    _wait(browser, "re-run button").until(
        lambda d: d.find_element(By.ID, "act-rerun").is_displayed()
    )
    assert not browser.find_element(By.ID, "act-cancel").is_displayed()
    assert not browser.find_element(By.ID, "act-resume").is_displayed()  # it did not fail
    browser.find_element(By.ID, "act-rerun").click()
    _wait(browser, "re-run page").until(lambda d: _run_id(d) not in ("", greet_run))
    _wait(browser, "re-run completed", 60).until(lambda d: _status(d) == "completed")
    again = _requested(acting.env, _run_id(browser))
    assert (again["input_digest"], again["seed"]) == (asked["input_digest"], 11)

    # Cancel a running run.
    gate = tmp_path / "gate"
    gate.mkdir()
    browser.get(acting.url)
    _wait(browser, "form").until(lambda d: d.find_element(By.ID, "launch-open"))
    _launch(browser, "gated", json.dumps({"folder": str(gate), "nap": 120}))
    _wait(browser, "running", 60).until(lambda d: _status(d) == "running")
    cancel = browser.find_element(By.ID, "act-cancel")
    assert cancel.is_displayed()
    cancel.click()
    _wait(browser, "cancelled", 60).until(lambda d: _status(d) == "cancelled")
    assert browser.find_element(By.ID, "act-note").text == "cancel requested"
    cancelled = _requested(acting.env, _run_id(browser), "run_cancelled")
    assert cancelled == {
        "kind": "run_cancelled",
        "reason": "cancelled from the dashboard by ann (dashboard, token)",
        "requested_by": "dashboard: ann (dashboard, token)",
    }

    # A run that fails, re-executed from its failure once the cause is fixed.
    browser.get(acting.url)
    _wait(browser, "form").until(lambda d: d.find_element(By.ID, "launch-open"))
    _launch(browser, "gated", json.dumps({"folder": str(gate)}))
    _wait(browser, "failed", 60).until(lambda d: _status(d) == "failed")
    failed = _run_id(browser)
    _shot(browser, "actions-run-failed.png")
    (gate / "open").write_text("")
    browser.find_element(By.ID, "act-resume").click()
    _wait(browser, "resumed page").until(lambda d: _run_id(d) not in ("", failed))
    _wait(browser, "resumed completed", 60).until(lambda d: _status(d) == "completed")
    assert browser.find_element(By.ID, "run-origin").text == f"resumes {failed}"
    resumed = _requested(acting.env, _run_id(browser))
    assert resumed["resume_of"] == failed and resumed["resume_from_phase"] == "second"
    statuses = {r["run_id"]: r["status"] for r in _runs(acting)}
    assert sorted(statuses.values()) == [
        "cancelled",
        "completed",
        "completed",
        "completed",
        "failed",
    ]


def _forged(up: Up, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Origin": up.url, **kwargs.pop("headers", {})}
    return httpx.post(f"{up.url}{path}", headers=headers, timeout=10, **kwargs)


def test_without_a_session_there_is_no_button_and_every_post_is_refused(
    acting: ActingUp, browser: webdriver.Chrome
) -> None:
    browser.get(acting.url)
    _wait(browser, "ready").until(lambda d: d.execute_script("return window.sisasActions.ready"))
    assert browser.find_elements(By.ID, "sign-in")  # may sign in, but has no action
    assert not browser.find_elements(By.ID, "launch-open")
    launch = {"pipeline": "greet", "input": {"name": "x", "times": 1}}
    refused = _forged(acting, "/api/launch", json=launch)
    assert refused.status_code == 403
    assert refused.json()["error"].startswith("sign in as an operator first")
    wrong = _forged(acting, "/api/session", json={"token": "guess"})
    assert wrong.status_code == 401 and "wrong token" in wrong.json()["error"]

    token = acting.sign_in.split("?token=")[1]
    with httpx.Client(base_url=acting.url, headers={"Origin": acting.url}, timeout=10) as op:
        signed = op.post("/api/session", json={"token": token, "name": "bob"})
        assert signed.status_code == 200
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        csrf = signed.json()["csrf"]
        no_csrf = op.post("/api/launch", json=launch)  # the session cookie alone
        assert no_csrf.status_code == 403 and "X-CSRF-Token" in no_csrf.json()["error"]
        bad_csrf = op.post("/api/launch", json=launch, headers={"X-CSRF-Token": "x" + csrf})
        assert bad_csrf.status_code == 403
        elsewhere = op.post(
            "/api/launch", json=launch, headers={"X-CSRF-Token": csrf, "Origin": "http://evil"}
        )
        assert elsewhere.status_code == 403 and "Origin http://evil" in elsewhere.json()["error"]
        no_origin = httpx.post(
            f"{acting.url}/api/launch",
            json=launch,
            headers={"X-CSRF-Token": csrf},
            cookies=op.cookies,
            timeout=10,
        )
        assert no_origin.status_code == 403 and "Origin missing" in no_origin.json()["error"]
        # The server checks the input against the schema too, whatever a page did.
        bad = {"pipeline": "greet", "input": {"name": "x"}}
        checked = op.post("/api/launch", json=bad, headers={"X-CSRF-Token": csrf})
        assert checked.status_code == 400
        assert checked.json()["error"].startswith("input: 'times' is a required property")
        assert _runs(acting) == []
        # Behind a proxy that ends TLS the page's origin is https://: the host decides.
        proxied = acting.url.replace("http://", "https://")
        ok = op.post("/api/launch", json=launch, headers={"X-CSRF-Token": csrf, "Origin": proxied})
        assert ok.status_code == 200, ok.text
        assert ok.json()["run_id"].startswith("greet-")


def test_actions_are_off_unless_the_dashboard_was_started_with_them(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    up = ActingUp(tmp_path / "home", free_port())
    up.start()
    try:
        assert httpx.get(f"{up.url}/api/session").json()["actions"] == "off"
        browser.get(up.url)
        _wait(browser, "ready").until(
            lambda d: d.execute_script("return window.sisasActions.ready")
        )
        assert not browser.find_elements(By.ID, "sign-in")
        assert not browser.find_elements(By.ID, "launch-open")
        for path in ("/api/launch", "/api/session", "/api/runs/r1/cancel"):
            refused = _forged(up, path, json={"token": "x"})
            assert refused.status_code == 403, (path, refused.text)
            assert "--allow-actions" in refused.json()["error"]
    finally:
        up.stop()


# -- with security on -------------------------------------------------------------------


class Secured:
    """A nats-server with the users of `sisas security init`; `sisas up` as the
    orchestrator role (no dashboard), and `sisas dashboard --allow-actions` as the
    auditor (read only) in another process."""

    def __init__(self, tmp_path: Path) -> None:
        self.keys = tmp_path / "keys"
        init_profile(self.keys)
        _add_password_user(self.keys / "auth.conf", "operator", "olga", "right")
        conf = tmp_path / "server.conf"
        conf.write_text('include "keys/auth.conf"\n')
        self.server: NatsServer = spawn_nats(tmp_path / "nats", "-c", str(conf))
        self.tmp = tmp_path
        self.procs: list[subprocess.Popen[str]] = []
        self.url = ""

    def env(self, role: str) -> dict[str, str]:
        return base_env(
            **env_file(self.keys / f"{role}.env"),
            SISAS_NATS_URL=self.server.url,
            SISAS_REPLICAS="1",
            SISAS_HOME=str(self.tmp / f"home-{role}"),
        )

    def start(self) -> None:
        up = subprocess.Popen(
            [*SISAS, "up", "--pipelines", ACTION_PIPES, "--no-dashboard"],
            env=self.env("orchestrator"), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(up)
        assert up.stdout is not None
        for line in up.stdout:  # the panel is printed once the services run
            if "handlers" in line:
                break
        port = free_port()
        dash = subprocess.Popen(
            [*SISAS, "dashboard", "--port", str(port), "--allow-actions"],
            env=self.env("auditor"), cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.procs.append(dash)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert dash.poll() is None, dash.communicate()
            assert time.monotonic() < deadline, "the dashboard did not come up in 60 s"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(2)
                try:
                    proc.communicate(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
        self.server.stop()


def _add_password_user(auth: Path, role: str, user: str, password: str) -> None:
    """Give ``role``'s permissions to a user with a password too, in ``auth`` (the
    ``authorization`` block `sisas security init` wrote: one entry per role, each
    after a ``# role:`` comment)."""
    text = auth.read_text()
    start = text.index(f"    # {role}:")
    end = text.index("\n    # ", start + 1)
    entry = text[start:end]
    nkey = entry[entry.index('nkey: "') :].split("\n", 1)[0]
    twin = entry.replace(f"# {role}:", f"# {role} with a password:").replace(
        nkey, f'user: "{user}"\n      password: "{password}"'
    )
    auth.write_text(text[:end] + "\n" + twin + text[end:])


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    s = Secured(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def _sign_in_with(browser: webdriver.Chrome, url: str, seed: str, name: str) -> None:
    browser.get(url)
    _wait(browser, "sign-in").until(lambda d: d.find_element(By.ID, "sign-in")).click()
    browser.find_element(By.ID, "si-name").send_keys(name)
    browser.find_element(By.ID, "si-seed").send_keys(seed)
    browser.find_element(By.ID, "si-submit").click()


def test_with_security_on_only_the_operators_credentials_act(
    secured: Secured, browser: webdriver.Chrome
) -> None:
    assert httpx.get(f"{secured.url}/api/session").json()["actions"] == "credentials"

    # A seed the server does not know (the operator's "wrong password") is refused.
    _sign_in_with(browser, secured.url, user_seed().decode(), "mallory")
    error = browser.find_element(By.ID, "si-error")
    _wait(browser, "refused", 60).until(lambda d: error.is_displayed())
    assert "the NATS server refused these credentials" in error.text, error.text
    assert "Authorization Violation" in error.text or "authorization" in error.text.lower()

    # The auditor's own seed connects, but the server refuses it a command: no session.
    auditor = (secured.keys / "auditor.nk").read_text().strip()
    _sign_in_with(browser, secured.url, auditor, "audrey")
    error = browser.find_element(By.ID, "si-error")
    _wait(browser, "read only", 60).until(lambda d: error.is_displayed())
    assert "these credentials may only read" in error.text, error.text
    _shot(browser, "actions-auditor-refused.png")
    assert not browser.find_elements(By.ID, "launch-open")

    # The operator's seed: signed in, launches a run that completes; the log names them.
    operator = (secured.keys / "operator.nk").read_text().strip()
    _sign_in_with(browser, secured.url, operator, "olga")
    _wait(browser, "signed in", 60).until(lambda d: d.find_element(By.ID, "launch-open"))
    assert "olga (dashboard, nkey U" in browser.find_element(By.ID, "operator").text
    _launch(browser, "greet", '{"name": "olga", "times": 1}')
    _wait(browser, "completed", 60).until(lambda d: _status(d) == "completed")
    asked = _requested(secured.env("auditor"), _run_id(browser))
    assert asked["requested_by"].startswith("dashboard: olga (dashboard, nkey U")
    _shot(browser, "actions-operator-run.png")

    # A user with a password (the operator's permissions): a wrong password is refused,
    # the right one acts, named by its user.
    url = secured.url
    with httpx.Client(base_url=url, headers={"Origin": url}, timeout=30) as op:
        wrong = op.post("/api/session", json={"user": "olga", "password": "wrong"})
        assert wrong.status_code == 401, wrong.text
        assert "refused these credentials (Authorization Violation)" in wrong.json()["error"]
        signed = op.post("/api/session", json={"name": "o", "user": "olga", "password": "right"})
        assert signed.status_code == 200, signed.text
        csrf = {"X-CSRF-Token": signed.json()["csrf"]}
        launch = {"pipeline": "greet", "input": {"name": "o", "times": 1}}
        started = op.post("/api/launch", json=launch, headers=csrf)
        assert started.status_code == 200, started.text
        run_id = started.json()["run_id"]
    asked = _requested(secured.env("auditor"), run_id)
    assert asked["requested_by"] == "dashboard: o (dashboard, user olga)"


class _Point(BaseModel):
    x: float
    y: float = Field(ge=0)


class _Shape(BaseModel):
    """Nested models ($defs, $ref), a literal, an optional, bounds and lengths."""

    name: str = Field(min_length=2, max_length=8, pattern="^[a-z]+$")
    kind: Literal["line", "ring"]
    points: list[_Point] = Field(min_length=1, max_length=3)
    weight: int | None = Field(default=None, gt=0, lt=10)
    extra: dict[str, bool] = {}


_SHAPES: list[Any] = [
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}]},
    {"name": "ab", "kind": "line", "points": [{"x": 1.5, "y": 2}], "weight": 3},
    {"name": "ab", "kind": "ring", "points": [{"x": 1, "y": 0}], "weight": None},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}], "extra": {"a": True}},
    {"name": "a", "kind": "line", "points": [{"x": 1, "y": 0}]},
    {"name": "abcdefghi", "kind": "line", "points": [{"x": 1, "y": 0}]},
    {"name": "AB", "kind": "line", "points": [{"x": 1, "y": 0}]},
    {"name": "ab", "kind": "square", "points": [{"x": 1, "y": 0}]},
    {"name": "ab", "kind": "line", "points": []},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}] * 4},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": -1}]},
    {"name": "ab", "kind": "line", "points": [{"x": "1", "y": 0}]},
    {"name": "ab", "kind": "line", "points": [{"y": 0}]},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}], "weight": 0},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}], "weight": 10},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}], "weight": 2.5},
    {"name": "ab", "kind": "line", "points": [{"x": 1, "y": 0}], "extra": {"a": 1}},
    {"name": "ab", "points": [{"x": 1, "y": 0}]},
    [],
    None,
    "ab",
]


def test_the_page_and_the_server_judge_an_input_alike(
    acting: ActingUp, browser: webdriver.Chrome
) -> None:
    """The page's schema check (actions.js) and the server's (jsonschema) accept and
    refuse the same inputs, over nested models, literals, optionals, bounds, lengths."""
    schema = TypeAdapter(_Shape).json_schema()
    browser.get(acting.url)
    _wait(browser, "ready").until(lambda d: d.execute_script("return window.sisasActions.ready"))
    page = browser.execute_script(
        "return arguments[0].map((v) => window.sisasActions.checkSchema(v, arguments[1]))",
        _SHAPES,
        schema,
    )
    validator = jsonschema.Draft202012Validator(schema)
    server = [validator.is_valid(v) for v in _SHAPES]
    assert [p is None for p in page] == server, list(zip(page, server, strict=True))
    assert server.count(True) == 4  # the cases cover both sides
    refused = dict(zip(map(json.dumps, _SHAPES), page, strict=True))
    assert refused[json.dumps(_SHAPES[10])] == "input.points[0].y: -1 is less than the minimum of 0"
    assert refused[json.dumps(_SHAPES[17])] == "input: 'kind' is a required property"
