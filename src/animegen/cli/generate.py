"""`animegen generate`, `animegen samplers`, `animegen presets` (being written)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the generation commands to the main app."""
