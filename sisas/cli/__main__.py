"""``python -m sisas.cli``: the same as the ``sisas`` command."""

from sisas.cli.main import main

main()
