"""``--tag KEY=VALUE``, repeatable: the option ``run``, ``batch`` and ``runs`` share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from sisas.errors import InvalidName
from sisas.signals.names import parse_tag

__all__ = ["tag_option"]

F = TypeVar("F", bound=Callable[..., Any])


def _tags(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for text in values:
        try:
            key, value = parse_tag(text)
        except InvalidName as exc:
            raise click.BadParameter(str(exc)) from None
        tags[key] = value
    return tags


def tag_option(help: str) -> Callable[[F], F]:
    """``--tag KEY=VALUE`` (repeatable), given to the command as ``tags: dict[str, str]``."""
    return click.option(
        "--tag", "tags", multiple=True, metavar="KEY=VALUE", callback=_tags, help=help
    )
