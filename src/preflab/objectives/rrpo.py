"""RRPO: refined regularized preference optimization; phrase-level rewards plus a token-wise KL on the chosen side.

Paper: Sarkar, Etemad, 2025, "Self-alignment of Large Video Language Models with Refined Regularized Preference
Optimization" (arXiv:2504.12083), the RRPO loss. Checked against the official code (pritamqu/RRPO
`llava/losses.py::RRPO`, read here): per-phrase margins summed before the sigmoid, alpha * KL *added*.

    u_k  = sum_{t: id_w[t]=k} h_w[t] - sum_{t: id_l[t]=k} h_l[t],   k >= 1 (id 0 = text shared by both responses)
    D    = sum_{t in y_w} KL(pi_ref || pi_theta)_t
    L    = -log sigmoid(beta * sum_k u_k) + alpha * D

Extras: chosen_phrase_ids / rejected_phrase_ids [B, T] int (0 shared, k >= 1 the k-th differing phrase, aligned
across the pair; built from <MASK>...</MASK> tags by the data builder); token_needs "token_kl" -> chosen_token_kl.
In a data file: list columns `chosen_phrase_ids` / `rejected_phrase_ids` with one id per token of the tokenized
response, eos included (`preflab train` cuts them with the response under max_length / max_completion_length,
preflab.data.token_columns, pads them to the response mask, and refuses a column whose length differs from the
uncut response's; a row whose ids, after the cut, are all 0 is the bad row `no_differing_phrase`,
preflab.data.phrases.check_differing_phrase); a text row that gives neither column gets them derived from its
chosen and rejected texts at tokenization (preflab.data.phrases.derived_phrase_columns).
Logged rewards are beta * (sum of phrase log-ratios) per side, as in the code.

Deviation from the paper: none. (The code skips the smallest id in the batch, assumed 0; here every id >= 1 counts.)
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives._sparse import token_logratios
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, reward_metrics


@dataclass(frozen=True)
class RRPO(Objective):
    reward_meaning = "beta * log-ratio of the differing phrases"
    beta: float = 0.1    # inverse temperature (LLaVA-Video recipe 0.1; LongVU 0.5; VideoChat2 0.9)
    alpha: float = 0.01  # weight of the token-wise KL on the chosen response (0.01 / 0.05 in the recipes)

    required_extras = ("chosen_phrase_ids", "rejected_phrase_ids")
    token_extras = ("chosen_phrase_ids", "rejected_phrase_ids")
    token_needs = ("token_kl",)
    paper = "Sarkar & Etemad 2025, Refined Regularized Preference Optimization (arXiv:2504.12083)"
    checked_against = ("official code: pritamqu/RRPO@a905573 llava/losses.py::RRPO (phrase sums, + alpha * chosen "
                       "KL(pi_ref || pi_theta)), re-read 2026-12")
    tags = {"data": ("pair-wise", "token"), "framework": ("offline",), "constraint": ("reference", "divergence"),
            "property": ()}

    def validate(self):
        super().validate()
        if self.alpha < 0:
            raise ConfigError(f"RRPO: alpha must be >= 0, got {self.alpha}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        phrase = {}
        for side in ("chosen", "rejected"):
            h, m = token_logratios(batch, side)
            ids = torch.as_tensor(batch.extra(f"{side}_phrase_ids", "RRPO"), device=h.device)
            phrase[side] = torch.where(m & (ids > 0), h, torch.zeros_like(h)).sum(-1)
        kl = as_loss_dtype(torch.as_tensor(batch.extra("chosen_token_kl", "RRPO"))).to(phrase["chosen"])
        kl = torch.where(batch.policy_chosen.mask, kl, torch.zeros_like(kl)).sum(-1)
        losses = -F.logsigmoid(self.beta * (phrase["chosen"] - phrase["rejected"])) + self.alpha * kl
        metrics = reward_metrics(batch, self.beta, chosen=self.beta * phrase["chosen"],
                                 rejected=self.beta * phrase["rejected"])
        metrics["kl/chosen"] = kl.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        out = {}
        for side in ("chosen", "rejected"):
            shape = getattr(batch, f"policy_{side}").token_logps.shape
            out[f"{side}_phrase_ids"] = (torch.arange(shape[-1]) % 3 == 0).long().expand(shape) * (
                1 + torch.arange(shape[-1]) // 3)
            out[f"{side}_token_kl"] = torch.full(shape, 0.02, dtype=torch.float64)
        return out


OBJECTIVE = RRPO
