"""`animegen presets`: list the prompt presets (built-in and from a user TOML file)."""

from __future__ import annotations

from pathlib import Path

import typer

from animegen.cli.common import user_errors


def presets_command(
    name: str | None = typer.Argument(None, help="Show every field of this preset instead of the table."),
    file: Path | None = typer.Option(None, "--file", help="TOML file with user presets ([presets.NAME] tables)."),
    example: str = typer.Option("1girl, solo, smile", help="Prompt shown through each preset's template."),
) -> None:
    """List prompt presets and their recommended settings; give a NAME to see its template and negative prompt."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text  # plain text: prompts contain [brackets] that rich would read as markup

    from animegen.prompts.presets import build_prompt, get_preset, list_presets

    console = Console()
    with user_errors():
        if name is not None:
            preset = get_preset(name, file)
            table = Table(title=f"preset {preset.name}", show_header=False)
            table.add_column("key", style="bold")
            table.add_column("value", overflow="fold")
            for key, value in vars(preset).items():
                table.add_row(key, Text(", ".join(value) if isinstance(value, tuple) else str(value)))
            table.add_row("example", Text(build_prompt(preset, example)))
            console.print(table)
            return
        presets = list_presets(file)
        table = Table(title="prompt presets")
        for column in ("name", "sampler", "steps", "cfg", "size", "example prompt", "description"):
            table.add_column(column, overflow="fold")
        def shown(value) -> str:  # None: the preset recommends nothing, generation's default applies
            return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

        for preset in presets:
            cells = (preset.name, shown(preset.sampler), shown(preset.steps), shown(preset.cfg_scale),
                     f"{shown(preset.width)}x{shown(preset.height)}", build_prompt(preset, example),
                     preset.description)
            table.add_row(*(Text(cell) for cell in cells))
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add `animegen presets` to the main app."""
    app.command("presets")(presets_command)
