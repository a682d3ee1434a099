"""Model surgery commands (`tools_app`): checkpoint merges and the LoRA tools of `models/merge.py` and
`models/lora/tools.py`. To be mounted by the root app (`animegen models ...` or `animegen tools ...`);
torch loads only when a command runs."""

from __future__ import annotations

from pathlib import Path

import typer

from animegen.cli.common import fail, user_errors

tools_app = typer.Typer(no_args_is_help=True, help="Merge checkpoints; extract, resize, merge and convert LoRAs.")


def _weighted(items: list[str], what: str) -> list[tuple[Path, float]]:
    """`file.safetensors[:weight]` items (weight 1.0 when omitted)."""
    out = []
    for item in items:
        path, sep, weight = item.rpartition(":")
        if not sep or not path:
            path, weight = item, "1"
        try:
            out.append((Path(path), float(weight)))
        except ValueError:
            fail(f"{what} {item!r}: give FILE or FILE:WEIGHT, e.g. style.safetensors:0.8")
    return out


def _alpha(alpha: str, block: list[str], a: Path):
    """One number, supermerger's comma list (BASE first), or one number with --block NAME=W overrides."""
    from animegen.models.merge import block_names, block_weights, unet_config_of

    if "," not in alpha and not block:
        return float(alpha)
    config = unet_config_of(a)
    weights = block_weights(alpha, config) if "," in alpha else dict.fromkeys(block_names(config), float(alpha))
    for item in block:
        name, sep, value = item.partition("=")
        if not sep:
            fail(f"--block {item!r}: give NAME=WEIGHT, e.g. IN03=0.7")
        weights[name.strip().upper()] = float(value)
    return weights


@tools_app.command("merge")
def merge_cmd(
    a: Path = typer.Argument(..., help="Model A (single .safetensors file or diffusers folder): the base."),
    b: Path = typer.Argument(..., help="Model B."),
    c: Path | None = typer.Argument(None, help="Model C (add-difference only: A + alpha * (B - C))."),
    out: Path = typer.Option(..., "--out", help="The merged .safetensors file (or folder, for folders)."),
    mode: str = typer.Option("weighted_sum", help="weighted_sum ((1-a)A + aB) or add_difference (A + a(B-C))."),
    alpha: str = typer.Option("0.5", help="One weight, or supermerger's block list 'BASE,IN00,...,OUT11'."),
    block: list[str] = typer.Option([], help="Per-block override NAME=WEIGHT (e.g. IN03=0.7); repeatable."),
) -> None:
    """Merge checkpoints tensor by tensor (bounded memory), optionally per UNet block."""
    with user_errors():
        from animegen.models.merge import merge_checkpoints

        report = merge_checkpoints(a, b, c, mode=mode, alpha=_alpha(alpha, block, a), out=out)
        typer.echo(f"wrote {report.out}: {report.merged} tensors merged, {len(report.kept_from_a)} kept from A, "
                   f"{len(report.added_from_b)} added from B")


def _print_ranks(report: dict, verbose: bool) -> None:
    if not report:
        return
    if verbose:
        for target, info in report.items():
            typer.echo(f"{target}: rank {info.rank}, fro retained {info.fro_retained:.1%}, "
                       f"sum(S) retained {info.sum_retained:.1%}")
    mean = sum(i.fro_retained for i in report.values()) / len(report)
    typer.echo(f"{len(report)} modules, mean Frobenius retention {mean:.2%}")


@tools_app.command("lora-extract")
def lora_extract_cmd(
    base: Path = typer.Argument(..., help="The base model."),
    tuned: Path = typer.Argument(..., help="The fine-tuned model."),
    out: Path = typer.Option(..., "--out", help="The LoRA .safetensors to write (kohya layout)."),
    rank: int | None = typer.Option(None, help="Rank (the cap with --energy)."),
    energy: float | None = typer.Option(None, help="Keep per module the smallest rank retaining this fraction."),
    conv_rank: int | None = typer.Option(None, help="Also extract ResNet/resampler convs at this rank."),
    min_diff: float = typer.Option(0.0, help="Leave out modules whose largest change is at most this."),
    verbose: bool = typer.Option(False, help="One line per module."),
) -> None:
    """Extract a LoRA from a fine-tune (SVD of the weight difference)."""
    with user_errors():
        from animegen.models.lora import write_lora
        from animegen.models.lora.tools import extract_lora

        lf, report = extract_lora(base, tuned, rank=rank, energy=energy, conv_rank=conv_rank, min_diff=min_diff)
        write_lora(lf, out)
        _print_ranks(report, verbose)
        typer.echo(f"wrote {out}")


@tools_app.command("lora-resize")
def lora_resize_cmd(
    lora: Path = typer.Argument(..., help="The LoRA file."),
    out: Path = typer.Option(..., "--out", help="The resized LoRA."),
    rank: int | None = typer.Option(None, help="New rank (the cap with --dynamic-method)."),
    conv_rank: int | None = typer.Option(None, help="New rank of conv modules (default: --rank)."),
    dynamic_method: str | None = typer.Option(None, help="sv_fro, sv_cumulative or sv_ratio (kohya)."),
    dynamic_param: float | None = typer.Option(None, help="The dynamic method's target, e.g. 0.9."),
    verbose: bool = typer.Option(False, help="One line per module."),
) -> None:
    """Resize a LoRA's rank as kohya's resize_lora does, reporting the retained energy."""
    with user_errors():
        from animegen.models.lora import write_lora
        from animegen.models.lora.tools import resize_lora

        lf, report = resize_lora(lora, rank, conv_rank=conv_rank, method=dynamic_method, param=dynamic_param)
        write_lora(lf, out, metadata=lf.metadata)
        _print_ranks(report, verbose)
        typer.echo(f"wrote {out}")


@tools_app.command("lora-merge")
def lora_merge_cmd(
    loras: list[str] = typer.Argument(..., help="LoRA files as FILE or FILE:WEIGHT."),
    out: Path = typer.Option(..., "--out", help="One LoRA .safetensors, or the merged checkpoint with --into."),
    into: Path | None = typer.Option(None, help="Merge into this checkpoint instead of into one LoRA."),
    rank: int | None = typer.Option(None, help="SVD-merge to this rank (default: exact, ranks concatenated)."),
) -> None:
    """Merge LoRAs into one LoRA, or into a checkpoint."""
    with user_errors():
        items = _weighted(loras, "LoRA")
        if into is not None:
            from animegen.models.lora.tools import merge_lora_into_checkpoint

            changed = merge_lora_into_checkpoint(into, items, out)
            typer.echo(f"wrote {out}: {changed} layers changed")
            return
        from animegen.models.lora import write_lora
        from animegen.models.lora.tools import merge_loras

        lf, report = merge_loras(items, rank=rank)
        write_lora(lf, out)
        _print_ranks(report, False)
        typer.echo(f"wrote {out}: {len(lf.modules)} modules")


@tools_app.command("lora-convert")
def lora_convert_cmd(
    lora: Path = typer.Argument(..., help="The LoRA file (any layout)."),
    out: Path = typer.Option(..., "--out", help="The converted file."),
    layout: str = typer.Option("kohya", help="kohya, peft (diffusers keys) or lycoris."),
) -> None:
    """Convert a LoRA between the kohya, peft/diffusers and LyCORIS layouts (tensors unchanged)."""
    with user_errors():
        from animegen.models.lora.tools import convert_lora

        typer.echo(f"wrote {convert_lora(lora, out, layout)}")


__all__ = ["tools_app"]
