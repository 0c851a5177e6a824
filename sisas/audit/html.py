"""The audit report as one self-contained HTML page: no script, no external resource."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from html import escape
from typing import Any

from sisas.handlers.state import RunState
from sisas.replay.verdicts import ArtifactProblem, RerunVerdict, RunVerdict
from sisas.signals.envelope import Signal
from sisas.signals.kinds import ContractChecked, InvariantChecked

__all__ = ["render_report"]

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{padding:3px 8px;text-align:left;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f6f6f6}
code,.mono{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:600}
.ok{background:#1a7f37}.bad{background:#cf222e}.warn{background:#9a6700}.dim{color:#777}
.completed{color:#1a7f37}.failed,.timed_out{color:#cf222e}.skipped{color:#777}
.track{position:relative;height:18px;background:#f3f3f3;border-radius:3px}
.bar{position:absolute;top:2px;height:14px;border-radius:3px;min-width:2px}
.bar.completed{background:#2da44e}.bar.failed,.bar.timed_out{background:#cf222e}
.bar.skipped{background:#bbb}.bar.running,.bar.scheduled,.bar.retrying{background:#0969da}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value))


def _badge(ok: bool, yes: str, no: str) -> str:
    return f'<span class="badge {"ok" if ok else "bad"}">{_e(yes if ok else no)}</span>'


def _row(*cells: object, header: bool = False) -> str:
    tag = "th" if header else "td"
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _timeline(state: RunState) -> str:
    start = state.started_at or state.requested_at
    end = state.ended_at
    times = [p.ended_at for p in state.phases.values() if p.ended_at] + ([end] if end else [])
    if start is None or not times:
        return '<p class="dim">no timing recorded</p>'
    span = max((max(times) - start).total_seconds(), 1e-6)

    def pct(t: datetime | None) -> float:
        return 0.0 if t is None else max(0.0, min(100.0, (t - start).total_seconds() / span * 100))

    rows = []
    for name, p in state.phases.items():
        left = pct(p.scheduled_at or p.ended_at)
        width = max(pct(p.ended_at) - left, 0.3) if p.ended_at else 100 - left
        secs = f"{p.duration:.3f}s" if p.duration else ""
        bar = (
            f'<div class="track"><div class="bar {_e(p.status)}" '
            f'style="left:{left:.2f}%;width:{width:.2f}%" '
            f'title="{_e(p.status)} {secs}"></div></div>'
        )
        rows.append(_row(_e(name), f'<span class="{_e(p.status)}">{_e(p.status)}</span>', bar))
    return (
        f"<p class=dim>{span:.3f} s from run start to the last phase's end</p><table>"
        + _row("phase", "status", "timeline", header=True)
        + "".join(rows)
        + "</table>"
    )


def _checks(signals: Sequence[Signal]) -> str:
    rows = []
    for s in signals:
        b = s.body
        where = s.phase + ("" if getattr(b, "item", None) is None else f"[{b.item}]")  # type: ignore[union-attr]
        if isinstance(b, ContractChecked):
            detail = "; ".join(f"{v.path}: {v.message}" for v in b.violations)
            name, kind = f"{b.boundary}:{b.contract}", "contract"
        elif isinstance(b, InvariantChecked):
            detail = f"observed {b.observed!r}, expected {b.expected!r}" if b.observed else ""
            detail = (b.description + " " + detail).strip()
            name, kind = b.invariant, "invariant"
        else:
            continue
        ok = f'<span class="{"completed" if b.passed else "failed"}">'
        rows.append(
            _row(
                s.seq,
                _e(where),
                s.attempt,
                kind,
                f"<code>{_e(name)}</code>",
                ok + ("passed" if b.passed else "FAILED") + "</span>",
                _e(detail),
            )
        )
    if not rows:
        return '<p class="dim">no contract or invariant was checked</p>'
    head = _row("seq", "phase", "attempt", "type", "check", "result", "detail", header=True)
    return f"<p>{len(rows)} checks</p><table>{head}{''.join(rows)}</table>"


def _phases(manifest: Mapping[str, Any]) -> str:
    rows = []
    for p in manifest.get("phases", []):
        error = p.get("error") or {}
        rows.append(
            _row(
                _e(p.get("name")),
                f'<span class="{_e(p.get("status"))}">{_e(p.get("status"))}</span>',
                _e(p.get("attempts")),
                _e(p.get("duration")),
                f"<code>{_e(p.get('output_digest') or '')}</code>",
                _e(error.get("message") or p.get("skip_reason") or ""),
            )
        )
    head = _row("phase", "status", "attempts", "seconds", "output digest", "note", header=True)
    return f"<table>{head}{''.join(rows)}</table>"


def _environment(env: Any) -> str:
    if not isinstance(env, dict):
        return '<span class="dim">not recorded</span>'
    packages = env.get("packages") or {}
    listed = ", ".join(f"{_e(k)} {_e(v)}" for k, v in packages.items())
    return (
        f"{_e(env.get('implementation'))} {_e(env.get('python'))} on "
        f"{_e(env.get('platform'))}, nats-server {_e(env.get('nats_server') or '-')}"
        f'<br><span class="dim">{len(packages)} distributions: {listed}</span>'
    )


def _problems(problems: Sequence[ArtifactProblem]) -> str:
    head = _row("artifact", "problem", "used by the run as", "detail", header=True)
    rows = "".join(
        _row(
            f"<code>{_e(p.digest)}</code>",
            f'<span class="failed">{_e(p.problem)}</span>',
            _e("; ".join(p.used_as)),
            _e(p.detail),
        )
        for p in problems
    )
    return f"<table>{head}{rows}</table>"


def _evidence(problems: Sequence[ArtifactProblem], artifacts: int) -> str:
    if not problems:
        return (
            f"<p>{_badge(True, 'EVIDENCE COMPLETE', '')} every one of the {artifacts} "
            "artifacts the run read or wrote was read from the store and matches its "
            "digest.</p>"
        )
    return (
        f"<p>{_badge(False, '', 'EVIDENCE INCOMPLETE')} {len(problems)} of the {artifacts} "
        "artifacts the run read or wrote could not be read as the log records them: "
        "nothing that rests on them can be vouched for. The log itself is judged apart "
        "(above).</p>" + _problems(problems)
    )


def _rerun(rerun: RerunVerdict | None) -> str:
    if rerun is None:
        return '<p class="dim">not rerun at export (use <code>sisas audit RUN --rerun</code>)</p>'
    shown = rerun.deterministic or rerun.first_divergence is not None or rerun.evidence_complete
    out = [
        "<p>"
        + (
            _badge(rerun.deterministic, "deterministic", "NOT deterministic")
            if shown
            else _badge(False, "", "NOT shown deterministic")
        )
        + ("" if rerun.evidence_complete else " " + _badge(False, "", "evidence incomplete"))
        + f" {len(rerun.phases)} attempts re-executed on {rerun.workers} worker(s); "
        f"fingerprint <code>{_e(rerun.fingerprint)}</code>"
        + ("" if rerun.fingerprint == rerun.recorded_fingerprint else " (differs)")
        + "</p>"
    ]
    if rerun.artifact_problems:
        out.append("<p>Artifacts the rerun could not read as recorded:</p>")
        out.append(_problems(rerun.artifact_problems))
    if rerun.side_effects_rerun:
        out.append(
            "<p>Side effects executed again (<code>--include-side-effects</code>): "
            + ", ".join(f"<code>{_e(p)}</code>" for p in rerun.side_effects_rerun)
            + "</p>"
        )
    if rerun.first_divergence is not None:
        d = rerun.first_divergence
        where = d.phase + ("" if d.item is None else f"[{d.item}]")
        out.append(f"<p>First divergent phase: <b>{_e(where)}</b></p><table>")
        out.append(_row("field", "recorded", "rerun", header=True))
        out.extend(_row(_e(f.path), _e(f.recorded), _e(f.new)) for f in d.diff[:50])
        out.extend(_row(_e(c.check), _e(c.recorded), _e(c.new)) for c in d.checks)
        out.append("</table>")
    for name, why in rerun.not_rerun.items():
        out.append(f'<p class="dim">not rerun: {_e(name)}: {_e(why)}</p>')
    if rerun.recorded_environment is None:
        out.append('<p class="dim">environment: not recorded by the run</p>')
    elif rerun.environment_changes:
        out.append("<p>Environment of the rerun differs from the recorded one:</p><ul>")
        out.extend(f"<li><code>{_e(line)}</code></li>" for line in rerun.environment_changes)
        out.append("</ul>")
    else:
        out.append('<p class="dim">environment: the same as recorded</p>')
    return "".join(out)


def _signals(signals: Sequence[Signal]) -> str:
    head = _row("seq", "at", "kind", "phase", "attempt", "hash", header=True)
    rows = "".join(
        _row(
            s.seq,
            _e(s.at.isoformat()),
            _e(s.kind),
            _e(s.phase),
            s.attempt,
            f"<code>{_e(s.hash[:16])}</code>{' ✎' if s.sig else ''}",
        )
        for s in signals
    )
    return (
        f"<details><summary>{len(signals)} signals (✎ signed)</summary>"
        f"<table>{head}{rows}</table></details>"
    )


def render_report(
    *,
    manifest: Mapping[str, Any],
    verdict: RunVerdict,
    state: RunState,
    signals: Sequence[Signal],
    rerun: RerunVerdict | None = None,
    evidence: Sequence[ArtifactProblem] = (),
    artifacts: int = 0,
    generated_with: str = "",
) -> str:
    """The whole report page for one run: whether its log is intact (chain, placement,
    signatures) and, apart, whether its evidence is complete (``evidence``: the artifacts
    among the run's ``artifacts`` that were missing or damaged)."""
    summary = [
        ("pipeline", f"{_e(manifest.get('pipeline'))} {_e(manifest.get('version'))}"),
        ("status", f'<span class="{_e(verdict.status)}">{_e(verdict.status)}</span>'),
        ("fingerprint", f"<code>{_e(verdict.fingerprint or '-')}</code>"),
        ("code fingerprint", f"<code>{_e(manifest.get('code_fingerprint'))}</code>"),
        ("environment", _environment(manifest.get("environment"))),
        ("seed", _e(manifest.get("seed"))),
        ("input digest", f"<code>{_e(manifest.get('input_digest'))}</code>"),
        ("chain", f"{verdict.signals} signals, head <code>{_e(verdict.head_hash)}</code>"),
        ("state digest", f"<code>{_e(verdict.state_digest)}</code>"),
        (
            "signatures",
            _e(verdict.signed)
            + (" by " + ", ".join(_e(k) for k in verdict.signers) if verdict.signers else ""),
        ),
        ("started / ended", f"{_e(manifest.get('started_at'))} / {_e(manifest.get('ended_at'))}"),
    ]
    findings = "".join(
        _row(_e(f.problem), f.stream_seq or "", f.run_seq or "", _e(f.kind), _e(f.message))
        for f in verdict.findings
    )
    findings_html = (
        "<table>"
        + _row("problem", "stream seq", "run seq", "kind", "what", header=True)
        + findings
        + "</table>"
        if findings
        else "<p>No problem found: every hash and link verified, no gap, nothing out of place.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>sisas audit: {_e(verdict.run_id)}</title><style>{_CSS}</style></head><body>
<h1>Audit of run <code>{_e(verdict.run_id)}</code></h1>
<p>{_badge(verdict.intact, "LOG INTACT", "LOG NOT INTACT")} chain, placement and signatures
verified from the log; state refolded ({_e(verdict.projection)} to the projection).
{_badge(not evidence, "EVIDENCE COMPLETE", "EVIDENCE INCOMPLETE")} the run's artifacts
(input, outputs) against their digests.</p>
<table>{"".join(_row(f"<b>{k}</b>", v) for k, v in summary)}</table>
<h2>Verification</h2>{findings_html}
<h2>Evidence</h2>{_evidence(evidence, artifacts)}
<h2>Rerun</h2>{_rerun(rerun)}
<h2>Timeline</h2>{_timeline(state)}
<h2>Phases</h2>{_phases(manifest)}
<h2>Contracts and invariants</h2>{_checks(signals)}
<h2>Signals</h2>{_signals(signals)}
<p class="dim">Generated by {_e(generated_with)}. Check this bundle offline with
<code>sisas audit verify DIR</code>.</p>
</body></html>
"""
