"""`animegen models ...`: tiny test models and checkpoint tools."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("tiny")
def tiny(
    arch: str = typer.Option("sd15", help="Architecture family: sd15 (alias of sd1) or sdxl."),
    out: Optional[Path] = typer.Option(None, help="Write a diffusers folder here."),
    single_file: Optional[Path] = typer.Option(None, help="Write an A1111-layout .safetensors checkpoint here."),
    seed: int = typer.Option(0, help="Seed for the random weights."),
) -> None:
    """Build a tiny random-weight model of a real architecture (for tests and the quick start)."""
    from animegen.models.tiny import save_tiny_model

    if out is None and single_file is None:
        raise typer.BadParameter("give --out DIR and/or --single-file FILE.safetensors")
    for kind, path in save_tiny_model(arch, out, single_file, seed=seed).items():
        typer.echo(f"wrote {kind}: {path}")
