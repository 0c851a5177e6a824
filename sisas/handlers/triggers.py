"""Trigger rules: an upstream message on a subject, filtered, becomes a pipeline run.

A rules file (TOML, `sisas.toml` or `--triggers FILE`)::

    [[trigger]]
    name = "new-plan"
    subject = "upstream.plans.>"          # NATS subject pattern (`*` one token, `>` the rest)
    pipeline = "policy_evaluation"
    when = { status = "ready", "meta.kind" = ["plan", "revision"] }   # equality, or one of
    input = "$.plan"                     # the run input: `$` (the message), `$.path`, or a table
    config = { "executor.retries" = 2 }  # optional run configuration
    seed = "$.seed"                      # optional: a path to an integer, or an integer

Pure: evaluating a rule reads only the message. Each upstream message starts at most one
run per rule, whose id is derived from the rule and the message id, so a redelivered or
duplicated message names the same run.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from sisas.errors import UsageError
from sisas.handlers.derive import keyed_run_id
from sisas.signals.kinds import Scalar
from sisas.signals.names import check_name

T = TypeVar("T")

__all__ = [
    "Evaluation",
    "Rule",
    "evaluate",
    "fill_template",
    "message_id",
    "parse_rules",
    "explain_invalid",
    "subject_matches",
    "toml_tables",
]


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    subject: str
    pipeline: str
    when: dict[str, Any] = {}
    input: Any = "$"
    config: dict[str, Scalar] = {}
    seed: int | str | None = None
    tags: dict[str, str] = {}
    """Tags of the runs the rule starts (beside ``trigger=NAME``)."""


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    """What a rule made of a message: whether it matched, why, and the run it names."""

    trigger: str
    matched: bool
    reason: str
    pipeline: str = ""
    run_id: str = ""
    input: Any = None
    seed: int | None = None
    config: dict[str, Scalar] = {}
    tags: dict[str, str] = {}


def _allowed(annotation: Any) -> list[str]:
    """What a field annotated ``annotation`` takes, when it is a choice: its literal
    values (``'skip'``), and ``a whole number`` beside them for an ``int``."""
    if typing.get_origin(annotation) is typing.Literal:
        return [repr(v) for v in typing.get_args(annotation)]
    found: list[str] = []
    for arg in typing.get_args(annotation):
        found += ["a whole number"] if arg is int else _allowed(arg)
    return found if any(not f.startswith("a ") for f in found) else []


def explain_invalid(exc: msgspec.ValidationError, struct: type[Any]) -> str:
    """``exc``'s message with what would have been right: the values a choice takes, or
    the fields a table may have."""
    text = str(exc)
    fields = getattr(struct, "__struct_fields__", ())
    if "unknown field" in text and fields:
        return f"{text} (the fields are {', '.join(fields)})"
    at = re.search(r"at `\$\.(\w+)`", text)
    if at is None:
        return text
    try:
        hints = typing.get_type_hints(struct)
    except (NameError, TypeError):
        return text
    allowed = _allowed(hints.get(at.group(1)))
    return f"{text}: write {' or '.join(allowed)}" if allowed else text


def toml_tables(
    text: str, table: str, struct: type[T], check: Callable[[T, int], T], where: str
) -> list[T]:
    """The ``[[table]]`` tables of TOML ``text`` as ``struct``s, each passed through
    ``check(value, number)``, their ``name``s unique. Raises :class:`UsageError` naming
    what is wrong (the file, the table and its number). Shared by triggers and schedules."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{where} is not valid TOML: {exc}") from None
    raw = data.get(table, [])
    if not isinstance(raw, list) or not raw:
        raise UsageError(f"{where} has no [[{table}]] tables: add at least one {table}")
    found = []
    for i, entry in enumerate(raw):
        try:
            value = msgspec.convert(entry, struct)
        except msgspec.ValidationError as exc:
            raise UsageError(f"{where}: {table} #{i + 1}: {explain_invalid(exc, struct)}") from None
        found.append(check(value, i + 1))
    names = [str(getattr(v, "name", "")) for v in found]
    if len(set(names)) != len(names):
        raise UsageError(f"{where}: {table} names must be unique (got {', '.join(names)})")
    return found


def parse_rules(text: str, where: str = "the rules file") -> list[Rule]:
    """The rules in ``text`` (TOML). Raises :class:`UsageError` naming what is wrong."""

    def checked(rule: Rule, number: int) -> Rule:
        check_name(rule.name, f"trigger #{number} name")
        check_name(rule.pipeline, f"trigger {rule.name} pipeline")
        if not rule.subject or any(not t for t in rule.subject.split(".")):
            raise UsageError(f"{where}: trigger {rule.name}: subject {rule.subject!r} is empty")
        if rule.subject.startswith("sisas."):
            raise UsageError(
                f"{where}: trigger {rule.name}: subjects under sisas. are sisas's own; "
                "listen to your upstream system's subjects"
            )
        return rule

    return toml_tables(text, "trigger", Rule, checked, where)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more trailing tokens."""
    pat, sub = pattern.split("."), subject.split(".")
    for i, token in enumerate(pat):
        if token == ">":
            return len(sub) > i
        if i >= len(sub) or (token != "*" and token != sub[i]):
            return False
    return len(pat) == len(sub)


def message_id(subject: str, data: bytes, header_id: str | None) -> str:
    """The upstream message's identity: its Nats-Msg-Id, else a digest of subject and bytes."""
    if header_id:
        return header_id
    return "sha256:" + hashlib.sha256(subject.encode() + b"\0" + data).hexdigest()


_MISSING = object()


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut short: a reason quotes the message, which may be huge."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _path(message: Any, path: str) -> Any:
    if path == "$":
        return message
    if not path.startswith("$."):
        return _MISSING
    value = message
    for part in path[2:].split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _build(template: Any, message: Any, missing: list[str]) -> Any:
    if isinstance(template, str) and template.startswith("$"):
        value = _path(message, template)
        if value is _MISSING:
            missing.append(template)
            return None
        return value
    if isinstance(template, dict):
        return {k: _build(v, message, missing) for k, v in template.items()}
    if isinstance(template, list):
        return [_build(v, message, missing) for v in template]
    return template


def fill_template(template: Any, document: Any) -> tuple[Any, list[str]]:
    """``template`` with each ``$`` / ``$.path`` string replaced by that part of
    ``document``, and the paths ``document`` lacks (each filled with None)."""
    missing: list[str] = []
    return _build(template, document, missing), missing


def evaluate(rule: Rule, subject: str, message: Any, msg_id: str) -> Evaluation:
    """Whether ``rule`` starts a run for ``message`` (decoded JSON), and why."""

    def no(reason: str) -> Evaluation:
        return Evaluation(trigger=rule.name, matched=False, reason=reason)

    if not subject_matches(rule.subject, subject):
        return no(f"subject {subject} does not match {rule.subject}")
    for path, expected in rule.when.items():
        key = path if path.startswith("$") else f"$.{path}"
        value = _path(message, key)
        if value is _MISSING:
            return no(f"{path} is missing from the message")
        if isinstance(expected, list) and value not in expected:
            return no(f"{path} is {_shown(value)}, not one of {expected!r}")
        if not isinstance(expected, list) and value != expected:
            return no(f"{path} is {_shown(value)}, not {expected!r}")
    missing: list[str] = []
    data = _build(rule.input, message, missing)
    seed = _build(rule.seed, message, missing) if rule.seed is not None else None
    if missing:
        return no(f"the input needs {', '.join(missing)}, which the message lacks")
    if rule.seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        return no(f"seed {rule.seed} is {_shown(seed)}, not an integer")
    filters = ", ".join(f"{k} = {v!r}" for k, v in rule.when.items()) or "no filter"
    return Evaluation(
        trigger=rule.name,
        matched=True,
        reason=f"subject matches {rule.subject}; {filters}",
        pipeline=rule.pipeline,
        run_id=keyed_run_id(rule.pipeline, f"trigger:{rule.name}:{msg_id}"),
        input=data,
        seed=seed,
        config=dict(rule.config),
        tags={**rule.tags, "trigger": rule.name},
    )
