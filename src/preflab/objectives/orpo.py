"""ORPO: odds-ratio preference optimisation, SFT plus a log-odds-ratio penalty, no reference model.

Paper: Hong, Lee & Thorne, 2024, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv:2403.07691), Eqs. 4 and 7 in TRL's log form. With A(y) = S_theta(y)/|y| (mean token log-prob, < 0):

    log_odds = (A_w - A_l) - (log(1 - exp(A_w)) - log(1 - exp(A_l)))
    L        = NLL - beta * log sigmoid(log_odds)          (beta = the paper's lambda, TRL's name)

NLL = the batch token-mean NLL of the chosen sequences (TRL's CrossEntropyLoss), the same for every pair, over
the tokens `nll_scope` names:

    prompt_and_response (default)  every token of prompt + chosen response but the first one, each predicted
        from the tokens before it: -(sum_i [S(x_i) + S(y_w,i)]) / sum_i [(|x_i| - 1) + |y_w,i|], S(x) the summed
        log-probs of the prompt's tokens after its first. TRL 1.16 ORPOTrainer.concatenated_forward ("orpo chosen
        nll loss is computed over the full prompt and response": labels = input_ids where attention_mask == 1) and
        the ORPO reference code (xfactlab/orpo@208d2d6 src/orpo_trainer.py compute_loss: the model's own loss with
        labels = input_ids, padding -100; its --disable_prompt_loss, off by default, drops the prompt).
    response  the chosen response tokens only: -(sum_i S(y_w,i)) / sum_i |y_w,i|, the paper's L_SFT read as the
        conditional NLL of y_w given x (Sec. 4.1, Eq. 6, with Eq. 1's conditional likelihood); what preflab's `orpo`
        computed before this option existed.

The prompt scope needs the chosen prompts' token log-probs: the token need "prompt_logps" (extra
`chosen_prompt_logps`, a SequenceLogps [B, P']), which preflab's trainers compute when this objective declares it.
The odds ratio always uses the response's mean log-prob A (TRL: the prompt-masked labels), whatever the scope.

Deviation from the paper: none (TRL's ORPOTrainer form). A is clamped below 0 by one float eps so that
log(1 - exp(A)) stays finite for a response of probability 1.
"""
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError, MissingExtraError, PreflabError
from preflab.objectives.base import (
    MEAN_LOGPS, NeedsByParams, Objective, ObjectiveOutput, PairBatch, SequenceLogps, as_loss_dtype, log1mexp,
)
from preflab.objectives.sft import batch_token_nll
from preflab.objectives.simpo import policy_metrics

NLL_SCOPES = ("prompt_and_response", "response")
PROMPT_EXTRA = "chosen_prompt_logps"


def log_odds_ratio(a_w: torch.Tensor, a_l: torch.Tensor) -> torch.Tensor:
    """(A_w - A_l) - (log(1 - exp(A_w)) - log(1 - exp(A_l))) of mean token log-probs A, each clamped below 0 by one
    float eps (finite for a response of probability 1)."""
    tiny = -torch.finfo(a_w.dtype).eps
    return (a_w - a_l) - (log1mexp(a_w.clamp(max=tiny)) - log1mexp(a_l.clamp(max=tiny)))


@dataclass(frozen=True)
class ORPO(Objective):
    reward_meaning = "beta * mean token log-prob (no reference)"
    logps_meaning = MEAN_LOGPS
    beta: float = 0.1  # lambda, weight of the odds-ratio term (TRL ORPOConfig default)
    nll_scope: str = "prompt_and_response"  # tokens of the NLL term: TRL's and the reference code's, or "response"

    needs_reference = False
    token_needs = NeedsByParams(("prompt_logps",), lambda self: ("prompt_logps",) * (
        self.nll_scope == "prompt_and_response"))
    paper = "Hong et al. 2024, ORPO: Monolithic Preference Optimization without Reference Model (arXiv:2403.07691)"
    checked_against = ("reference code: TRL 1.16 ORPOTrainer.get_batch_loss_metrics (concatenated_forward, "
                       "odds_ratio_loss) on a tiny model, every layout, gradients too "
                       "(tests/objectives/test_orpo_trl_trainer.py, 1e-6); NLL scope read against "
                       "xfactlab/orpo@208d2d6 src/orpo_trainer.py")
    tags = {"data": ("pair-wise",), "framework": ("offline",), "constraint": ("reference-free",),
            "property": ("likelihood",)}
    # the NLL term is the micro-batch's token mean (TRL's and the reference code's) (base.couples_micro_batch)
    micro_batch_statistic: ClassVar[bool] = True

    def validate(self):
        super().validate()
        if self.nll_scope not in NLL_SCOPES:
            raise ConfigError(f"ORPO: nll_scope must be one of {NLL_SCOPES} (prompt_and_response: TRL's ORPOTrainer "
                              f"and the ORPO reference code; response: the chosen response only), got "
                              f"{self.nll_scope!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        a_w, a_l = as_loss_dtype(batch.policy_chosen.mean), as_loss_dtype(batch.policy_rejected.mean)
        log_odds = log_odds_ratio(a_w, a_l)
        ratio = F.logsigmoid(log_odds)
        if self.nll_scope == "response":
            nll = batch_token_nll(batch.policy_chosen)
        else:
            nll = batch_token_nll(_chosen_prompt(batch, "orpo"), batch.policy_chosen)
        losses = nll - self.beta * ratio
        metrics = policy_metrics(batch, self.beta, a_w, a_l, nll)
        metrics["log_odds_ratio"], metrics["log_odds_chosen"] = ratio.detach().mean(), log_odds.detach().mean()
        return ObjectiveOutput(losses.mean(), losses, metrics)

    @classmethod
    def example_extras(cls, batch) -> dict:
        """Prompt log-probs of 2 tokens per chosen sequence (the contract test's batches have none)."""
        pc = batch.policy_chosen
        values = torch.full((pc.token_logps.shape[0], 2), -1.5, dtype=pc.token_logps.dtype)
        return {PROMPT_EXTRA: SequenceLogps(values, torch.ones(values.shape, dtype=torch.bool))}


def _chosen_prompt(batch: PairBatch, owner: str) -> SequenceLogps:
    """extras["chosen_prompt_logps"], or a MissingExtraError saying where it comes from and what to do instead."""
    prompt = batch.extras.get(PROMPT_EXTRA)
    if not isinstance(prompt, SequenceLogps):
        have = "a " + type(prompt).__name__ if prompt is not None else "none"
        raise MissingExtraError(
            f"{owner} with nll_scope='prompt_and_response' (TRL's ORPOTrainer) takes its NLL over the chosen "
            f"prompts' tokens too: it needs batch.extras[{PROMPT_EXTRA!r}], a SequenceLogps [B, P'] of the log-probs "
            f"of each prompt's tokens after its first (this batch has {have}). preflab's trainers compute it (the "
            "objective declares the 'prompt_logps' token need); a batch built by hand must carry it, or set "
            "nll_scope='response' for the chosen response tokens only.")
    if prompt.token_logps.shape[0] != batch.size:
        raise PreflabError(f"{owner}: extras[{PROMPT_EXTRA!r}] holds {prompt.token_logps.shape[0]} prompts for "
                           f"{batch.size} pairs; it needs one row per chosen sequence.")
    return prompt


OBJECTIVE = ORPO
