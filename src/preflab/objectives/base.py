"""The objective contract: score containers in, loss and metrics out (DESIGN.md, "The objective contract").

An objective is a frozen dataclass of hyper-parameters whose `compute(batch)` is a pure function of log-prob
tensors. It never calls a model; it declares what the scoring layer must supply:

    needs_reference   bool   the trainer runs (or loads cached) reference log-probs only when True
    required_extras   tuple  keys of `batch.extras` it reads, each documented in the objective's docstring; in
                             offline training they are numeric data columns, checked in every row at data load
    extra_ranges      dict   {extra: (low, high)} closed bounds a data column must respect (None: unbounded)
    token_needs       tuple  token-level quantities the scorer computes in its chunked vocabulary pass:
                             "token_kl" -> extras chosen_token_kl / rejected_token_kl [B, T] = KL(pi_ref || pi_theta)
                             "hidden"   -> extras chosen_hidden / rejected_hidden [B, T, H] (policy last hidden state)
                             "prompt_logps" -> extra chosen_prompt_logps, a SequenceLogps [B, P'] of the chosen
                                         sequences' prompt tokens 1..P-1, each predicted from the tokens before it
                                         (the causal-LM labels of the prompt; the scorer's head sees prompt
                                         positions only for this need)
                             A need that depends on the objective's parameters is a `NeedsByParams`.
    gradient_extras   tuple  the required extras that are the *policy's* scores and must carry gradient (extra
                             sequences scored with the policy in the training loop); a data column would be a
                             constant, the method's own term would do nothing, so trainers that cannot compute them
                             refuse the objective (`check_gradient_extras`)
    extras_producer   str    "module:Class" of an ExtrasProducer (preflab.loops.extras_producer) that the offline
                             trainer builds to compute `produced_extras` at every step (e.g. spo_degree's degree
                             head on scored response variants); its parameters train with the policy and are saved
    produced_extras   tuple  the required extras that producer computes: not data columns (refused in rows)
    state_file        str    where an objective with its own trained tensors (an nn.Module with state, e.g.
                             SparsePO's token masks) has them written beside the final model (its state_dict's
                             names, safetensors; preflab.loops.driver); the best checkpoint's with
                             load_best_model_at_end
    metric_panels     tuple  ((title, y label, (metric, ...)), ...): the objective's own logged metrics (beyond
                             the DPO-style ones every report draws) that `preflab report` draws as curves, train
                             solid and `eval_<metric>` dashed (e.g. spo_degree's loss/degree, degree/accuracy)
    token_extras      tuple  the required extras with one value per response token, named `<side>_<name>`
                             (chosen_/rejected_ on pairs, completion_ on unpaired): [B, T] like that side's
                             log-probs, checked on every call; in data, list columns padded to the response mask
    batch_type        type   PairBatch, UnpairedBatch or ListBatch
    modality          str    what the scores come from: "text" (language-model log-probs) or "diffusion"
                             (-MSE denoising scores); `check_modality` refuses an objective on the wrong task
    online_trainer    str    the `task: online` trainer of an objective whose loss is a policy gradient on
                             completions sampled from the policy in training (grpo, rloo): any other task, which
                             reads fixed completions from data, refuses it (`check_online_only`)

Shapes: B examples, T completion positions (chosen and rejected may differ), K responses per prompt (lists).
"""
from __future__ import annotations

import dataclasses
import inspect
import numbers
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from preflab.errors import ConfigError, MissingExtraError, MissingReferenceError, PreflabError, nearest
from preflab.objectives._registry import objective_class, resolve_name
from preflab.option_types import is_number


@dataclass
class SequenceLogps:
    """Per-token log pi(y_t | x, y_<t) of one side of a batch and its response mask.

    token_logps: [..., T] float; mask: [..., T] bool (True on response tokens; prompt and padding False).
    Positions outside the mask are ignored whatever they hold.
    """

    token_logps: Tensor
    mask: Tensor

    def __post_init__(self):
        if self.token_logps.shape != self.mask.shape:
            raise PreflabError(
                f"SequenceLogps: token_logps {tuple(self.token_logps.shape)} and mask {tuple(self.mask.shape)} "
                "must have the same shape."
            )
        if self.mask.dtype != torch.bool:
            self.mask = self.mask.bool()

    @property
    def sum(self) -> Tensor:
        """[...] summed log-prob of each response: S(y) = sum_t m_t lp_t.

        Computed once and reused while token_logps, mask and the result are the same tensors, unchanged in place
        (version counters), under the same grad mode: an objective reads it for its loss and again for its metrics
        (reward_metrics), and every recomputation is device work (two ops per call)."""
        state = _sum_state(self.token_logps, self.mask)
        cached = self.__dict__.get("_sum_cache")
        if state is not None and cached is not None and cached[0] is self.token_logps and cached[1] is self.mask \
                and cached[2] == state and cached[3]._version == cached[4]:
            return cached[3]
        total = torch.where(self.mask, self.token_logps, 0.0).sum(-1)
        if state is not None:
            self.__dict__["_sum_cache"] = (self.token_logps, self.mask, state, total, total._version)
        return total

    @property
    def length(self) -> Tensor:
        """[...] number of response tokens |y|, in the log-probs' dtype."""
        return self.mask.sum(-1).to(self.token_logps.dtype)

    @property
    def mean(self) -> Tensor:
        """[...] mean log-prob per response token, S(y)/|y| (0 for an empty response)."""
        return self.sum / self.length.clamp_min(1)

    def masked(self) -> Tensor:
        """[..., T] token log-probs with positions outside the mask set to 0."""
        return torch.where(self.mask, self.token_logps, 0.0)

    @classmethod
    def from_sums(cls, sums: Tensor) -> "SequenceLogps":
        """Length-1 sequences whose single token carries the given sums; for tests and the lab."""
        sums = torch.as_tensor(sums)
        return cls(sums.unsqueeze(-1), torch.ones(*sums.shape, 1, dtype=torch.bool, device=sums.device))

    def detach(self) -> "SequenceLogps":
        return SequenceLogps(self.token_logps.detach(), self.mask)


def _sum_state(token_logps: Tensor, mask: Tensor) -> tuple | None:
    """What SequenceLogps.sum's cached value depends on besides the tensors' identity: their version counters (an
    in-place change) and the grad mode; None where it cannot be told (inference tensors keep no version counter)."""
    try:
        return token_logps._version, mask._version, torch.is_grad_enabled()
    except RuntimeError:
        return None


class NeedsByParams:
    """A declaration (e.g. `token_needs`) that depends on an objective's parameters. Read on the class it is every
    value the objective can declare (what `preflab objectives` lists and class-level filters see); read on an
    instance it is `rule(instance)`, what that instance needs (what the trainers compute)."""

    def __init__(self, possible: tuple, rule):
        self.possible, self.rule = tuple(possible), rule

    def __get__(self, instance, owner=None) -> tuple:
        return self.possible if instance is None else tuple(self.rule(instance))


def _extra(extras: dict, name: str, owner: str, gradient: bool = False) -> Any:
    if name not in extras:
        fix = (f"{name!r} is the policy's log-probs of extra sequences and must carry gradient: the training loop "
               "has to score those sequences with the policy (a data column would be a constant, and the term would "
               "do nothing)." if gradient else f"Add a {name!r} column to the data or compute it in the loop.")
        err = MissingExtraError(
            f"{owner} needs batch.extras[{name!r}], which this batch does not carry (it has "
            f"{sorted(extras) or 'no extras'}). {fix}"
        )
        err.extra = name  # read by Objective.__call__ (an extra the objective did not declare)
        raise err
    return extras[name]


@dataclass
class PairBatch:
    """A batch of preference pairs (x, y_w, y_l) as log-probs; the reference sides are None when not needed."""

    policy_chosen: SequenceLogps
    policy_rejected: SequenceLogps
    ref_chosen: SequenceLogps | None = None
    ref_rejected: SequenceLogps | None = None
    extras: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.policy_chosen.token_logps.shape[0]

    def extra(self, name: str, owner: str = "this objective", gradient: bool = False) -> Any:
        """`extras[name]`, or a MissingExtraError naming the key and what to do (`gradient`: the extra is policy
        log-probs that must carry gradient, so a data column is not the fix)."""
        return _extra(self.extras, name, owner, gradient)

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen is not None and self.ref_rejected is not None

    @classmethod
    def from_sums(cls, policy_chosen, policy_rejected, ref_chosen=None, ref_rejected=None, extras=None):
        """A batch of length-1 sequences from [B] sequence log-prob sums (tests, the lab, diffusion scores)."""
        wrap = lambda s: None if s is None else SequenceLogps.from_sums(torch.as_tensor(s))  # noqa: E731
        return cls(wrap(policy_chosen), wrap(policy_rejected), wrap(ref_chosen), wrap(ref_rejected), dict(extras or {}))


@dataclass
class UnpairedBatch:
    """KTO-style examples: one completion each with a desirable (True) / undesirable (False) label.

    policy, ref: SequenceLogps [B, T]; label: bool [B]; policy_kl / ref_kl: log-probs [B, T] of mismatched
    completions (x_i with y_{i-1}) used by KTO's reference-point estimate, when the objective needs them.
    """

    policy: SequenceLogps
    label: Tensor
    ref: SequenceLogps | None = None
    policy_kl: SequenceLogps | None = None
    ref_kl: SequenceLogps | None = None
    extras: dict = field(default_factory=dict)
    # (desirable, undesirable) example counts when known on the host (the training loop's batches): the counts of
    # the per-label metric means (ObjectiveOutput.metric_counts) are then host numbers, not device reads
    label_counts: tuple[int, int] | None = None
    # a training step on several processes: the mean over the processes of their micro-batches' mismatched_kl()
    # (this micro-batch and the other processes' at the same place in the step), set by the training loop as TRL
    # 1.16's KTOTrainer gathers its KL estimate before the mean; None: this batch's own mismatched_kl()
    kl_mean_over_processes: Tensor | None = None

    @property
    def size(self) -> int:
        return self.policy.token_logps.shape[0]

    def mismatched_kl(self) -> Tensor:
        """mean_i (S_theta(y'_i) - S_ref(y'_i)) over the batch's mismatched completions, in the loss dtype, without
        gradient: KTO's KL estimate before its clamp at 0."""
        if self.policy_kl is None or self.ref_kl is None:
            raise PreflabError("KTO needs policy_kl and ref_kl (log-probs of mismatched completions x_i + y_{i-1}) "
                               "for its reference point; use apo_zero_unpaired to train without them.")
        return (as_loss_dtype(self.policy_kl.sum.detach()) - as_loss_dtype(self.ref_kl.sum.detach())).mean()

    @property
    def has_reference(self) -> bool:
        return self.ref is not None

    def extra(self, name: str, owner: str = "this objective", gradient: bool = False) -> Any:
        return _extra(self.extras, name, owner, gradient)

    @classmethod
    def from_sums(cls, policy, label, ref=None, policy_kl=None, ref_kl=None, extras=None):
        wrap = lambda s: None if s is None else SequenceLogps.from_sums(torch.as_tensor(s))  # noqa: E731
        return cls(wrap(policy), torch.as_tensor(label).bool(), wrap(ref), wrap(policy_kl), wrap(ref_kl),
                   dict(extras or {}))


@dataclass
class ListBatch:
    """K responses per prompt with scores (higher is better) or ranks.

    policy, ref: SequenceLogps [B, K, T]; scores: [B, K] float (ties allowed); valid: bool [B, K] marks real
    responses when prompts have fewer than K (default: all valid).
    """

    policy: SequenceLogps
    scores: Tensor
    ref: SequenceLogps | None = None
    valid: Tensor | None = None
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.valid is None:
            self.valid = torch.ones(self.scores.shape, dtype=torch.bool, device=self.scores.device)

    @property
    def size(self) -> int:
        return self.scores.shape[0]

    @property
    def has_reference(self) -> bool:
        return self.ref is not None

    def extra(self, name: str, owner: str = "this objective", gradient: bool = False) -> Any:
        return _extra(self.extras, name, owner, gradient)

    @classmethod
    def from_sums(cls, policy, scores, ref=None, valid=None, extras=None):
        """From [B, K] sequence sums."""
        wrap = lambda s: None if s is None else SequenceLogps.from_sums(torch.as_tensor(s))  # noqa: E731
        return cls(wrap(policy), torch.as_tensor(scores), wrap(ref), valid, dict(extras or {}))


@dataclass
class ObjectiveOutput:
    """loss: differentiable scalar = mean of `losses`; losses: [B] per-example; metrics: detached scalars.

    metric_counts: for a metric that is a mean over part of the batch (the desirable examples of a KTO batch, the
    response tokens), the number of things it averages ({name: int, float or 0-dim tensor}); 0 when the batch has
    none, and the metric's value is then 0. The step and evaluation sum value x count and count over micro-batches,
    ranks and logging windows and divide once, so the logged value is the exact mean over all those things. A
    metric not named here is a mean over the batch's examples (its count is the number of examples).
    metric_differences: {name: (a, b)}: a metric defined as metric a - metric b (KTO's rewards/margins), computed
    again from the exact a and b wherever they are averaged.
    metric_extrema: {name: "min" | "max"}: a metric that is this micro-batch's min (max) over what it ranges over
    (NaN when it has none: GRPO's clip_ratio/low_min, high_max). The step takes the min (max) of each micro-batch
    over the ranks, as TRL's nanmin(gather(...)) per compute_loss call, and averages those over the micro-batches
    (TRL's log(): the mean of the window's values, NaN ones left out); its count is the number of micro-batches
    with a value (preflab.step)."""

    loss: Tensor
    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    metric_counts: dict[str, Any] = field(default_factory=dict)
    metric_differences: dict[str, tuple[str, str]] = field(default_factory=dict)
    metric_extrema: dict[str, str] = field(default_factory=dict)


# The survey of DPO (paper #22) classifies methods along four axes; objectives tag themselves with them.
TAG_AXES = ("data", "framework", "constraint", "property")
# the meaning of rewards/* and logps/* (reward_metrics' default): Objective.reward_meaning / logps_meaning
IMPLICIT_REWARD = "beta * log-ratio to the reference, summed"
SUMMED_LOGPS = "summed log-prob"
MEAN_LOGPS = "mean token log-prob"


class Objective:
    """Base class of every objective. Subclasses are `@dataclass(frozen=True)` with documented fields.

    Class attributes (declarations the trainer reads; see the module docstring):
    """

    aliases: ClassVar[tuple[str, ...]] = ()
    batch_type: ClassVar[type] = PairBatch
    needs_reference: ClassVar[bool] = True
    required_extras: ClassVar[tuple[str, ...]] = ()
    extra_ranges: ClassVar[dict[str, tuple[float | None, float | None]]] = {}
    gradient_extras: ClassVar[tuple[str, ...]] = ()
    gradient_extras_hint: ClassVar[str] = ""  # what to use instead, shown when a trainer refuses gradient_extras
    extras_producer: ClassVar[str] = ""
    produced_extras: ClassVar[tuple[str, ...]] = ()
    metric_panels: ClassVar[tuple[tuple[str, str, tuple[str, ...]], ...]] = ()
    state_file: ClassVar[str] = "objective_state.safetensors"
    token_extras: ClassVar[tuple[str, ...]] = ()
    token_needs: ClassVar[tuple[str, ...]] = ()
    paper: ClassVar[str] = ""
    # What this implementation's formula was checked against, most trusted first (VERIFICATION.md):
    #   "reference code: <what>"  equal in a test to a named implementation (TRL 1.16, the paper's released code)
    #   "official code: <repo>"   read against the authors' code; "paper text: <where>"  read against the paper
    #   "3rd-party: <what>"       a review or re-implementation; "unverified: <why>"  from memory or derived
    checked_against: ClassVar[str] = ""
    tags: ClassVar[dict[str, tuple[str, ...]]] = {}
    modality: ClassVar[str] = "text"
    online_trainer: ClassVar[str] = ""
    # what the objective logs under TRL's names rewards/* and logps/* (the report labels and splits its panels by
    # these, `preflab objectives NAME` prints them): DPO's implicit reward and summed log-probs unless it says other
    reward_meaning: ClassVar[str] = IMPLICIT_REWARD
    logps_meaning: ClassVar[str] = SUMMED_LOGPS

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for impossible parameter values. Override and call super().validate()."""
        for f in dataclasses.fields(self):
            if f.name == "beta" and not getattr(self, "beta") > 0:
                raise ConfigError(f"{type(self).__name__}: beta must be > 0, got {self.beta}.")

    def compute(self, batch) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, batch) -> ObjectiveOutput:
        name = type(self).__name__
        if not isinstance(batch, self.batch_type):
            raise PreflabError(f"{name} takes a {self.batch_type.__name__}, got {type(batch).__name__}.")
        if self.needs_reference and not batch.has_reference:
            raise PreflabError(
                f"{name} needs reference log-probs (ref_chosen/ref_rejected); the batch has none. "
                "Give a reference model, or precompute reference log-probs."
            )
        for key in self.required_extras:
            _extra(batch.extras, key, name, gradient=key in self.gradient_extras)
        for key in self.token_extras:
            _check_token_extra(batch, key, name)
        try:
            out = self.compute(batch)
        except MissingExtraError as err:
            _undeclared_extra(self, err)
            raise
        except MissingReferenceError as err:
            raise MissingReferenceError(f"{name}{_defined_in(type(self))}: {err}") from None
        size = getattr(batch, "size", None)
        if not isinstance(out, ObjectiveOutput) or not torch.is_tensor(out.loss) or out.loss.ndim != 0 or \
                not torch.is_tensor(out.losses) or (size is not None and tuple(out.losses.shape) != (size,)):
            shape = lambda x: f"of shape {tuple(x.shape)}" if torch.is_tensor(x) else \
                f"as a {type(x).__name__}, not a tensor"  # noqa: E731 - float(...) / .item() / .tolist() lose the graph
            got = type(out).__name__ if not isinstance(out, ObjectiveOutput) else \
                f"loss {shape(out.loss)} and losses {shape(out.losses)}"
            raise PreflabError(f"{name}.compute returned {got}; it must return ObjectiveOutput(loss, losses, "
                               "metrics) with a scalar loss tensor and one loss per example (losses of shape "
                               f"({size},), a tensor).{_defined_in(type(self), ' ' + name + ' is defined in {}.')}")
        _check_metrics(out.metrics, name, type(self))
        if torch.is_grad_enabled() and not out.losses.requires_grad and _policy_requires_grad(batch):
            # the step back-propagates sum(losses): without a graph it fails ("element 0 of tensors does not require
            # grad"), and inside a weighted sum the part would be a constant that trains nothing
            raise PreflabError(f"{name}.compute returned per-example losses that do not depend on the policy (no "
                               "gradient): they were detached (.detach(), .item(), float(), torch.no_grad) or "
                               "computed from the reference or extras only; compute them from the batch's policy "
                               f"log-probs.{_defined_in(type(self), ' ' + name + ' is defined in {}.')}")
        return out

    @classmethod
    def row_extras(cls) -> dict[str, tuple[float | None, float | None]]:
        """{required extra: (low, high)}: what every data row must carry for offline training (see
        `preflab.data.validate.check_numeric_extra`)."""
        return {name: tuple(cls.extra_ranges.get(name, (None, None))) for name in cls.required_extras
                if name not in cls.produced_extras}

    @classmethod
    def example_extras(cls, batch) -> dict:
        """Plausible values for `required_extras` and `token_needs` on `batch` (the contract test uses them).
        Objectives that read extras override this."""
        return {}

    @classmethod
    def params(cls) -> dict[str, Any]:
        """{field name: default} of the objective's hyper-parameters."""
        return {f.name: f.default for f in dataclasses.fields(cls)}


def _check_token_extra(batch, key: str, owner: str) -> None:
    """A per-token extra must have its side's [B, T] shape, so its values line up with the response tokens."""
    side = key.split("_", 1)[0]
    logps = getattr(batch, "policy", None) if side == "completion" else getattr(batch, f"policy_{side}", None)
    if not isinstance(logps, SequenceLogps) or key not in batch.extras:
        return
    shape = tuple(torch.as_tensor(batch.extras[key]).shape)
    if shape != tuple(logps.token_logps.shape):
        raise PreflabError(
            f"{owner}: extras[{key!r}] has shape {shape} but the {side} log-probs have shape "
            f"{tuple(logps.token_logps.shape)}; it must hold one value per {side} response token (in data: a list "
            f"column {key!r} with one value per token of the tokenized {side} response).")


# the names a training run writes itself in each metrics row around the objective's metrics (loops/driver.py's row,
# runlog.average_results's loss and grad_norm, the scored logits' TRL token metrics): an objective metric of one of
# these names would replace the run's own value in metrics.jsonl, and one starting with eval_ an evaluation's
TRAINER_METRICS = frozenset({"loss", "grad_norm", "step", "learning_rate", "epoch", "num_tokens", "num_images",
                             "tokens_per_second", "images_per_second", "train_tokens_per_second",
                             "train_images_per_second", "entropy", "mean_token_accuracy",
                             "logits/chosen", "logits/rejected"})


def _check_metrics(metrics, name: str, cls: type) -> None:
    """ObjectiveOutput.metrics must be a dict of one number each (a Python number or a one-element tensor: the step
    averages each over micro-batches, examples and ranks) under a name the run does not write itself
    (TRAINER_METRICS, eval_*); otherwise a PreflabError naming the metric, at the first call (preflab lab check,
    or the first micro-batch), not a crash in the step's averaging or a metrics.jsonl whose loss is the objective's
    metric."""
    where = _defined_in(cls, " " + name + " is defined in {}.")
    if not isinstance(metrics, dict):
        raise PreflabError(f"{name}.compute returned metrics as a {type(metrics).__name__}; give a dict of "
                           f"{{name: number}} ({{}} for none).{where}")
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise PreflabError(f"{name}: metric name {key!r} is not a string.{where}")
        if key in TRAINER_METRICS or key.startswith("eval_"):
            raise PreflabError(f"{name}: metric {key!r} is a name the run logs itself (its "
                               f"{'evaluation' if key.startswith('eval_') else key}): it would replace the run's value "
                               f"in metrics.jsonl. Rename it, e.g. '{name.lower()}/"
                               f"{key.removeprefix('eval_')}'.{where}")
        if torch.is_tensor(value):
            if value.numel() != 1:
                raise PreflabError(f"{name}: metric {key!r} is a tensor of shape {tuple(value.shape)}; a metric is one "
                                   f"number for the batch (the step averages it over micro-batches and processes): "
                                   f"reduce it, e.g. .mean().{where}")
        elif not isinstance(value, numbers.Real):
            raise PreflabError(f"{name}: metric {key!r} is a {type(value).__name__}; a metric is a number or a "
                               f"one-element tensor.{where}")


def _defined_in(cls: type, form: str = " (in {})") -> str:
    """`form` with the file of a class defined outside preflab (a user's objective); '' for preflab's own."""
    if cls.__module__.startswith("preflab."):
        return ""
    path = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return form.format(path) if path else ""


def _policy_requires_grad(batch) -> bool:
    """Whether the batch's policy log-probs carry gradient (a training step; not evaluation or a reference pass)."""
    sides = [getattr(batch, k, None) for k in ("policy_chosen", "policy_rejected", "policy")]
    return any(isinstance(s, SequenceLogps) and s.token_logps.requires_grad for s in sides)


def _undeclared_extra(objective, err: MissingExtraError) -> None:
    """Re-raise a missing extra that `objective` reads without declaring it, naming the class and the fix: a
    declared extra is checked in every data row at load (naming the row), an undeclared one only fails here."""
    key = getattr(err, "extra", None)
    declared = set(objective.required_extras) | set(objective.token_extras) | set(objective.produced_extras)
    if key is None or key in declared:
        return
    cls = type(objective)
    raise MissingExtraError(
        f"{cls.__name__}{_defined_in(cls)} reads batch.extra({key!r}) but does not declare it: add {key!r} to its "
        f"class attribute required_extras, so that every data row is checked for a numeric {key!r} column when "
        f"the data loads. ({err})") from err


def as_loss_dtype(x: Tensor) -> Tensor:
    """Loss arithmetic runs in float32 at least (float64 stays float64), even under bf16 training."""
    return x if x.dtype == torch.float64 else x.float()


def logratios(batch: PairBatch) -> tuple[Tensor, Tensor]:
    """(h_w, h_l) [B]: h(y) = S_theta(y) - S_ref(y), in the loss dtype."""
    if batch.ref_chosen is None or batch.ref_rejected is None:  # a run without a reference passes none
        raise MissingReferenceError(
            "logratios(batch) reads the reference log-probs, which this batch does not carry: the objective declares "
            "needs_reference = False, so the run loads no reference model. Remove that declaration (the default, "
            "True, gives every batch reference log-probs), or compute the loss from the policy's log-probs alone.")
    h_w = as_loss_dtype(batch.policy_chosen.sum) - as_loss_dtype(batch.ref_chosen.sum)
    h_l = as_loss_dtype(batch.policy_rejected.sum) - as_loss_dtype(batch.ref_rejected.sum)
    return h_w, h_l


def reward_metrics(batch: PairBatch, beta: float, chosen: Tensor | None = None, rejected: Tensor | None = None):
    """TRL's DPO metrics: rewards/{chosen,rejected,margins,accuracies} from beta*h, and logps/{chosen,rejected}.

    `chosen`/`rejected` override the implicit rewards (reference-free objectives pass beta*S or beta*A).
    rewards/accuracies is strict (ties count 0), as in TRL.
    """
    if chosen is None:
        h_w, h_l = logratios(batch)
        chosen, rejected = beta * h_w, beta * h_l
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).to(chosen.dtype).mean(),
        "logps/chosen": batch.policy_chosen.sum.detach().mean(),
        "logps/rejected": batch.policy_rejected.sum.detach().mean(),
    }


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, stable on both sides of -ln 2 (Maechler, 2012). x = 0 gives -inf."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x); l(z) = -log sigmoid(z) = softplus(-z)."""
    return F.softplus(x)


def objective_parts(objective) -> tuple:
    """The parts of a weighted sum (WeightedSum.parts: TRL's loss_type=[...]), else `(objective,)`: every check that
    asks "does any (or every) part of the run's loss declare X" reads an objective through this one function. An
    object with no `parts` (an objective, its class, a loss_type name) or an empty one is its own one part."""
    return getattr(objective, "parts", None) or (objective,)


def couples_micro_batch(objective) -> bool:
    """Whether the loss of `objective` (any part of a weighted sum, also inside a WPO weighting) holds a
    statistic of each micro-batch that is not a sum over its examples: KTO's reference point z0 (the micro-batch's
    mean over its mismatched completions; on several processes over their micro-batches:
    statistic_over_processes_parts), the sft term's token mean of each micro-batch (token_mean "micro_batch";
    also the NLL terms of cpo, orpo, rationale_orpo, simpo / alphapo with cpo_alpha, rpo / flex_dpo with nll_agg
    batch_token_mean), aot's sorted margins, GRPO's and RLOO's normalisations over the batch.
    Parts declare it as `micro_batch_statistic` (False when left out). For such a loss, P processes x b rows equal
    one process with b rows and P x gradient_accumulation_steps micro-batches, not one process with P x b rows
    (preflab.resume_check.check_global_batch keeps a resumed run on those micro-batches)."""
    return bool(micro_batch_statistic_parts(objective))


def micro_batch_statistic_parts(objective, online: bool = False) -> list[str]:
    """The class names of the parts of `objective` that declare `micro_batch_statistic` (couples_micro_batch), in
    order: what a refusal names (preflab.resume_check). tests/objectives/test_micro_batch_coupling.py checks every
    registered objective's declaration against its loss on a micro-batch and on its two halves.

    online=True: for the objective of a task: online run (preflab.online.run.OnlineRun), whose micro-batches carry
    the step's extras (the round's advantages, the step's tokens_per_prompt): a part reads
    `online_micro_batch_statistic` where it declares one (GRPO, RLOO: most of their offline statistics are the step's
    online) and `micro_batch_statistic` otherwise (a pair objective's NLL token mean is its micro-batch's online too).
    OnlineRun.micro_batches deals a step's examples over processes x micro-batches, so such a statistic moves with
    the number of processes (preflab.resume_check.check_global_batch refuses a resume on another one)."""
    parts = objective_parts(objective)  # a WPO weighting reads its inner objective's parts and attributes
    if parts != (objective,):
        return [name for p in parts for name in micro_batch_statistic_parts(p, online)]
    declared = getattr(objective, "online_micro_batch_statistic", None) if online else None
    if declared is None:
        declared = getattr(objective, "micro_batch_statistic", False)
    return [type(objective).__name__] if declared else []


def statistic_over_processes_parts(objective) -> list[str]:
    """The class names of the parts of `objective` whose micro-batch statistic is taken over the processes on
    several processes (`statistic_over_processes`: KTO's z0, the mean of every process's micro-batch KL estimate, as
    TRL gathers it). Its mismatched completions stay each process's own, so P processes x b rows equal neither one
    process with P x b rows (other KL pairs) nor with b rows x P micro-batches (another mean) in general: a run
    resumed on another number of processes is another run (preflab.resume_check)."""
    parts = objective_parts(objective)
    if parts != (objective,):
        return [name for p in parts for name in statistic_over_processes_parts(p)]
    return [type(objective).__name__] if getattr(objective, "statistic_over_processes", False) else []


def check_gradient_extras(objective, computed: tuple = (), how: str = "") -> None:
    """ConfigError when `objective` needs extras that must carry gradient (`gradient_extras`) and the trainer does
    not compute them (`computed`): training on constant columns would silently be the base method (e.g. plain DPO
    for rationale_dpo, hypo, vpo with calibration=extra). `how` names where the objective does run."""
    for part in objective_parts(objective):
        missing = [k for k in getattr(part, "gradient_extras", ()) if k not in computed]
        if missing:
            hint = getattr(part, "gradient_extras_hint", "")
            raise ConfigError(
                f"objective {type(part).__name__} needs {missing}: the policy's log-probs of extra sequences, "
                f"with gradient, which this trainer does not compute{how}. Taken from data columns they would be "
                f"constants, so its own term would do nothing and the run would be its base method. "
                f"{hint or 'Use an objective without such extras.'}")


# The modality each training task scores: every task not listed here trains language models.
TASK_MODALITY = {"diffusion": "diffusion"}
# what a task's models are, in check_modality's message, where "text" alone misleads: a vlm run trains image-text
# models, scored on their answers' tokens as language models are (it said "task 'vlm' trains text models")
TASK_MODELS = {"vlm": "image-text models (scored on their answers' tokens, as language models)"}
# the built-in objectives of each non-text modality, named in check_modality's fix (tests/objectives pin the list
# against every registered objective's `modality`)
MODALITY_OBJECTIVES = {"diffusion": ("diffusion_dpo", "smpo_diffusion", "diffusion_inpo", "dcpo", "ppd", "self_npo")}


def check_modality(objective, task: str) -> None:
    """ConfigError when `objective` (a name, class, instance or WeightedSum) scores a different modality than
    `task` trains: a diffusion objective on a language model computes a meaningless loss (0, or DPO with
    beta = 2500), a text objective on a diffusion model likewise. Called before any model loads."""
    wanted = TASK_MODALITY.get(task, "text")
    for part in objective_parts(objective):
        if isinstance(part, str):
            part = _class_for(part)
        have = getattr(part, "modality", "text")
        if have != wanted:
            name = part.__name__ if isinstance(part, type) else type(part).__name__
            if wanted == "text":
                other = [t for t, m in TASK_MODALITY.items() if m == have]
                fix = "use a language-model objective (e.g. loss_type=sigmoid)" + (
                    f", or train a {have} model with task: {other[0]}" if other else "")
            else:
                names = MODALITY_OBJECTIVES.get(wanted, ())
                fix = (f"use a {wanted} objective (loss_type: {' | '.join(names)}; `preflab objectives` lists each "
                       "one's modality)" if names else
                       f"use a {wanted} objective (`preflab objectives` lists each one's modality)")
            trains = TASK_MODELS.get(task, f"{wanted} models")
            raise ConfigError(f"objective {name} scores {have} models but task {task!r} trains {trains}; {fix}.")


def check_online_only(objective, task: str) -> None:
    """ConfigError when `objective` (a name, class, instance or WeightedSum) declares an `online_trainer` and `task`
    is not online. GRPO's and RLOO's losses are policy gradients: -A_i rho_i per completion (TRL's GRPOTrainer and
    RLOOTrainer; no DPOTrainer loss_type), unbiased only for completions y_i sampled from the policy being trained,
    rho_i = pi_theta(y_i) / pi_old(y_i) their importance ratio to the sampling policy. Offline rows carry fixed
    completions from another policy whose log-probs are not known, so rho_i = 1 (no correction, no clip), the
    loss's value is a mean of -A whatever the policy (its curve says nothing), and its gradient raises log pi_theta
    of the completions scored above their group's mean and lowers the others': not the method asked for. Called
    before any model loads."""
    if task == "online":
        return
    for part in objective_parts(objective):
        cls = _class_for(part) if isinstance(part, str) else part if isinstance(part, type) else type(part)
        trainer = getattr(cls, "online_trainer", "")
        if trainer:
            name = part if isinstance(part, str) else trainer
            raise ConfigError(
                f"loss_type {name!r} ({cls.__name__}) is a policy-gradient loss on completions sampled from the "
                f"policy being trained (TRL: {cls.__name__}Trainer, not a DPOTrainer loss_type); task {task!r} "
                "reads fixed completions from the data, where its importance ratio is always 1: it would raise the "
                "likelihood of the completions scored above their group's mean and lower the others', with no "
                f"importance correction and no clip. Set task: online, trainer: {trainer} (completions sampled from "
                "the policy and scored by reward_funcs or a judge), or, for ranked lists in the data, a listwise "
                "loss_type that reads them offline (rrhf).")


# a loss_type entry -> its objective class: a built-in name or alias (preflab.objectives._registry), 'module:Class' or
# 'file.py:Class' (preflab.plugins), or the class itself; here, below the package, so check_modality can use it
def _class_for(name) -> type[Objective]:
    if isinstance(name, type):  # the class itself, from Python (e.g. defined in a notebook)
        return _checked_user_class(name, name.__qualname__)
    if ":" in name:  # "package.module:Class" or "path/to/file.py:Class", an objective outside preflab
        from preflab.plugins import import_object

        return _checked_user_class(import_object(name, "objective (loss_type)"), name)
    return objective_class(resolve_name(name))


def _checked_user_class(cls, spec: str) -> type[Objective]:
    """A user's objective class, or a ConfigError saying what it must be (a function or a plain class would fail
    later with a TypeError from dataclasses)."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        what = f"the class {cls.__name__}" if isinstance(cls, type) else f"a {type(cls).__name__}"
        raise ConfigError(f"objective (loss_type): {spec!r} is {what}, not an objective: write a subclass of "
                          "preflab.objectives.Objective decorated with @dataclass(frozen=True) whose compute(batch) "
                          "returns an ObjectiveOutput.")
    if not dataclasses.is_dataclass(cls):
        raise ConfigError(f"objective (loss_type): {spec!r}: {cls.__name__} is not a dataclass; decorate it with "
                          "@dataclass(frozen=True) (its fields are its parameters).")
    refuse_unfrozen(cls, spec)
    try:  # the loops call compute(batch): another signature would fail at the first step, after the models loaded
        inspect.signature(cls.compute).bind(None, None)
    except TypeError:
        raise ConfigError(f"objective (loss_type): {spec!r}: {cls.__name__}{_defined_in(cls)} has "
                          f"compute{inspect.signature(cls.compute)}; it must take the batch alone: "
                          "def compute(self, batch) -> ObjectiveOutput (its parameters are dataclass fields, "
                          "its inputs batch.extra(name) with the name in required_extras).") from None
    return cls


def refuse_unfrozen(cls: type, spec: str) -> None:
    """ConfigError for a user's objective that is a plain @dataclass (not frozen=True) and no nn.Module.

    What relies on frozen-ness: an objective's state outside its parameters is saved nowhere. The run builds the
    objective from its config (loss_type, objective_params) in each process, again where the data is checked
    (cfg.objective()), and again on resume, whose identity check compares the config and the objective's source file
    (preflab.resume_check), not the instance; one instance then serves every micro-batch, step and evaluation. A value
    compute() wrote onto the objective (a running mean, an annealed beta) would so couple micro-batches, differ
    between processes, reach evaluation, and be lost at a resume, all without a word; frozen=True turns such a write
    into a FrozenInstanceError at the first step. An nn.Module objective (SparsePO) cannot be frozen and needs not:
    its trained state is its state_dict, saved in every checkpoint and restored on resume."""
    if cls.__dataclass_params__.frozen or issubclass(cls, torch.nn.Module):
        return
    raise ConfigError(f"objective (loss_type): {spec!r}: {cls.__name__}{_defined_in(cls)} is a @dataclass without "
                      "frozen=True; write @dataclass(frozen=True) above it. An objective's fields are its parameters, "
                      "rebuilt from the config in every process and on resume, and nothing compute() writes onto the "
                      "objective is saved, so such a value would differ between processes and be lost at a resume; "
                      "frozen=True makes that write an error. Trained state belongs in an nn.Module objective's "
                      "parameters (docs/extending.md).")


def check_unset_params(cls: type, params: dict) -> None:
    """ConfigError naming a parameter (a field without a default, which a user's class may have) that `params` does
    not set: building the class would fail with a TypeError from the dataclass's __init__."""
    unset = [f.name for f in dataclasses.fields(cls) if f.name not in params and f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING]
    if unset:
        raise ConfigError(f"{cls.__name__}{_defined_in(cls)} has parameter(s) {unset} without a default, and none "
                          f"was given: set {unset[0]} (a top-level key of the config, `{unset[0]}=VALUE` on the "
                          f"command line, or get_objective(..., {unset[0]}=VALUE)), or give the field a default.")


def check_params(cls: type, params: dict) -> None:
    """Unknown parameter names, wrong types and a parameter without a default left unset are a ConfigError naming
    the nearest valid name / the parameter."""
    check_unset_params(cls, params)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in params.items():
        if key not in fields:
            raise ConfigError(
                f"{cls.__name__} has no parameter {key!r}.{nearest(key, fields)} Valid: {sorted(fields)}."
            )
        default = fields[key].default
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = is_number(value)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ConfigError(
                f"{cls.__name__}.{key} must be a {type(default).__name__} (default {default!r}), got {value!r}."
            )
