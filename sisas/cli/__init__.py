"""The command line: thin commands that parse, call the bus, and render."""
