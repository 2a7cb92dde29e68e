"""RPO: DPO plus an SFT (NLL) regularizer on the chosen response, "your SFT loss is an adversarial regularizer".

Paper: Liu, Lu, Wang et al., 2024, "Provably Mitigating Overoptimization in RLHF: Your SFT Loss is Implicitly an
Adversarial Regularizer" (arXiv:2405.16436), Algorithm/Eq. of RPO (main text: cumulative; Appendix F: average).

    L = -log sigmoid(beta * Delta) + c * NLL(y_w),   Delta = h(y_w) - h(y_l),  h = S_theta - S_ref
    nll_agg = "sum"               c = eta * beta, NLL = -S_theta(y_w)                  (cumulative, paper main text)
    nll_agg = "seq_mean"          c = eta,        NLL = -S_theta(y_w)/|y_w|, batch mean (average, Appendix F; default)
    nll_agg = "batch_token_mean"  c = eta,        NLL = token-weighted mean over the batch (TRL ["sigmoid","sft"])

Verified against the official code, re-read in the audit of 2026-12 at YSLIU627/Regularized-Preference-Optimization
@d0389c4: `alignment-handbook/scripts/rpo_trainer.py` subtracts beta * eta * S_theta(y_w) from the DPO loss (sum),
`OpenRLHF/openrlhf/trainer/dpo_trainer.py` adds nll_loss_coef * (-batch mean of per-sequence mean log-probs)
(seq_mean). Recipes: cumulative beta=0.01, eta=0.005 (zephyr-7b-beta); average beta=0.5, eta=0.2 (`train_rpo.sh`).
Defaults (paper audit 2026-12): beta = 0.5 with eta = 0.2 and nll_agg = seq_mean, all three from the average
recipe (`OpenRLHF/train_rpo.sh`: `--beta 0.5`, `ETA=0.2` as `--nll_loss_coef`, zephyr-7b-gemma-sft on
argilla/dpo-mix-7k). Before, beta was DPO's 0.1 beside that recipe's eta and aggregation, a combination neither
released recipe runs (at 0.1 the SFT term weighs 5x more against the DPO term's gradient scale than the recipe's).
An unset beta takes this class default (preflab.objectives._own_beta; RPO is not a TRL loss type; TRL's own RPO
is the `rpo_alpha` option on a TRL loss, which keeps TRL's 0.1).

Deviation from the paper: none. The aggregation is an explicit option (`nll_agg`) because the two official
variants and TRL's paper-index recipe all differ; defaults follow the README's recommended average variant.
"""
from dataclasses import dataclass

import torch.nn.functional as F

from preflab.objectives._nll import check_agg, nll
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, logratios, reward_metrics


@dataclass(frozen=True)
class RPO(Objective):
    beta: float = 0.5           # DPO inverse temperature (the average recipe's, train_rpo.sh)
    eta: float = 0.2            # weight of the SFT term (paper's eta); 0 gives DPO exactly
    nll_agg: str = "seq_mean"   # sum (weight eta*beta) | seq_mean | batch_token_mean

    paper = "Liu et al. 2024, Provably Mitigating Overoptimization in RLHF (arXiv:2405.16436)"
    checked_against = ("official code: YSLIU627/Regularized-Preference-Optimization@d0389c4 rpo_trainer.py (sum) "
                       "and OpenRLHF dpo_trainer.py (seq_mean), re-read 2026-12; defaults = train_rpo.sh "
                       "(beta 0.5, nll_loss_coef 0.2)")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference",),
            "property": ("likelihood",)}

    @property
    def micro_batch_statistic(self) -> bool:
        """nll_agg batch_token_mean (with eta > 0) is the micro-batch's token mean (base.couples_micro_batch)."""
        return self.eta != 0 and self.nll_agg == "batch_token_mean"

    def validate(self):
        super().validate()
        check_agg(self.nll_agg, "RPO")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        dpo = -F.logsigmoid(self.beta * (h_w - h_l))
        coef = self.eta * self.beta if self.nll_agg == "sum" else self.eta
        sft = nll(batch.policy_chosen, self.nll_agg).to(dpo.dtype)
        losses = dpo + coef * sft
        metrics = reward_metrics(batch, self.beta)
        metrics["loss/dpo"], metrics["loss/nll"] = dpo.detach().mean(), sft.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)


OBJECTIVE = RPO
