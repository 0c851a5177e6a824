"""A pipeline with a side effect a user would notice twice: ``publish`` appends a line to
the file its input names (off unless ``--set publish.enabled=true``). Loaded by file path
by tests/test_replay_trust.py, also in the CLI processes it starts."""

from __future__ import annotations

from pathlib import Path

from sisas.pipeline import Context, Pipeline

posting = Pipeline("posting", version="1")


@posting.phase()
def compose(ctx: Context, input: dict[str, str]) -> dict[str, str]:
    """The post; ``input`` may carry padding (a large input goes to the object store)."""
    return {"outbox": input["outbox"], "text": f"hello from {ctx.run_id}"}


@posting.phase(side_effects=True)
def publish(ctx: Context, compose: dict[str, str]) -> str:
    """Posts: one line appended to the outbox file per execution."""
    with Path(compose["outbox"]).open("a") as f:
        f.write(compose["text"] + "\n")
    return compose["text"]


@posting.phase()
def receipt(ctx: Context, compose: dict[str, str], publish: str) -> dict[str, object]:
    """Reads the recorded output of ``publish`` on rerun, as of every phase before it."""
    return {"outbox": compose["outbox"], "chars": len(publish)}
