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

The rewrite runs on all rows at once, without boolean masks (whose output size the host would wait for: a
device-to-host sync per row): a CluePlan, built on the host from the layout's token ids (VisionTrainer.collate, as
the layout's GatherPlan), lists each row's image and question positions as padded index matrices; the two
attentions run batched over the rows with key_padding_mask, and V' is written back with index_copy. Only rows with
both image tokens and a question are rewritten (the others are unchanged, as before). Without a plan (generate(),
a layout built elsewhere) one is built from a host copy of the ids: a sync per forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from preflab.models.attention import unwrap

CLUE_AGGREGATOR_FILE = "clue_aggregator.safetensors"  # a LoRA run's trained clue aggregator, beside the adapters


class CluePlan(NamedTuple):
    """Host-built index lists of one [R, T] batch for ClueAggregator.rewrite, over its A rows that have image tokens
    and a question: visual [A, Nv] / question [A, Nq] flat positions (row * T + col) padded with 0, visual_pad /
    question_pad [A, Nv] / [A, Nq] bool (True: padding), slot [M] the flat positions in [A * Nv] of the real image
    tokens (row-major) and target [M] their flat positions in [R * T]; shape (R, T)."""

    visual: Tensor
    visual_pad: Tensor
    question: Tensor
    question_pad: Tensor
    slot: Tensor
    target: Tensor
    shape: tuple

    def to(self, device) -> "CluePlan":
        """The plan on `device`; host -> accelerator copies do not wait for the device (as data.layout.to_device)."""
        moved = [t.to(device, non_blocking=t.device.type == "cpu" and torch.device(device).type != "cpu")
                 for t in self[:6]]
        return CluePlan(*moved, self.shape)


def prompt_lengths(pred_index: Tensor, rows: int, width: int) -> Tensor:
    """[R] each row's prompt length: the positions before its first response token (T for a row without one)."""
    first = pred_index[:, 0]
    lengths = torch.full((rows,), width, dtype=torch.long, device=first.device)
    return lengths.scatter_reduce(0, first // width, first % width + 1, reduce="amin")


def clue_plan(input_ids: Tensor, attention_mask: Tensor | None, lengths: Tensor | None,
              image_token_id: int) -> CluePlan:
    """The CluePlan of host tensors: image tokens are `image_token_id`; the question is every other real token
    (2-D attention_mask 1; a 4-D mask counts every position) before `lengths[r]` (None: the whole row)."""
    rows, width = input_ids.shape
    image = input_ids == image_token_id
    real = attention_mask.bool() if attention_mask is not None and attention_mask.dim() == 2 else \
        torch.ones_like(image)
    if lengths is not None:
        real = real & (torch.arange(width)[None] < lengths[:, None])
    question = real & ~image
    active = [r for r in range(rows) if bool(image[r].any()) and bool(question[r].any())]

    def padded(mask: Tensor) -> tuple[Tensor, Tensor]:
        lists = [(r * width + mask[r].nonzero().squeeze(-1)).tolist() for r in active]
        most = max((len(x) for x in lists), default=0)
        index = torch.tensor([x + [0] * (most - len(x)) for x in lists], dtype=torch.long).view(len(active), most)
        pad = torch.tensor([[False] * len(x) + [True] * (most - len(x)) for x in lists], dtype=torch.bool)
        return index, pad.view(len(active), most)

    visual, visual_pad = padded(image)
    quest, quest_pad = padded(question)
    slot = (~visual_pad).reshape(-1).nonzero().squeeze(-1)
    return CluePlan(visual, visual_pad, quest, quest_pad, slot, visual.reshape(-1)[slot], (rows, width))


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
        self.plan: CluePlan | None = None  # set by the scorer for one forward (the layout's, built on the host)
        self._stand_in: list[ClueAggregator] = []  # weights used instead of these (as_initial), not a submodule
        self._initial: list[ClueAggregator] = []  # a frozen copy of the weights training started from (keep_initial)

    def keep_initial(self) -> None:
        """Keep a frozen copy of the current weights: the reference of a LoRA run (the policy with its adapters
        off) is the model training started from, aggregator included, and these weights train with the adapters."""
        import copy

        frozen = copy.deepcopy(self).requires_grad_(False).eval()
        frozen._stand_in, frozen._initial = [], []
        self._initial = [frozen]

    @contextmanager
    def as_initial(self):
        """Inside: rewrite() uses the weights kept by keep_initial() (without them, this aggregator's own)."""
        self._stand_in = list(self._initial)
        try:
            yield
        finally:
            self._stand_in = []

    def aggregate(self, visual: Tensor, question: Tensor) -> Tensor:
        """visual [Nv, D], question [Nq, D] -> V' [Nv, D]."""
        if question.shape[0] == 0 or visual.shape[0] == 0:
            return visual
        clues = torch.tanh(self.clues(question[None], visual[None], visual[None], need_weights=False)[0])
        back = torch.tanh(self.reinject(visual[None], clues, clues, need_weights=False)[0])
        return visual + self.out(back)[0]

    def rewrite(self, embeds: Tensor, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """inputs_embeds [R, T, D] with every row's image-token embeddings replaced by V' (rows batched)."""
        plan = self.plan
        if plan is None or tuple(plan.shape) != tuple(embeds.shape[:2]):  # no host plan: one from host copies
            lengths = None if self.prompt_lengths is None else self.prompt_lengths.cpu()
            plan = clue_plan(input_ids.cpu(), None if attention_mask is None else attention_mask.cpu(), lengths,
                             self.image_token_id).to(embeds.device)
        if plan.slot.numel() == 0:
            return embeds
        weights = self._stand_in[0] if self._stand_in else self
        if weights is not self and weights.out.weight.device != embeds.device:
            weights.to(embeds.device)
        dim, dtype = embeds.shape[-1], weights.out.weight.dtype
        flat = embeds.reshape(-1, dim)
        visual = flat.index_select(0, plan.visual.reshape(-1)).view(*plan.visual.shape, dim).to(dtype)
        question = flat.index_select(0, plan.question.reshape(-1)).view(*plan.question.shape, dim).to(dtype)
        clues = torch.tanh(weights.clues(question, visual, visual, key_padding_mask=plan.visual_pad,
                                         need_weights=False)[0])
        back = torch.tanh(weights.reinject(visual, clues, clues, key_padding_mask=plan.question_pad,
                                           need_weights=False)[0])
        new = (visual + weights.out(back)).reshape(-1, dim).index_select(0, plan.slot).to(embeds.dtype)
        return flat.index_copy(0, plan.target, new).view_as(embeds)


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
