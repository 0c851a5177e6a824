"""The live web dashboard (`sisas dashboard`, served by `sisas up` too): runs and run
pages kept current by server-sent events from the log. Read-only."""
