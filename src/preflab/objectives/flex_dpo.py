"""Flex-DPO: DPO with separate inverse temperatures for the chosen and rejected log-ratios, plus the optional SFT
augmentation; the two remedies for the "3D-properties" of DPO.

Paper: Yan, Miao, Li, Zhang, Xie, Deng, Yan, 2024, "3D-Properties: Identifying Challenges in DPO and Charting a Path
Forward" (arXiv:2406.07327), §3.3 and App. B.2. Audit 2026-12 (paper-audit-2) against the paper's text (ICLR 2025
submission PDF stored in ChangshuoShen/ICLR_2025_4_DPO@8814195 `papers/5344_3D_Properties_Identifying.pdf`; no code
by the authors found): B.2.1 l_flex-DPO = -sum log sigmoid(beta+ log pi/pi_0(a+) - beta- log pi/pi_0(a-)), Figure 4
(poem generation, beta+ = 0.1) peaks at beta- = 0.08 (App. D.2: 0.01 on math); B.2.2 Eq. 7 l_SFT-DPO =
-sum [log sigmoid(beta Delta) + gamma log pi_theta(a+|x)], the SEQUENCE log-prob (no length normalisation); no gamma
value is given.

    L = -log sigmoid(beta * h(y_w) - beta_rejected * h(y_l)) + sft_weight * NLL(y_w),   h = S_theta - S_ref
    NLL per `nll_agg`: sum (-S, the paper's Eq. 7, default), seq_mean (-S/|y|) or batch_token_mean (TRL's `sft`);
    see _nll.py.

beta_rejected = beta and sft_weight = 0 give DPO; beta_rejected = beta alone gives the paper's "DPO + SFT" remedy.
The gradient with respect to h(y_l) is scaled by beta_rejected / beta relative to DPO's.

Deviation from the paper: the SFT remedy lives here as `sft_weight` instead of a second objective (it composes with
either temperature setting). Changed 2026-12: the NLL default was seq_mean (unverified), now sum as in Eq. 7.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.errors import ConfigError
from preflab.objectives._nll import check_agg, nll
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class FlexDPO(Objective):
    reward_meaning = "beta / beta_rejected * log-ratio to the reference"
    beta: float = 0.1            # beta+: inverse temperature on the chosen log-ratio
    beta_rejected: float = 0.08  # beta-: inverse temperature on the rejected log-ratio (set it with beta)
    sft_weight: float = 0.0      # lambda of the SFT augmentation on y_w
    nll_agg: str = "sum"         # sum (the paper's Eq. 7) | seq_mean | batch_token_mean

    paper = "Yan et al. 2024, 3D-Properties: Identifying Challenges in DPO (arXiv:2406.07327)"
    checked_against = ("paper text: arXiv:2406.07327 App. B.2 (PDF in ChangshuoShen/ICLR_2025_4_DPO@8814195): loss, "
                       "beta- 0.08 at beta+ 0.1, SFT term on the sequence log-prob; no authors' code found")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",),
            "property": ("likelihood",)}

    @property
    def micro_batch_statistic(self) -> bool:
        """nll_agg batch_token_mean (with sft_weight > 0) is the micro-batch's token mean (base.couples_micro_batch)."""
        return self.sft_weight != 0 and self.nll_agg == "batch_token_mean"

    def validate(self):
        super().validate()
        if not self.beta_rejected > 0:
            raise ConfigError(f"FlexDPO: beta_rejected must be > 0, got {self.beta_rejected}.")
        if self.sft_weight < 0:
            raise ConfigError(f"FlexDPO: sft_weight must be >= 0, got {self.sft_weight}.")
        check_agg(self.nll_agg, "FlexDPO")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        losses = -F.logsigmoid(self.beta * h_w - self.beta_rejected * h_l)
        metrics = reward_metrics(batch, self.beta, chosen=self.beta * h_w, rejected=self.beta_rejected * h_l)
        if self.sft_weight:
            sft = nll(batch.policy_chosen, self.nll_agg).to(losses.dtype)
            losses = losses + self.sft_weight * sft
            metrics["loss/nll"] = sft.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = FlexDPO
