"""The radiologists' web worklist: server-rendered pages over the same database as the CLI."""
