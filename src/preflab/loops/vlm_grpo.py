"""GRPO on an image-text model, e.g. Vision-R1's box rewards: the GRPO loop (preflab.loops.grpo, on step.py) with
image prompts, generation through the VLM and the vision scorer. No new loop: GRPOLoop's hooks are overridden.

    from preflab.verifiers.vision_r1 import vision_r1_rewards
    summary = vision_grpo_train(policy, processor, rows, reward_funcs=vision_r1_rewards(), num_generations=4,
                                max_steps=10, beta=0.04, output_dir="runs/vision-r1")

rows: dicts with `images` (and/or `videos`) and a `prompt` (text or messages with {"type": "image"} parts), as
in preflab.data.vision; every other column (Vision-R1's `solution`, `num_instances`, ...) is handed to the reward
functions, one entry per completion, as TRL does. Completions reach the rewards as assistant messages.

Vision-R1 (Zhan et al., 2025, arXiv:2503.18013; methods §18): R = R_fmt + R_P + R_R from
preflab.verifiers.vision_r1, GRPO loss "grpo" with beta = 0.04 (the released recipe), G completions per image.
Sampling uses the full softmax at the given temperature (top-k off), one generate() call per generation batch,
except that the image/video placeholder tokens are never sampled (a completion holding one would be read as an image
slot). Deviation: the sampling distribution is pi_old with those few tokens removed; the importance ratios and the KL
are computed on the full softmax (for a trained model their probability is negligible).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from preflab.data.report import RowProblem
from preflab.errors import ConfigError, DataError
from preflab.loops.grpo import GRPOConfig, GRPOLoop
from preflab.loops.rollout import Rollout, decode, full_distribution
from preflab.models.attention import unwrap
from preflab.scoring.vlm import VisionLogProbScorer, vision_layout


@dataclass
class VisionPromptRow:
    """One image prompt: messages, templated text, token ids (image tokens expanded), processor tensors, columns."""

    row_id: int
    prompt: list
    prompt_text: str
    prompt_ids: list[int]
    images: list
    vision: dict
    token_inputs: dict
    columns: dict = field(default_factory=dict)


def vision_prompt_rows(prompts: Sequence[dict], processor, max_frames: int = 8) -> list[VisionPromptRow]:
    from preflab.data.vision import _encode_prompt, vision_prompt

    rows = []
    for i, item in enumerate(prompts):
        if not isinstance(item, dict):
            raise ConfigError(f"vision GRPO prompt {i} must be a row dict with `prompt` and `images`, got "
                              f"{type(item).__name__}.")
        try:
            prompt, images = vision_prompt(item, None, max_frames)
            text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            ids, vision, token_inputs = _encode_prompt(processor, text, images, "images")
        except RowProblem as problem:
            raise DataError(f"prompt row {i}, field {problem.field!r}: {problem.detail}. {problem.fix}") from problem
        columns = {k: v for k, v in item.items() if k not in ("prompt", "images", "videos")}
        rows.append(VisionPromptRow(i, prompt, text, ids, images, vision, token_inputs, columns))
    if not rows:
        raise ConfigError("vision GRPO needs at least one prompt row.")
    return rows


def placeholder_ids(model) -> list[int]:
    """Token ids that stand for image/video features (a completion holding one could not be scored)."""
    config = unwrap(model).config
    ids = {getattr(config, name, None) for name in ("image_token_id", "video_token_id", "image_token_index",
                                                      "video_token_index")}
    return sorted(i for i in ids if isinstance(i, int))


class VisionGRPOLoop(GRPOLoop):
    scorer_class = VisionLogProbScorer

    def __init__(self, policy, processor, prompts: Sequence[dict], reward_funcs, cfg: GRPOConfig | None = None,
                 ref=None, reward_weights: Sequence[float] | None = None):
        self.processor = processor
        super().__init__(policy, processor.tokenizer, prompts, reward_funcs, cfg, ref, reward_weights)

    def prepare_rows(self, prompts):
        return vision_prompt_rows(prompts, self.processor)

    @torch.no_grad()
    def sample(self, rows: list[VisionPromptRow], seed: int) -> Rollout:
        """G sampled completions per row from one generate() over the left-padded batch."""
        cfg, G, tok = self.cfg, self.cfg.num_generations, self.processor.tokenizer
        texts = [row.prompt_text for row in rows for _ in range(G)]
        images = [im for row in rows for _ in range(G) for im in row.images]
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
        finally:
            tok.padding_side = side
        enc = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}
        model = unwrap(self.policy)
        was_training = self.policy.training
        self.policy.eval()
        with torch.random.fork_rng(devices=[]), full_distribution(self.policy):
            torch.manual_seed(seed)
            out = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                 max_new_tokens=cfg.max_completion_length, pad_token_id=self.pad_id,
                                 eos_token_id=tok.eos_token_id, suppress_tokens=placeholder_ids(model) or None)
        self.policy.train(was_training)
        eos, ids = tok.eos_token_id, []
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            ids.append(row[:row.index(eos) + 1] if eos in row else row)
        for i, c in enumerate(ids):
            if not c:
                ids[i] = [eos]  # an empty completion is scored as its end token (generate always emits one token)
        return Rollout(rows, G, ids, [decode(tok, c, True) for c in ids], [bool(c) and c[-1] == eos for c in ids])

    def _layout(self, groups: list[int]):
        G, rows = self.cfg.num_generations, self.rollout.rows
        seqs = [(rows[g].prompt_ids, self.rollout.completion_ids[g * G + i], rows[g].vision, rows[g].token_inputs)
                for g in groups for i in range(G)]
        return vision_layout(seqs, self.pad_id).to(self.device)

    @torch.no_grad()
    def reference_scores(self, layout):
        if self.ref is not None:
            return VisionLogProbScorer(self.ref, self.cfg.chunk_tokens)(layout)
        with self.policy.disable_adapter():  # LoRA: the reference is the base model
            return VisionLogProbScorer(self.policy, self.cfg.chunk_tokens)(layout)


def vision_grpo_train(policy, processor, prompts: Sequence[dict], reward_funcs, ref=None,
                      reward_weights: Sequence[float] | None = None, **options: Any) -> dict:
    """Run GRPO on an image-text model; `options` are GRPOConfig fields. Returns the summary dict."""
    cfg = GRPOConfig.from_kwargs(**options)
    return VisionGRPOLoop(policy, processor, prompts, reward_funcs, cfg, ref=ref, reward_weights=reward_weights).run()
