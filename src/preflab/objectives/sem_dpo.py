"""Sem-DPO: DPO with each pair's loss scaled by a semantic-consistency weight (prompt optimization).

Paper: Mohamed, Khan, Wang et al., 2025, "Sem-DPO: Mitigating Semantic Inconsistency in Preference Optimization
for Prompt Engineering" (arXiv:2507.20133). The abstract says it "scales the DPO loss by an exponential weight
proportional to the cosine distance between the original prompt and the winning candidate"; a third-party research
note restates the weight as W_alpha(x, y_w) = exp(-alpha d_cos(e(x), e(y_w))), e a frozen embedding model, computed
offline -- the form below (audit 2026-12). The paper's alpha, encoder and any batch normalisation remain unverified.
Audit 2026-12 (paper-audit-2): no authors' code found (code search on the title and the weight; issues; pages give
abstracts only); a co-author's portfolio page in the code index describes the implementation as "semantic-weighted
DPO loss with offline embedding ... CLIP encoder for cosine-distance weighting" (so e = a CLIP text encoder, not
read in the paper itself).

    w = exp(-alpha * (1 - cos(e(x), e(y_w))))     (no gradient)
    L = w * -log sigmoid(beta * Delta)

extras["similarity"]: [B] cosine similarity cos(e(x), e(y_w)) from a frozen encoder, precomputed by the data
builder (values are clamped to [-1, 1]; a zero embedding should be given similarity 0).

Deviation from the paper: unverified form (see above); weights are not renormalized over the batch.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class SemDPO(Objective):
    beta: float = 0.1    # DPO inverse temperature
    alpha: float = 1.0   # sharpness of the semantic weight; 0 gives DPO (unverified default)

    required_extras = ("similarity",)
    paper = "Mohamed et al. 2025, Sem-DPO (arXiv:2507.20133)"
    checked_against = ("3rd-party: a research note restating the weight exp(-alpha d_cos(e(x), e(y_w))) (same form); "
                       "alpha, encoder and normalisation unverified")
    tags = {"data": ("pair-wise", "quality"), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        if self.alpha < 0:
            raise ConfigError(f"SemDPO: alpha must be >= 0, got {self.alpha}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        sim = torch.as_tensor(batch.extra("similarity", "SemDPO")).to(h_w).detach().clamp(-1.0, 1.0)
        weight = torch.exp(-self.alpha * (1.0 - sim))
        losses = weight * -F.logsigmoid(self.beta * (h_w - h_l))
        metrics = reward_metrics(batch, self.beta)
        metrics["sem/weight"] = weight.mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        return {"similarity": torch.linspace(-0.5, 1.0, batch.size, dtype=torch.float64)}


OBJECTIVE = SemDPO
