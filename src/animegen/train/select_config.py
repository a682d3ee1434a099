"""`[checkpoint_eval]`: evaluate each saved checkpoint on a fixed seeded prompt set, and pick one by a rule.

The evaluation itself lives in `animegen.evaluate.checkpoint_eval` (evaluate sits above train); this
section only holds the options, checked before any model is loaded (rules and gates parse here).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from animegen.train.select import RuleError, parse_gate, parse_rule


class CheckpointEvalSection(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="Evaluate checkpoints during training (needs checkpoint.every_steps).")
    every_steps: int = Field(0, ge=0, description="0 = at every checkpoint save; else a multiple of "
                             "checkpoint.every_steps.")
    prompts: int = Field(8, ge=0, description="Prompts drawn (seeded) from the training captions.")
    held_out: int = Field(8, ge=0, description="Prompts drawn from the held-out set (validation split captions, "
                          "or prompts_file).")
    prompts_file: str | None = Field(None, description="Held-out prompts file (text/JSON/TOML) instead of the "
                                     "validation split's captions.")
    n_per_prompt: int = Field(1, ge=1)
    seed: int = 0
    sampler: str | None = None
    steps: int = Field(20, ge=1)
    cfg_scale: float = 7.0
    width: int | None = Field(None, description="Default: data.resolution.")
    height: int | None = None
    negative_prompt: str = ""
    tagger: str | None = Field(None, description="WD14 tagger folder (ONNX) for tag adherence.")
    clip_model: str | None = Field(None, description="CLIP folder or hub id for CLIP score.")
    fid: bool = Field(True, description="FID and KID against the training images.")
    fid_weights: str | None = Field(None, description="Inception weights file; None = the default cache; "
                                    "'random' = test mode.")
    bootstrap: int = Field(50, ge=0)
    kid_subsets: int = Field(50, ge=1)
    base: bool = Field(True, description="Also score the base model once on the same prompts (the floor).")
    rule: str = Field("max:tag_adherence", description="Selection rule, e.g. 'max:tag_adherence where fid <= best+5'.")
    gate: str | None = Field(None, description="Regression gate, e.g. 'tag_adherence >= base + 3'.")
    select_at_end: bool = Field(False, description="Select and export the chosen checkpoint after training.")

    @field_validator("rule")
    @classmethod
    def _rule(cls, v: str) -> str:
        try:
            parse_rule(v)
        except RuleError as err:
            raise ValueError(str(err)) from None
        return v

    @field_validator("gate")
    @classmethod
    def _gate(cls, v: str | None) -> str | None:
        try:
            if v is not None:
                parse_gate(v)
        except RuleError as err:
            raise ValueError(str(err)) from None
        return v
