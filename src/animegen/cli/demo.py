"""`animegen demo`: the whole loop on a tiny model, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from animegen.cli.common import user_errors


def demo_command(
    out: Path = typer.Option(Path("demo"), help="Folder for everything the demo makes."),
    steps: int = typer.Option(60, min=1, help="LoRA training steps."),
    seed: int = typer.Option(0, help="Seed for the model, data, training and generation."),
    threads: int = typer.Option(1, min=1, help="CPU threads for torch; the demo's tensors are so small that "
                                               "more threads only wait for each other."),
) -> None:
    """Make a dataset, curate it (ingest, tag, caption, balance), train a LoRA on it, generate with and
    without the LoRA, evaluate, write the report."""
    from animegen.demo import run_demo

    with user_errors():
        result = run_demo(out, steps=steps, seed=seed, threads=threads, log=typer.echo)
    typer.echo(f"report: {result.comparison}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
