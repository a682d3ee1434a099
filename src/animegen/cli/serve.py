"""`animegen serve` (being written)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the `serve` command to the main app."""
