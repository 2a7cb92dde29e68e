"""CAT's clue aggregator as an add-on to an image-text-to-text model (seed #1, methods §1).

Ye et al., 2024, "CAT: Enhancing Multimodal Large Language Model to Answer Questions in Dynamic Audio-Visual
Scenarios" (arXiv:2403.04640); the module read in Bay-CAT `ADPO_CAT/model/mllmcatllm.py` (classes `CA`,
`Perciver`). With q the question-token embeddings and V the visual tokens (both in the LM's input space, width D):

    C  = tanh(MHA(query=q, key=V, value=V))                 question-conditioned clues
    V' = V + Linear(tanh(MHA(query=V, key=C, value=C)))     clues re-injected into the visual tokens

`attach_clue_aggregator(model, processor)` registers it as `model.clue_aggregator` and a forward pre-hook on the
language model that rewrites the image-token embeddings of `inputs_embeds` before the decoder runs; the question is
the prompt's non-image tokens (the scorer sets each row's prompt length, so the response never leaks into the
visual tokens; without it, e.g. in generate(), every non-image token of the input counts as the question). Its
parameters train with the policy (also under LoRA) and are saved with it (plain transformers reloads the model
without them, with an "unused weights" warning); under LoRA, peft saves the adapters only, so VisionTrainer
writes the aggregator to clue_aggregator.safetensors beside them. preflab.models.vlm_run reloads a run (final or
checkpoint-N) with its trained aggregator.

Deviations from the code: the visual tokens are the VLM's own projected image tokens (not ImageBind features with
per-modality self-attention), there are no Q-Formers (the VLM's projector plays that role), and V' is residual with
a zero-initialised output Linear instead of LayerNorm(Linear(...)), so attaching it leaves the model's outputs
unchanged until it is trained.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from preflab.models.attention import unwrap

CLUE_AGGREGATOR_FILE = "clue_aggregator.safetensors"  # a LoRA run's trained clue aggregator, beside the adapters


class ClueAggregator(nn.Module):
    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        heads = num_heads if dim % num_heads == 0 else 1
        self.clues = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.reinject = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.image_token_id: int | None = None
        self.prompt_lengths: Tensor | None = None  # [R] set by the scorer for one forward

    def aggregate(self, visual: Tensor, question: Tensor) -> Tensor:
        """visual [Nv, D], question [Nq, D] -> V' [Nv, D]."""
        if question.shape[0] == 0 or visual.shape[0] == 0:
            return visual
        clues = torch.tanh(self.clues(question[None], visual[None], visual[None], need_weights=False)[0])
        back = torch.tanh(self.reinject(visual[None], clues, clues, need_weights=False)[0])
        return visual + self.out(back)[0]

    def rewrite(self, embeds: Tensor, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """inputs_embeds [R, T, D] with every row's image-token embeddings replaced by V'."""
        image = input_ids == self.image_token_id
        if not bool(image.any()):
            return embeds
        real = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else \
            torch.ones_like(image)
        if self.prompt_lengths is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            real = real & (positions[None] < self.prompt_lengths.to(input_ids.device)[:, None])
        rows = []
        for r in range(embeds.shape[0]):
            row = embeds[r]
            if bool(image[r].any()):
                new = self.aggregate(row[image[r]].to(self.out.weight.dtype), row[real[r] & ~image[r]]
                                     .to(self.out.weight.dtype)).to(row.dtype)
                row = row.masked_scatter(image[r].unsqueeze(-1), new)
            rows.append(row)
        return torch.stack(rows)


def _language_model(model: nn.Module) -> nn.Module:
    backbone = getattr(unwrap(model), "model", None)
    lm = getattr(backbone, "language_model", None) or getattr(backbone, "text_model", None)
    if lm is None:
        raise TypeError(f"{type(unwrap(model)).__name__} has no model.language_model to attach the clue aggregator to")
    return lm


def attach_clue_aggregator(model: nn.Module, processor, num_heads: int = 4) -> ClueAggregator:
    """Add the aggregator to `model` (as `clue_aggregator`) and hook it in front of the language model. A model that
    has one (reloaded from a CAT run: preflab.models.vlm_run) keeps it: a second would replace it as the parameter
    and leave its hook rewriting the visual tokens untrained."""
    existing = clue_aggregator_of(model)
    if existing is not None:
        return existing
    base = unwrap(model)
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    agg = ClueAggregator(config.hidden_size, num_heads)
    agg.image_token_id = getattr(base.config, "image_token_id", None)
    if agg.image_token_id is None:
        agg.image_token_id = getattr(processor, "image_token_id")
    base.clue_aggregator = agg.to(next(base.parameters()).device)
    state = {}

    def remember_ids(module, args, kwargs):
        state["input_ids"] = kwargs.get("input_ids")
        state["attention_mask"] = kwargs.get("attention_mask")

    def rewrite(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or state.get("input_ids") is None or state["input_ids"].shape != embeds.shape[:2]:
            return None
        kwargs["inputs_embeds"] = agg.rewrite(embeds, state["input_ids"], state["attention_mask"])
        return args, kwargs

    base.model.register_forward_pre_hook(remember_ids, with_kwargs=True)
    _language_model(model).register_forward_pre_hook(rewrite, with_kwargs=True)
    return agg


def clue_aggregator_of(model: nn.Module) -> ClueAggregator | None:
    return getattr(unwrap(model), "clue_aggregator", None)
