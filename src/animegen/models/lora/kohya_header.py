"""kohya's ``ss_*`` header of a LoRA file: the one builder of its network keys.

Both writers use it: `write_lora` derives the values from the file's modules, the trainer's export
(`train/export.kohya_metadata`) passes what it trained and adds its training keys on top, so the two
always agree on the keys they share and on their formats.

The keys are kohya sd-scripts' minimum network metadata (`SS_METADATA_MINIMUM_KEYS` in
`library/train_util.py`): ``ss_network_module``, ``ss_network_dim``, ``ss_network_alpha``,
``ss_network_args``, ``ss_base_model_version``, ``ss_v2``, the ones its resize/merge tools, A1111's
extra networks and Civitai read. Value formats follow `train_network.py`, which writes `str(v)` of
every value: dims as ints (``"8"``), alpha as a float (``"4.0"``, `--network_alpha` is a float), bools
as ``"True"``/``"False"``, and ``ss_network_args`` as a JSON object of strings (kohya's come from
``--network_args key=value``). ``ss_base_model_version`` is the family's (``sd_v1``, ``sd_v2``,
``sdxl_base_v1-0``) with ``_v`` appended for v-prediction SD1/SD2 models, as kohya's
`get_model_version_str_for_sd1_sd2` does.

Where we differ: kohya writes whatever network it was told to train; a file written here names
``networks.lora`` only when every module is one its LoRA network loads (the algorithms'
``NETWORK_MODULE``), and ``lycoris.kohya`` with LyCORIS's ``algo`` name otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from animegen.models.family import ModelFamily
from animegen.models.lora.algorithms import ALGORITHMS

KOHYA_NETWORK_MODULE = "networks.lora"  # kohya's LoRA/LoCon network (takes conv_dim/conv_alpha)
LYCORIS_NETWORK_MODULE = "lycoris.kohya"  # LyCORIS' network for kohya (takes algo, dora_wd, …)


def kohya_value(value) -> str:
    """A header value as kohya writes it: strings as they are, dicts/lists as JSON, the rest `str()`."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def base_model_version(family: ModelFamily, *, v_prediction: bool = False) -> str:
    """kohya's ``ss_base_model_version``: the family's, ``_v`` appended for v-prediction SD1/SD2."""
    version = family.kohya_base_model_version
    return version + "_v" if v_prediction and not family.is_sdxl else version


def network_metadata(*, kinds: Collection[str], main_kind: str | None = None, dim: int | None,
                     alpha: float | None, family: ModelFamily, v_prediction: bool = False,
                     conv_dim: int | None = None, conv_alpha: float | None = None, dora: bool = False,
                     network_args: Mapping[str, object] | None = None) -> dict[str, str]:
    """The network keys of a kohya header, every value a string.

    `kinds`: the algorithms (`algorithms.ALGORITHMS` names) the file holds; `main_kind` (default:
    the only one) names LyCORIS's ``algo``. `dim`/`alpha`: the network's rank and alpha (omitted
    when None, e.g. IA3). `conv_dim`/`conv_alpha` are kohya LoCon's arguments and `dora` LyCORIS's
    weight decomposition; `network_args` adds any other (dropout, targets, …).
    """
    algos = [ALGORITHMS[k] for k in kinds]
    main = ALGORITHMS[main_kind] if main_kind is not None else (algos[0] if len(algos) == 1 else None)
    network_modules = {a.NETWORK_MODULE for a in algos}
    kohya_lora = network_modules == {KOHYA_NETWORK_MODULE} and not dora
    meta = {
        "ss_network_module": KOHYA_NETWORK_MODULE if kohya_lora else LYCORIS_NETWORK_MODULE,
        "ss_base_model_version": base_model_version(family, v_prediction=v_prediction),
        "ss_v2": str(family.kohya_v2),
    }
    if dim is not None:
        meta["ss_network_dim"] = str(int(dim))
    if alpha is not None:
        meta["ss_network_alpha"] = str(float(alpha))
    args: dict[str, object] = {}
    if not kohya_lora and main is not None:
        # LyCORIS' DoRA is `algo=lora dora_wd=True` (its README), the name a DoRA LoRA carries there
        args["algo"] = "lora" if dora and main is ALGORITHMS["lora"] else main.LYCORIS_ALGO
    if kohya_lora and conv_dim is not None:
        args["conv_dim"] = int(conv_dim)
        args["conv_alpha"] = float(conv_alpha if conv_alpha is not None else conv_dim)
    if dora:
        args["dora_wd"] = True
    args.update(network_args or {})
    if args:
        meta["ss_network_args"] = json.dumps({k: kohya_value(v) for k, v in args.items()})
    return meta


__all__ = ["base_model_version", "kohya_value", "network_metadata"]
