"""`animegen train CONFIG.toml [--resume | --overwrite] [--set key=value ...]`; `animegen train init --preset NAME`."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.core import TyperGroup

from animegen.cli.common import fail
from animegen.core.files import atomic_write, writable_folder


class _ConfigOrCommand(TyperGroup):
    """`animegen train CONFIG.toml ...` runs a config; `animegen train init ...` is the sub-command.

    A click group cannot take an optional positional argument next to sub-commands, so a first argument
    that is not a sub-command name is routed to the hidden `run` command.
    """

    def parse_args(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_ConfigOrCommand, no_args_is_help=True, help="Fine-tune: LoRA family adapters or full fine-tunes.",
                  epilog="Run a config: animegen train CONFIG.toml [--resume | --overwrite] [--set key=value ...] "
                         "[--stop-at N]")


@app.command("run", hidden=True)
def run_command(
    config: Path = typer.Argument(..., help="Training config (TOML); write one with `animegen train init`."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in train.output_dir "
                                "(an error when there is none)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run's export and checkpoints in "
                                   "train.output_dir (train.overwrite); without it such a folder is refused."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a config key: --set optimizer.lr=1e-4"),
    stop_at: int | None = typer.Option(None, "--stop-at", help="Stop after this step with a checkpoint "
                                          "(for time-boxed/preemptible jobs); finish later with --resume."),
) -> None:
    """Train from CONFIG.toml."""
    from animegen.train.config import load_config
    from animegen.train.trainer import NonFiniteLossError, train

    # user errors (config, data, model, unwritable output_dir, full disk) become one line in cli/common
    cfg = load_config(config, [*(set_ or []), *(["train.overwrite=true"] if overwrite else [])])
    writable_folder(cfg.train.output_dir)  # fail before the model is loaded, not at the first checkpoint
    try:
        result = train(cfg, resume=resume, stop_at=stop_at)
    except NonFiniteLossError as exc:
        fail(str(exc), code=1)
    if not result.finished:
        typer.echo(f"stopped after step {result.step}; continue with --resume")
        return
    from animegen.train.config import stage_config
    from animegen.train.export import export_summary

    final = stage_config(cfg, len(cfg.stages) - 1) if cfg.stages else cfg
    for line in export_summary(final, result.exported):
        typer.echo(line)


@app.command("init")
def init_command(
    preset: str = typer.Option(..., "--preset", help="character-ia3, character-lora-sdxl, style-lora, "
                               "waifu-finetune or dashanime-two-stage"),
    out: Path = typer.Option(..., "--out", help="Where to write the annotated config."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write an annotated config for a preset recipe."""
    from animegen.train.presets import preset_text

    text = preset_text(preset)
    if out.exists() and not force:
        fail(f"{out} exists; pass --force to overwrite it")
    atomic_write(out, text)
    typer.echo(f"wrote {out} (preset {preset}); set model.base and data.datasets, then `animegen train {out}`")
