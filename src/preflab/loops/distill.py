"""Distillation (task: sft with teacher_model_name_or_path): TRL's SFT data forms through the SFT trainer (the one
offline loop: checkpoints, resume, report), with the completion NLL replaced by the generalized JSD to a frozen
teacher's next-token distributions (preflab.objectives._distill_task: Agarwal et al. 2024, arXiv:2306.13649, Eq. 1).

Data mixture (GKD's Algorithm 1, TRL's `lmbda` and `seq_kd`): each step is on-policy with probability lmbda (a draw
seeded by (seed, step): the same on every process and after a resume; lmbda 1 is TRL's DistillationTrainer). On an
on-policy step every micro-batch keeps its rows' prompts and gets completions sampled from the student; on the other
steps, with seq_kd, from the teacher (TRL GKDTrainer.training_step's order); else the dataset's completions are used.
Sampling: transformers' sampling chain for temperature, top_k, top_p, min_p and repetition_penalty, at most
max_completion_length new tokens, cut after the first eos; each row's draws come from its own seed (seed, step,
dataset index, student / teacher: preflab.generate_seeded), so a row samples the same completion on any process and
in any micro-batch, and the run's own RNG is left untouched. All sampled tokens carry the loss. Evaluation always
uses the dataset's completions.

The teacher is loaded and held like a reference model (preflab.models.load.load_models: safetensors, frozen, eval
mode, scored under no_grad, trust_remote_code only when asked; its dtype by ref_load_dtype's rule). Each micro-batch
runs the teacher's and the student's backbones once on the same padded rows; the divergence runs chunk-wise over the
completion positions (preflab.scoring.distill), so no [B, T, V] logits are built. The step's loss is the token mean
of the divergence over every completion token of the step (TRL's num_items_in_batch normalisation, as task: sft).

Metrics: `loss` (the divergence), `nll_loss` (the student's completion NLL), `mean_token_accuracy` and `entropy` (as
task: sft); evaluation: `eval_loss` (the divergence's token mean over the eval set), `eval_nll_loss`,
`eval_mean_token_accuracy`, `eval_entropy`.
"""
from __future__ import annotations

import random

from preflab.errors import ConfigError
from preflab.loops.sft import SFTTrainer
from preflab.objectives._distill_task import DistillBatch, DistillLoss
from preflab.objectives.base import SequenceLogps


class DistillTrainer(SFTTrainer):
    """SFTTrainer whose batches carry the per-token divergence to the teacher (DistillBatch)."""

    def __init__(self, cfg, policy=None, ref=None, tokenizer=None, train_data=None, eval_data=None, callbacks=None):
        if not getattr(cfg, "teacher_model_name_or_path", None) and ref is None:
            raise ConfigError("DistillTrainer needs teacher_model_name_or_path (or a teacher given as `ref`).")
        if cfg.task == "sft" and not cfg.teacher_model_name_or_path:
            raise ConfigError("DistillTrainer: set teacher_model_name_or_path in the config (a teacher given from "
                              "Python as `ref` is held under that name).")
        super().__init__(cfg, policy, ref, tokenizer, train_data, eval_data, callbacks)
        if not isinstance(self.objective, DistillLoss):
            raise ConfigError("DistillTrainer trains the distillation objective (task: sft with "
                              "teacher_model_name_or_path).")
        if self.ref is None:
            raise ConfigError("distillation needs a teacher model; with use_peft the policy's base is not a teacher: "
                              "set teacher_model_name_or_path.")
        from preflab.loops.launch import is_sharded
        from preflab.sharding_options import sharded_distill_problem

        if is_sharded(self.accelerator):  # the LM heads run outside the engine's forward (preflab.scoring.distill)
            raise ConfigError(sharded_distill_problem(str(self.accelerator.distributed_type).rsplit(".", 1)[-1]))

    def on_policy(self, step: int) -> bool:
        """Whether step `step` (0-based) trains on the student's own completions: a draw below lmbda (GKD's mixture,
        Agarwal et al. 2024, Algorithm 1; TRL draws random.random() <= lmbda each step), from a generator seeded by
        (seed, step) alone, so every process draws the same and a resumed run draws what the uninterrupted one did."""
        lmbda = float(self.cfg.lmbda)
        if lmbda <= 0.0:
            return False
        return lmbda >= 1.0 or random.Random(f"distill:{self.cfg.seed}:{step}").random() < lmbda

    def completed(self, mbs: list, step: int) -> list:
        """The step's micro-batches as trained: on an on-policy step (on_policy) each row's completion is replaced by
        the student's sample for its prompt; else, with seq_kd, by the teacher's (TRL GKDTrainer.training_step: the
        student with probability lmbda, elif seq_kd the teacher); else the dataset's. Re-collated, every sampled
        token carries the loss; the step's examples-per-token ratio is then counted on those."""
        if self.on_policy(step):
            model, who = self.accelerator.unwrap_model(self.policy), "student"
        elif self.cfg.seq_kd:
            model, who = self.ref, "teacher"
        else:
            return mbs
        return [self._sampled(mb, step, model, who) for mb in mbs]

    def row_seed(self, step: int, index: int, who: str) -> int:
        """The sampling seed of dataset row `index` at step `step` (0-based) for `who` ("student" / "teacher"): a
        function of (seed, step, index, who) alone, so a row samples the same completion on any process, in any
        micro-batch and after a resume (the rows of one step are distinct: a step never spans two epochs)."""
        return random.Random(f"distill-sample:{self.cfg.seed}:{step}:{index}:{who}").getrandbits(63)

    def _sampled(self, mb, step: int, model, who: str):
        from dataclasses import replace

        from preflab.generate_seeded import generate_ids_row_seeded
        from preflab.loops.batches import MicroBatch

        cfg = self.cfg
        items = [self.train_data[i] for i in mb.index]
        sampled = generate_ids_row_seeded(
            model, [x.prompt_ids for x in items], [self.row_seed(step, i, who) for i in mb.index],
            eos_id=self.tokenizer.eos_token_id, pad_id=self.pad_id, max_new_tokens=int(cfg.max_completion_length),
            temperature=float(cfg.temperature), top_k=int(cfg.top_k), top_p=float(cfg.top_p), min_p=cfg.min_p,
            repetition_penalty=float(cfg.repetition_penalty))
        self.sampled_completions = sampled  # the last sampled micro-batch's, for tests and inspection
        new = [replace(x, completion_ids=list(c) or [self.tokenizer.eos_token_id], loss_mask=None)
               for x, c in zip(items, sampled)]
        return MicroBatch(self.collate(new), mb.row_ids, mb.index, self.kind.count_tokens(new))

    def batch_kind(self, objective):
        """task: sft's rows and collation (SFTKind); score() builds the DistillBatch itself."""
        from preflab.loops.sft_rows import SFTKind

        return SFTKind

    def score(self, layout, train: bool = True, positions: list[int] | None = None) -> DistillBatch:
        """DistillBatch: the divergence D_beta [B, L] at the completion tokens (teacher and student on the same
        rows), the student's completion log-probs, and its gathered hidden states (extras["_hidden"], for the
        token accuracy and entropy)."""
        from preflab.scoring.distill import token_divergence
        from preflab.scoring.lm import backbone_and_head

        layout = layout.to(self.accelerator.device)
        obj = self.objective
        with self.accelerator.autocast():
            teacher, teacher_head = self._reference(layout)  # under no_grad: the frozen teacher
            student = self.scorer(layout, want_router_loss=self.router_coef is not None)
            divergence = token_divergence(student, teacher, layout, backbone_and_head(self.policy)[1], teacher_head,
                                          obj.beta, obj.temperature, self.cfg.chunk_tokens)
        self.token_sums = {}
        self.router_loss = student.router_loss
        return DistillBatch(SequenceLogps(divergence, student.mask), SequenceLogps(student.token_logps, student.mask),
                            {**dict(layout.extras), "_hidden": student.hidden_flat})

    def evaluate(self) -> dict:
        """eval_loss: the divergence's token mean over the eval set; eval_nll_loss, eval_mean_token_accuracy and
        eval_entropy of the student over the same tokens."""
        return self.eval_totals()[0]

    def eval_totals(self) -> tuple[dict, int]:
        """(evaluate's metrics, the completion tokens they average over: the divergence's tokens, counted from the
        batches it scored; `preflab eval --task distill` reports them)."""
        if not self.eval_data:
            return {}, 0
        div = 0.0

        def add_divergence(chunk, batch) -> None:
            nonlocal div
            div += float(batch.divergence.masked().double().sum())
        nll, right, entropy, tokens = self.eval_sums(add_divergence)
        n = max(tokens, 1)
        return {"eval_loss": div / n, "eval_nll_loss": nll / n, "eval_mean_token_accuracy": right / n,
                "eval_entropy": entropy / n}, tokens
