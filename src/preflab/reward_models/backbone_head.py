"""A transformer backbone with a small head on the last real token: the bridge from token ids to the
feature-level code of `preflab.reward_models` (mixtures, MC-dropout estimators).

    head = PooledHead(tiny_causal_lm(tok), out_dim=1)          # a scalar reward model r(x, y)
    head({"input_ids": ids, "attention_mask": mask})           # -> [N]  (out_dim=1) or [N, out_dim]

The backbone's base model (`model.base_model`, i.e. without the LM head, so no [N, T, V] logits are built) runs
once; the hidden state at the last position whose attention mask is 1 (left or right padding) feeds a linear head.
Dropout inside the backbone stays under the caller's control (`model.train()` / `.eval()`), which MC dropout uses.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from preflab.errors import PreflabError


class PooledHead(nn.Module):
    """`backbone` (a transformers model) + Linear(hidden, out_dim) on the last attended token."""

    def __init__(self, backbone: nn.Module, out_dim: int = 1, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        hidden = getattr(getattr(backbone, "config", None), "hidden_size", None)
        if hidden is None:
            raise PreflabError("PooledHead needs a transformers model whose config has hidden_size.")
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, out_dim)
        self.out_dim = out_dim

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        base = getattr(self.backbone, "base_model", self.backbone)
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state  # [N, T, H]
        positions = torch.arange(ids.shape[1], device=ids.device)
        last = (positions * mask.long()).argmax(1)  # the last attended position of each row
        pooled = hidden[torch.arange(ids.shape[0], device=ids.device), last]
        out = self.head(self.dropout(pooled))
        return out.squeeze(-1) if self.out_dim == 1 else out


def encode_texts(tokenizer, texts: list[str], max_length: int | None = None) -> dict[str, Tensor]:
    """Right-padded {"input_ids", "attention_mask"} for `texts` (no special tokens added)."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if max_length is not None:
        rows = [r[-max_length:] for r in rows]
    if any(len(r) == 0 for r in rows):
        raise PreflabError("a text encodes to zero tokens; give every prompt/response some text.")
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}
