"""The live web dashboard (`sisas dashboard`, served by `sisas up` too): runs and run
pages kept current by server-sent events from the log. Read-only."""

from sisas.dashboard.server import DEFAULT_PORT, serving_dashboard

__all__ = ["DEFAULT_PORT", "serving_dashboard"]
