"""SimulPL: latency-aware DPO for simultaneous MT -- a DPO margin shifted by the pair's Average Lagging gap.

Paper: "SimulPL: Aligning Human Preferences in Simultaneous Machine Translation" (2025; arXiv id not checked).
The abstract puts a latency preference inside the objective and optimizes the read/write policy; the formula below
is derived by the spec (methods/reasoning-multimodal-diffusion.md §46), not taken from the paper -- unverified:

    L = l(beta * [(h(y_w, g_w) - h(y_l, g_l)) - lam * (AL(g_w) - AL(g_l))]),   l(u) = -log sigmoid(u)

h(y, g) = log pi_theta(y, g | x) - log pi_ref(y, g | x): the scorer sums translation-token *and* read/write-action
log-probs into each side's SequenceLogps, so the read/write head gets gradient through h. AL(g) is the Average
Lagging of the schedule (a per-pair constant from the data; see `average_lagging`).
Extras: `chosen_latency`, `rejected_latency` [B] = AL(g_w), AL(g_l). lam = 0 (or equal latencies) gives DPO.
The GPT-4 preference-data builder and the MSFT stage live elsewhere.

Deviation from the paper: the objective is a derivation (the paper's equation was not available); lam unverified.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


def average_lagging(g, source_len: int) -> float:
    """AL (Ma et al., 2019): (1/tau) sum_{i<=tau} (g_i - (i-1) J/I), tau = first i with g_i = J (I = len(g))."""
    g = [int(v) for v in g]
    n = len(g)
    tau = next((i + 1 for i, v in enumerate(g) if v >= source_len), n)
    return sum(g[i] - i * source_len / n for i in range(tau)) / tau


@dataclass(frozen=True)
class SimulPL(Objective):
    beta: float = 0.1            # DPO inverse temperature
    latency_weight: float = 0.5  # lam, margin per unit of Average Lagging (unverified)

    required_extras = ("chosen_latency", "rejected_latency")
    paper = "SimulPL 2025, Aligning Human Preferences in Simultaneous Machine Translation (ICLR 2025)"
    checked_against = ("unverified: objective derived by the spec from the abstract; lam unverified; the official "
                       "repo EurekaForNLP/SimulPL@146d1c7 (fetched 2026-12) holds only a README, 'data and code are "
                       "coming soon'")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",), "property": ("latency",)}

    def validate(self):
        super().validate()
        if self.latency_weight < 0:
            raise ConfigError(f"SimulPL: latency_weight must be >= 0, got {self.latency_weight}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        al_w, al_l = (torch.as_tensor(batch.extra(k, "SimulPL"), dtype=h_w.dtype, device=h_w.device)
                      for k in ("chosen_latency", "rejected_latency"))
        losses = -F.logsigmoid(self.beta * ((h_w - h_l) - self.latency_weight * (al_w - al_l)))
        metrics = reward_metrics(batch, self.beta)
        metrics["latency/margin"] = (al_w - al_l).detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        b = batch.size
        return {"chosen_latency": torch.linspace(2.0, 3.5, b), "rejected_latency": torch.linspace(3.0, 5.0, b)}


OBJECTIVE = SimulPL
