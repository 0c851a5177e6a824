"""A pipeline that reads a secret (loaded by file path, also in child processes)."""

from __future__ import annotations

from sisas.pipeline import Context, Pipeline

posting = Pipeline("secret_posting", version="1")


@posting.phase(secrets=["db_password"])
def connect(ctx: Context, input: dict[str, str]) -> int:
    return len(ctx.secret("db_password"))  # uses it; never returns or logs it


@posting.phase(secrets=["db_password"], timeout=30)
def isolated(ctx: Context, connect: int) -> int:  # in a child process
    return connect + len(ctx.secret("db_password"))


@posting.phase()
def careless(ctx: Context, isolated: int) -> int:
    return len(ctx.secret("db_password"))  # not declared: refused
