"""Long-running shells: each consumes from the bus, calls the pure core, appends or
answers, and acknowledges. The orchestrator (inputs -> decide -> one append), the worker
(scheduled phases -> execute -> report), isolation (phases in child processes: each worker's
warm pool of them), the trigger service, the query service, and the host that runs them
together."""

__all__: list[str] = []
