"""The `animegen` command: a thin Typer layer over the library API, one sub-command module per capability."""

from __future__ import annotations

import typer

from animegen.cli import data as data_cli
from animegen.cli import demo as demo_cli
from animegen.cli import evaluate as eval_cli
from animegen.cli import generate as generate_cli
from animegen.cli import models as models_cli
from animegen.cli import presets as presets_cli
from animegen.cli import serve as serve_cli
from animegen.cli import train as train_cli
from animegen.cli import upscale as upscale_cli
from animegen.cli.common import UserErrorGroup
from animegen.cli.tools import tools_app

app = typer.Typer(help="Anime image generation with SD1.x and SDXL: data, train, generate, eval, serve.",
                  cls=UserErrorGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None)  # help is plain text: "[less]", "[serve]" stay as written
app.add_typer(models_cli.app, name="models", help="Build tiny test models; inspect and convert checkpoints.")
generate_cli.register(app)
presets_cli.register(app)
app.add_typer(data_cli.app, name="data", help="Curate a dataset: ingest, tag, score, caption, balance, export.")
app.add_typer(tools_app, name="tools", help="Model surgery: merge checkpoints; extract, resize, merge, convert LoRAs.")
app.add_typer(train_cli.app, name="train", help="Fine-tune: LoRA family adapters or full fine-tunes.")
app.add_typer(eval_cli.app, name="eval", help="Evaluate: FID, KID, CLIP score, tag adherence, reports.")
upscale_cli.register(app)
serve_cli.register(app)
demo_cli.register(app)

if __name__ == "__main__":
    app()
