"""A request's text conditioning per sampling pass and per denoiser call: A1111's prompt editing, alternation and AND.

Contract. `PromptConditioning(pipe, prompt, negative, ...)` is what the engine hands the sampler for a prompt
and its negative prompt. For each pass `for_pass(steps)` plans it as A1111's `get_multicond_learned_conditioning`
/ `get_learned_conditioning` do (`prompts.schedule.pass_schedules`: the positive split at AND, both prompts
scheduled over the pass) and encodes every distinct text of the plan once (`prompts.encode.encode_pass_texts`,
cached across batches and passes); `PassConditioning.at(step)` is A1111's `reconstruct_multicond_batch` /
`reconstruct_cond_batch`: the (row, weight) of each AND part and the negative's row at denoiser call `step`.

Steps are A1111's: a pass's schedules span `schedule_steps(choice, steps)` (A1111's `SamplerData.total_steps`:
twice the steps for second-order samplers, whose two calls a step each advance the count), img2img
schedules the full requested steps although it runs fewer calls (A1111 uses `p.steps`), and the hires pass
(`hires_pass(first_choice, first_steps)`) schedules its own steps after the first pass's (`schedule` module).

For a prompt without editing, alternation or AND this is exactly the old single conditioning: the same one
encoder batch (prompt, negative) and, in the denoiser, plain CFG. Where we differ from A1111 (and did before):
all texts of a pass are padded to the longest with empty chunks (A1111's "pad prompt/negative prompt" option;
by default A1111 runs a positive and a negative of different lengths as two UNet calls and pads AND parts of
different lengths by repeating their last vector) so that one UNet batch holds them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from animegen.prompts.schedule import entry_at, pass_schedules


def schedule_steps(choice, steps: int) -> int:
    """The steps A1111 schedules prompts over for a sampler (`SamplerChoice`): its denoiser calls' count."""
    return steps * 2 if choice.sampler.options.get("second_order") else steps


@dataclass(frozen=True)
class PassConditioning:
    """One pass: the encoded texts (row i of `embeds` / `pooled`) and which row each denoiser call uses."""

    embeds: torch.Tensor  # (texts, 77 * chunks, C)
    pooled: torch.Tensor | None  # (texts, P) on SDXL
    positive: tuple[tuple[tuple[int, ...], tuple[int, ...], float], ...]  # per AND part: (ends, rows, weight)
    negative: tuple[tuple[int, ...], tuple[int, ...]]  # (ends, rows)
    texts: tuple[str, ...] = ()  # the text of each row
    batch: int = 1  # images per prompt

    def at(self, step: int) -> tuple[list[tuple[int, float]], int]:
        """([(row, weight) per AND part], negative row) at denoiser call `step` (counted from 0)."""
        parts = [(rows[entry_at(ends, step)], weight) for ends, rows, weight in self.positive]
        ends, rows = self.negative
        return parts, rows[entry_at(ends, step)]

    def rows(self) -> list[int]:
        return sorted({r for _, rows, _ in self.positive for r in rows} | set(self.negative[1]))


@dataclass(frozen=True)
class PromptConditioning:
    """A prompt and its negative, planned and encoded per pass (see the module docstring)."""

    pipe: object = field(repr=False)
    prompt: str
    negative: str = ""
    clip_skip: int = 1
    emphasis: str = "Original"
    embeddings: object = field(default=None, repr=False)  # prompts.embeddings.EmbeddingLibrary
    batch: int = 1
    first_pass_steps: int | None = None  # set for the hires pass: the first pass's scheduled steps
    _encoded: dict = field(default_factory=dict, repr=False, compare=False)  # shared by copies

    def repeat_interleave(self, n: int) -> PromptConditioning:
        """The same conditioning for `n` images per prompt (a batch of seeds)."""
        return replace(self, batch=self.batch * n, _encoded=self._encoded)

    def hires_pass(self, first_choice, first_steps: int) -> PromptConditioning:
        """This conditioning for a hires pass after a first pass of `first_steps` with `first_choice`."""
        return replace(self, first_pass_steps=schedule_steps(first_choice, first_steps), _encoded=self._encoded)

    def for_pass(self, steps: int) -> PassConditioning:
        """The plan and encoded texts for a pass scheduled over `steps` (already `schedule_steps`)."""
        from animegen.prompts.encode import encode_pass_texts

        if self.first_pass_steps is None:
            plan = pass_schedules(self.prompt, self.negative, steps)
        else:
            plan = pass_schedules(self.prompt, self.negative, self.first_pass_steps, hires_steps=steps)
        positive, negative = plan.positive_texts(), plan.negative_texts()
        key = (tuple(positive), tuple(negative))
        if key not in self._encoded:
            self._encoded[key] = encode_pass_texts(self.pipe, positive, negative, self.clip_skip, self.emphasis,
                                                   embeddings=self.embeddings)
        encoded = self._encoded[key]
        pos_row = {text: i for i, text in enumerate(positive)}
        neg_row = {text: len(positive) + i for i, text in enumerate(negative)}

        def indexed(schedule, row):
            return tuple(end for end, _ in schedule), tuple(row[text] for _, text in schedule)

        return PassConditioning(encoded.embeds, encoded.pooled,
                                tuple((*indexed(s, pos_row), w) for s, w in plan.positive),
                                indexed(plan.negative, neg_row), (*positive, *negative), self.batch)
