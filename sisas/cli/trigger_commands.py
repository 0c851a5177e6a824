"""``sisas triggers``: run the trigger service, or explain rules against a sample message."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from sisas.bus.runtime import open_bus
from sisas.cli.app import cli, console, err_console, load_settings, run_async, stop_on_signals
from sisas.errors import UsageError
from sisas.handlers.triggers import Rule, evaluate, message_id, parse_rules
from sisas.services.triggers import TriggerService

__all__ = ["load_rules", "read_message", "triggers"]

DEFAULT_FILE = "sisas.toml"


def load_rules(path: str | None, *, fix: str = "pass --triggers FILE") -> list[Rule]:
    """The rules in ``path`` (default ./sisas.toml). Raises UsageError naming the fix,
    ``fix`` being how the command that asked is given a rules file."""
    file = Path(path or DEFAULT_FILE)
    try:
        text = file.read_text()
    except FileNotFoundError:
        hint = "" if path else f" (the default, {DEFAULT_FILE} in this folder)"
        raise UsageError(f"no rules file {file}{hint}: {fix}") from None
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}; {fix}") from None
    return parse_rules(text, str(file))


def read_message(message: str) -> tuple[str, Any]:
    """MESSAGE of ``triggers test`` (the text of the file it names, or itself as JSON
    text) and its decoded JSON. Raises UsageError: no such file, an unreadable file, or
    text that is not JSON."""
    path = Path(message)
    try:
        is_file = path.is_file()
    except (OSError, ValueError):  # JSON text too long, or not fit, for a file name
        is_file = False
    text, what = message, "the message"
    if is_file:
        try:
            text, what = path.read_text(), message
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read {message} ({why}): pass a readable JSON file") from None
    try:
        return text, json.loads(text)
    except ValueError as exc:
        if not is_file and _looks_like_a_path(message):
            raise UsageError(
                f"no such file {message}: pass an existing JSON file as MESSAGE, "
                "or the message itself as JSON text"
            ) from None
        raise UsageError(f"{what} is not JSON ({exc}): pass a JSON file or JSON text") from None


def _looks_like_a_path(text: str) -> bool:
    """Whether MESSAGE was meant as a file name rather than as (broken) JSON text."""
    stripped = text.strip()
    if not stripped or stripped[0] in '{["-0123456789' or stripped in ("true", "false", "null"):
        return False
    return "/" in stripped or stripped.endswith(".json") or not any(c.isspace() for c in stripped)


@cli.group()
def triggers() -> None:
    """Start runs from upstream messages: rules map a subject and a filter to a run."""


@triggers.command("run")
@click.option("--triggers", "rules_file", default=None, help="Rules file (default ./sisas.toml).")
@run_async
async def run_triggers(rules_file: str | None) -> None:
    """Evaluate upstream messages until Ctrl-C; each message starts one run per rule."""
    rules = load_rules(rules_file)
    stop = stop_on_signals()
    async with open_bus(load_settings(), name="sisas-triggers") as bus:
        service = TriggerService(bus, rules)
        await service.start()
        names = ", ".join(f"{r.name} ({r.subject} -> {r.pipeline})" for r in rules)
        console.print(f"triggers: {names}; Ctrl-C to stop")
        await service.run(stop)
    err_console.print(f"stopped: {service.evaluated} evaluated, {service.started} runs started")


@triggers.command("test")
@click.argument("rules_file")
@click.argument("message")
@click.option("--subject", default=None, help="Subject it arrives on (default: the rule's own).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def test_rules(rules_file: str, message: str, subject: str | None, as_json: bool) -> None:
    """Explain each rule of RULES_FILE against MESSAGE (a JSON file, or JSON text).

    Exit 0 when a rule matches, 1 when none does, 2 for a bad file or message.
    """
    rules = load_rules(
        rules_file, fix="check the path of RULES_FILE (sisas triggers test RULES_FILE MESSAGE)"
    )
    text, decoded = read_message(message)
    rows = []
    for rule in rules:
        subj = subject or rule.subject.replace(">", "x").replace("*", "x")
        mid = message_id(subj, text.encode(), None)
        ev = evaluate(rule, subj, decoded, mid)
        rows.append(
            {
                "trigger": rule.name,
                "subject": subj,
                "matched": ev.matched,
                "reason": ev.reason,
                "pipeline": rule.pipeline,
                "run_id": ev.run_id,
                "input": ev.input,
            }
        )
    if as_json:
        print(json.dumps({"results": rows}))
    else:
        for r in rows:
            mark = "[green]matches[/]" if r["matched"] else "[yellow]does not match[/]"
            console.print(f"[bold]{r['trigger']}[/] on {r['subject']}: {mark}: {r['reason']}")
            if r["matched"]:
                console.print(f"  would start {r['pipeline']} run {r['run_id']} with input:")
                console.print_json(json.dumps(r["input"]))
    sys.exit(0 if any(r["matched"] for r in rows) else 1)
