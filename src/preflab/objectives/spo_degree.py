"""SPO (self-supervised preference optimization): a pairwise alignment loss plus an auxiliary "preference degree"
classification loss on degraded variants of the responses.

Paper: Li, Huang et al., 2024, "Self-supervised Preference Optimization: Enhance Your Language Model with Preference
Degree Awareness" (arXiv:2409.17791). The official repository (lijian16/SPO) holds only a LICENSE; this follows the
provisional design of methods/objectives.md §C #9, written from memory. Unverified.

    L = align_weight * -log sigmoid(beta * Delta) + degree_weight * CE(degree_logits, degree_labels)

Extras: degree_logits [B, ..., J+1], logits of a classification head on the policy's hidden states for variants of
each response with j = 0..J key content units deleted (gradient flows into the head and the policy through them);
degree_labels [B, ...] int in 0..J (the number deleted; -100 = no variant). The CE is averaged per example over its
variants. Metrics (ObjectiveOutput.metric_counts, so a step of several micro-batches or processes, and eval over
several batches, logs the mean over all of them): loss/degree is that per-example CE averaged over the examples (as
in the loss), degree/accuracy the fraction of all scored variants whose predicted class is j. This module is the loss only; its extras are computed by `preflab train` (task: dpo):
preflab.data.spo_variants builds the variants (degrees = J, unit_extractor), preflab.loops.degree_head scores
them with the policy and a zero-initialised linear head at every step (the objective's extras producer); they are
never data columns. For a base loss other than DPO, combine
WeightedSum(["<base>", "spo_degree"]) with align_weight=0 here: the sum logs the base's metrics, loss/spo_degree
(then the degree term) and this part's declared metrics (metric_panels: loss/degree, degree/accuracy), not its
rewards/*.

Deviation from the paper: unverified (see above); the alignment loss is fixed to DPO (sigmoid).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from preflab.errors import ConfigError, PreflabError
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch, as_loss_dtype, logratios, reward_metrics


@dataclass(frozen=True)
class SPODegree(Objective):
    beta: float = 0.1           # DPO inverse temperature
    degree_weight: float = 0.1  # lambda_deg of the degree loss (unverified default); 0 gives DPO
    align_weight: float = 1.0   # weight of the DPO term (0 to use this as the auxiliary term only)
    degrees: int = 3            # J: variants j = 0..J key units deleted, J+1 classes (unverified default)
    unit_extractor: str = "longest_words"  # preflab.data.spo_variants extractor name, or "module:function"

    required_extras = ("degree_logits", "degree_labels")
    gradient_extras = ("degree_logits",)
    gradient_extras_hint = ("Train it with `preflab train` (task: dpo), which computes them with a degree head on "
                            "the policy (preflab.loops.degree_head).")
    produced_extras = ("degree_logits", "degree_labels")
    extras_producer = "preflab.loops.degree_head:DegreeExtras"
    # the auxiliary task's own curves in `preflab report` (did the degree head learn? chance accuracy is 1/(J+1))
    metric_panels = (("Degree loss (SPO)", "degree head cross-entropy", ("loss/degree",)),
                     ("Degree accuracy (SPO)", "fraction of variants (chance 1/(J+1))", ("degree/accuracy",)))
    paper = "Li et al. 2024, Self-supervised Preference Optimization (arXiv:2409.17791)"
    checked_against = ("unverified: from memory; the official repo lijian16/SPO@1fb96f8 (re-fetched 2026-12) still "
                       "holds only a LICENSE; no other implementation found")
    tags = {"data": ("pair-wise", "quality"), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def validate(self):
        super().validate()
        if self.degree_weight < 0 or self.align_weight < 0:
            raise ConfigError("SPODegree: degree_weight and align_weight must be >= 0.")
        if not isinstance(self.degrees, int) or self.degrees < 1:
            raise ConfigError(f"SPODegree: degrees (J, the most key units deleted) must be an integer >= 1, got "
                              f"{self.degrees!r}.")

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        h_w, h_l = logratios(batch)
        logits = as_loss_dtype(torch.as_tensor(batch.extra("degree_logits", "SPODegree")))
        labels = torch.as_tensor(batch.extra("degree_labels", "SPODegree"), device=logits.device).long()
        B, J1 = logits.shape[0], logits.shape[-1]
        if J1 != self.degrees + 1:
            raise PreflabError(f"SPODegree: degree_logits has {J1} classes; degrees={self.degrees} needs "
                               f"{self.degrees + 1} (j = 0..J).")
        ce = F.cross_entropy(logits.reshape(-1, J1), labels.reshape(-1), ignore_index=-100, reduction="none")
        valid = (labels.reshape(B, -1) != -100).to(ce.dtype)
        degree = (ce.reshape(B, -1) * valid).sum(-1) / valid.sum(-1).clamp_min(1)
        align = -F.logsigmoid(self.beta * (h_w - h_l))
        losses = self.align_weight * align + self.degree_weight * degree.to(align)
        metrics = reward_metrics(batch, self.beta)
        metrics["loss/degree"] = degree.detach().mean()
        pred = logits.detach().argmax(-1)
        scored = valid.sum()
        metrics["degree/accuracy"] = ((pred == labels).to(ce.dtype) * (labels != -100)).sum() / scored.clamp_min(1)
        # what each averages: loss/degree the examples (as the loss does: each example's mean over its variants, the
        # step weights examples), degree/accuracy the scored variants (a response with fewer units than J has fewer)
        counts = {"loss/degree": B, "degree/accuracy": scored}
        return ObjectiveOutput(losses.mean(), losses, metrics, counts)

    @classmethod
    def example_extras(cls, batch) -> dict:
        logits = torch.linspace(-1.0, 1.0, batch.size * 2 * 4, dtype=torch.float64).reshape(batch.size, 2, 4)
        return {"degree_logits": logits, "degree_labels": torch.tensor([[0, 3], [1, 2], [2, -100], [3, 0]])[: batch.size]}


OBJECTIVE = SPODegree
