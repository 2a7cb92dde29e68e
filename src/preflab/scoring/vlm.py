"""Response log-probs of an image-text-to-text model (transformers' AutoModelForImageTextToText: Qwen2-VL,
Qwen2.5-VL, LLaVA, ...) on a VisionLayout, with the LM head only at response positions, in chunks.

The model's backbone (`model.model`: vision tower + projector + language model) runs once on the rows with the
processor's pixel tensors (`layout.vision`: pixel_values, image_grid_thw, ...) and per-token inputs
(`layout.token_inputs`: e.g. mm_token_type_ids); then, exactly as in preflab.scoring.lm, hidden states are gathered
at the positions that predict response tokens and the LM head + float32 log-softmax run in chunks
(`preflab.scoring.lm._head_chunk`, so token-level KL to the reference works the same way):

    token_logps[n, l] = log softmax(head(h[pred_index[n, l]]))[target_ids[n, l]]

Layouts: "padded" ([chosen_1..B, rejected_1..B], each row its own prompt with its images) and, for models with
1-D positions (LLaVA-style), "prefix_shared" ([prompt | chosen | rejected] per row, preflab.data.prefix: the
prompt and its images go through the model once per pair). Models with their own position schemes (Qwen2-VL /
Qwen2.5-VL's 3-D rotary positions, computed inside transformers from the image grid) use the padded layout, as do
pairs with input-side negatives (their two sides have different images).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from preflab.data.layout import LayoutBatch, padded
from preflab.models.attention import model_mask, unwrap
from preflab.scoring.lm import Scores, backbone_and_head, scores_from_hidden

PER_TOKEN_EXTRAS = ("chosen_phrase_ids", "rejected_phrase_ids")


@dataclass
class VisionLayout(LayoutBatch):
    """A padded LayoutBatch plus the model's vision inputs (`vision`, batched along dim 0 in row order) and
    per-token inputs (`token_inputs`, [R, T], zero on responses and padding)."""

    vision: dict = field(default_factory=dict)
    token_inputs: dict = field(default_factory=dict)
    clue_plan: object | None = None  # CAT's preflab.models.clue_aggregator.CluePlan, built on the host

    def to(self, device) -> "VisionLayout":
        base = super().to(device)
        return VisionLayout(**{k: getattr(base, k) for k in LayoutBatch.__dataclass_fields__},
                            vision={k: v.to(device) for k, v in self.vision.items()},
                            token_inputs={k: v.to(device) for k, v in self.token_inputs.items()},
                            clue_plan=self.clue_plan.to(device) if self.clue_plan is not None else None)

    def model_inputs(self, model=None) -> dict:
        """Keyword arguments of the model's forward; a 4-D layout mask in the form `model`'s attention takes."""
        mask = self.attention_mask
        if model is not None and mask.dim() == 4:
            mask = model_mask(mask, model, next(unwrap(model).parameters()).dtype)
        extra = {"position_ids": self.position_ids} if self.position_ids is not None else {}
        return {"input_ids": self.input_ids, "attention_mask": mask, **extra, **self.vision, **self.token_inputs}


def cat_vision(parts: list[Tensor]) -> Tensor:
    """Concatenate processor tensors along dim 0. Per-sample image stacks ([1, n_images, ...], Idefics3-style) with
    different image counts are zero-padded along dim 1 first, as the processor pads a batch (an all-zero image is
    padding to those models)."""
    if len({p.shape[1:] for p in parts}) > 1 and len({p.dim() for p in parts}) == 1 and parts[0].dim() >= 3 and \
            len({p.shape[2:] for p in parts}) == 1:
        most = max(p.shape[1] for p in parts)
        parts = [torch.cat([p, p.new_zeros(p.shape[0], most - p.shape[1], *p.shape[2:])], 1) for p in parts]
    return torch.cat(parts, 0)


def vision_layout(sequences, pad_id: int, row_ids=None, extras=None) -> VisionLayout:
    """A padded VisionLayout of (prompt_ids, response_ids, vision, token_inputs) sequences, one row each; vision
    tensors are concatenated along dim 0 in row order, per-token inputs padded with 0."""
    base = padded([(p, r) for p, r, _, _ in sequences], pad_id=pad_id, row_ids=row_ids, extras=extras)
    vision = {}
    for key in sorted({k for _, _, v, _ in sequences for k in v}):
        vision[key] = cat_vision([v[key] for _, _, v, _ in sequences if key in v])
    token_inputs = {}
    for key in sorted({k for _, _, _, t in sequences for k in t}):
        column = torch.zeros_like(base.input_ids)
        for i, (_, _, _, t) in enumerate(sequences):
            values = t.get(key, [])
            column[i, :len(values)] = torch.tensor(values, dtype=torch.long)
        token_inputs[key] = column
    return VisionLayout(**{k: getattr(base, k) for k in LayoutBatch.__dataclass_fields__}, vision=vision,
                        token_inputs=token_inputs)


def can_share_prompt(pairs) -> bool:
    """Prefix sharing needs one prompt per pair (no input-side negatives) and no per-token processor inputs."""
    return not unshareable_pairs(pairs)


def unshareable_pairs(pairs) -> int:
    """How many pairs cannot share their prompt: the rejected side has its own images (input-side negatives:
    `rejected_images`, PaMi-VDPO's perturbed images) or the prompt has per-token processor inputs. A batch holding
    one is scored with the padded layout (collate_vision_pairs)."""
    return sum(1 for p in pairs if p.rejected_prompt_ids is not None or p.token_inputs)


def collate_vision_pairs(pairs, pad_id: int, layout: str = "padded") -> VisionLayout:
    """TokenizedVisionPairs -> a VisionLayout of [chosen_1..B, rejected_1..B]; RRPO's per-token phrase ids become
    [B, L] extras aligned with the response positions (L = the layout's response width; 0 beyond a response).

    layout "prefix_shared" (when `can_share_prompt`): one row [prompt | chosen | rejected] per pair
    (preflab.data.prefix), so the prompt and its images (vision tower included) are computed once per pair; for
    models with 1-D positions only (the trainer checks, see preflab.models.vlm.shared_prompt_support)."""
    from preflab.data.extras import stack_extras

    numeric = [k for k in (pairs[0].extras if pairs else {}) if k not in PER_TOKEN_EXTRAS]
    extras = stack_extras(pairs, keys=numeric)
    if layout == "prefix_shared" and can_share_prompt(pairs):
        from preflab.data.prefix import prefix_shared

        base = prefix_shared(pairs, pad_id=pad_id, row_ids=[p.row_id for p in pairs], extras=extras)
        vision = {}
        for key in sorted({k for p in pairs for k in p.vision}):
            vision[key] = cat_vision([p.vision[key] for p in pairs if key in p.vision])
        layout = VisionLayout(**{k: getattr(base, k) for k in LayoutBatch.__dataclass_fields__}, vision=vision)
    else:
        sequences = [(*p.side(False)[:1], p.chosen_ids, *p.side(False)[1:]) for p in pairs]
        sequences += [(*p.side(True)[:1], p.rejected_ids, *p.side(True)[1:]) for p in pairs]
        layout = vision_layout(sequences, pad_id, [p.row_id for p in pairs], extras)
    width = layout.response_mask.shape[1]
    for key in PER_TOKEN_EXTRAS:
        if pairs and all(key in p.extras for p in pairs):
            column = torch.zeros(len(pairs), width, dtype=torch.long)
            for i, p in enumerate(pairs):
                ids = p.extras[key]
                column[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            layout.extras[key] = column
    return layout


class VisionLogProbScorer(nn.Module):
    """Wraps an image-text-to-text model so that one forward returns response log-probs (DDP wraps this)."""

    def __init__(self, model: nn.Module, chunk_tokens: int | None = None, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.chunk_tokens = chunk_tokens
        self.temperature = temperature  # the head's logits divided by it (LogProbScorer's temperature)

    def forward(self, layout: VisionLayout, want_hidden: bool = False, ref: Scores | None = None,
                ref_head: nn.Module | None = None, want_wpo: bool = False, want_token_stats: bool = False,
                prompt_sequences: int = 0) -> Scores:
        backbone, head = backbone_and_head(self.model)
        head = head.tempered(self.temperature)
        aggregator = getattr(unwrap(self.model), "clue_aggregator", None)  # CAT's add-on: the prompt is the question
        if aggregator is not None:  # each row's prompt: the positions before its first response token
            from preflab.models.clue_aggregator import prompt_lengths

            aggregator.prompt_lengths = prompt_lengths(layout.pred_index, *layout.input_ids.shape)
            aggregator.plan = layout.clue_plan  # host-built index lists (VisionTrainer.collate); None: built there
        try:
            hidden = backbone(**layout.model_inputs(self.model), use_cache=False).last_hidden_state
        finally:
            if aggregator is not None:
                aggregator.prompt_lengths = aggregator.plan = None
        return scores_from_hidden(hidden, layout, head, self.chunk_tokens, want_hidden, ref, ref_head, want_wpo,
                                  want_token_stats, prompt_sequences)


def naive_vision_token_logps(model: nn.Module, layout: VisionLayout) -> Tensor:
    """Reference implementation: log_softmax of the model's own full `.logits` at the response positions."""
    logits = model(**layout.model_inputs(model)).logits.float()
    logprobs = torch.log_softmax(logits, -1).reshape(-1, logits.shape[-1])
    lp = logprobs[layout.pred_index, layout.target_ids]
    return torch.where(layout.response_mask, lp, torch.zeros_like(lp))
