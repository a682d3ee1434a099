"""`animegen demo`: the whole loop on a tiny model, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from animegen.cli.common import user_errors
from animegen.demo import BASE_STEPS, LORA_STEPS


def demo_command(
    out: Path = typer.Option(Path("demo"), help="Folder for everything the demo makes."),
    steps: int = typer.Option(LORA_STEPS, min=1, help="LoRA training steps."),
    base_steps: int = typer.Option(BASE_STEPS, min=0, help="Pre-training steps of the tiny base on its world of "
                                                           "colour fields (0: keep its random weights); kept in "
                                                           "OUT/model for reruns."),
    seed: int = typer.Option(0, help="Seed for the model, data, training and generation."),
    threads: int = typer.Option(1, min=1, help="CPU threads for torch; the demo's tensors are so small that "
                                               "more threads only wait for each other."),
) -> None:
    """Pre-train a tiny base, make a dataset, curate it (ingest, tag, caption, balance), train a LoRA on it,
    generate with and without the LoRA, evaluate, write the report and say whether the LoRA learned the
    concept."""
    from animegen.demo import run_demo

    with user_errors():
        result = run_demo(out, steps=steps, base_steps=base_steps, seed=seed, threads=threads, log=typer.echo)
    typer.echo(f"report: {result.comparison}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
