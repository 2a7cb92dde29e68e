"""Online and iterative DPO: prompts -> sample k completions from the current policy -> judge -> pairs -> steps.

    from preflab.loops.online import online_dpo
    summary = online_dpo(policy, tokenizer, prompts, judge=true_reward_fn, num_iterations=3, num_generations=4,
                         loss_type="sigmoid", beta=0.1, refresh_reference_every=1, output_dir="runs/odpo")

Each iteration t (models-and-loops.md B0.3 and D3):
    1. reference refresh: at t > 0 with t % refresh_reference_every == 0 the reference becomes pi_t (iterative DPO,
       Xiong et al., 2024, arXiv:2312.11456); refresh_reference_every = 0 keeps pi_0 (online DPO, Guo et al., 2024,
       "Direct Language Model Alignment from Online AI Feedback", arXiv:2402.04792)
    2. generation: k = num_generations samples per prompt from pi_t (preflab.loops.rollout)
    3. judging: a reward function (TRL signature), a reward model (.score) or a preference model, cached by
       (prompt, completion) (preflab.loops.judge); completions without eos lose missing_eos_penalty (TRL)
    4. pairs: best_vs_worst, all_pairs or rso (preflab.loops.pair_builders); ties dropped and counted; the pairs
       are written to output_dir/iterations/<t + 1>.jsonl as {prompt, chosen, rejected, score_chosen, score_rejected,
       iteration}
    5. training: epochs_per_iteration passes over the pairs with any pairwise objective (get_objective), each
       update through preflab.step.optimizer_step; extras score_chosen / score_rejected reach the objective
       (so `sppo`, `gpo` work as is)
Metrics (metrics.jsonl, TRL's Online DPO names): per step loss, grad_norm, learning_rate, beta, the objective's
rewards/* and logps/*, objective/kl (mean over the pair's completions of S_theta - S_ref), objective/entropy (-mean
S_theta), objective/non_score_reward (-beta kl), objective/scores, objective/scores_margin,
objective/rlhf_reward (scores - beta kl); per iteration the completion statistics, val/contain_eos_token, pairs/*
and judge/*. Deviation from TRL's Online DPO: the log-probs are at temperature 1 (the DPO objective's pi_theta),
whatever the sampling temperature; ties make no pair.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from preflab.data.tokenize import TokenizedPair
from preflab.errors import ConfigError, nearest
from preflab.loops.batches import MicroBatch, collate_pairs, sequence_tokens
from preflab.loops.judge import Judge, as_judge
from preflab.loops.pair_builders import BUILDERS, PairPlan, build_pairs
from preflab.loops.reference import is_lora, make_reference, reference_scores, refresh_reference
from preflab.loops.rollout import completion_metrics, pad_id_of, prepare_prompts, sample_rollout
from preflab.objectives import get_objective, objective_info
from preflab.objectives.base import PairBatch
from preflab.runlog import MetricsLog, finish_run
from preflab.scoring.lm import LogProbScorer, split_pairs
from preflab.step import optimizer_step


@dataclass
class OnlineConfig:
    loss_type: str | list = "sigmoid"     # any pairwise objective name or TRL alias (sigmoid, ipo, hinge, ...)
    beta: float = 0.1                     # objective beta (TRL OnlineDPOConfig default)
    objective_params: dict = field(default_factory=dict)  # other objective hyper-parameters
    num_iterations: int = 3               # outer iterations T (generate -> judge -> train)
    prompts_per_iteration: int | None = None  # prompts sampled each iteration (None: all of them)
    num_generations: int = 4              # k completions per prompt
    pair_builder: str = "best_vs_worst"   # best_vs_worst | all_pairs | rso
    rso_beta: float = 0.5                 # rso: temperature of pi_ref exp(r / rso_beta)
    rso_num_samples: int = 2              # rso: accepted samples per prompt (m)
    epochs_per_iteration: int = 1         # passes over each iteration's pairs
    per_device_train_batch_size: int = 8  # pairs per micro-batch
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-7           # TRL OnlineDPOConfig default
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_new_tokens: int = 64              # TRL OnlineDPOConfig default
    temperature: float = 0.9              # TRL OnlineDPOConfig default
    top_p: float = 1.0
    missing_eos_penalty: float | None = None  # subtracted from the score of a completion without eos (TRL)
    refresh_reference_every: int = 0      # 0: reference pi_0 throughout; n: reference <- pi_t every n iterations
    max_prompt_length: int | None = None
    generation_batch_size: int = 256
    chunk_tokens: int | None = None       # LM-head chunk of the scorer (None: automatic)
    seed: int = 0
    output_dir: str | None = None         # metrics.jsonl, iterations/*.jsonl, summary.json, final safetensors model
    save_model: bool = True

    def __post_init__(self):
        checks = [(self.num_iterations >= 1, "num_iterations must be >= 1"),
                  (self.num_generations >= 2, "num_generations must be >= 2 to form pairs"),
                  (self.pair_builder in BUILDERS, f"pair_builder must be one of {BUILDERS}"),
                  (self.refresh_reference_every >= 0, "refresh_reference_every must be >= 0"),
                  (self.per_device_train_batch_size >= 1 and self.gradient_accumulation_steps >= 1,
                   "batch sizes must be >= 1"), (self.epochs_per_iteration >= 1, "epochs_per_iteration must be >= 1"),
                  (self.rso_num_samples >= 2, "rso_num_samples must be >= 2 (pairs need two samples)")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"OnlineConfig: {message}.")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "OnlineConfig":
        names = {f.name for f in fields(cls)}
        for key in kwargs:
            if key not in names:
                raise ConfigError(f"OnlineConfig has no option {key!r}.{nearest(key, names)}")
        return cls(**kwargs)


class OnlineLoop:
    """The online / iterative preference loop; `run()` does every iteration, `run_iteration()` one."""

    def __init__(self, policy, tokenizer, prompts: Sequence[Any], judge, cfg: OnlineConfig | None = None,
                 ref=None, judge_weights: Sequence[float] | None = None):
        self.cfg = cfg = cfg or OnlineConfig()
        self.policy, self.tokenizer = policy, tokenizer
        self.judge: Judge = as_judge(judge, judge_weights)
        self.rows = prepare_prompts(prompts, tokenizer, cfg.max_prompt_length)
        params = dict(cfg.objective_params)
        if isinstance(cfg.loss_type, (list, tuple)) or "beta" in objective_info(cfg.loss_type)["params"]:
            params.setdefault("beta", cfg.beta)
        self.objective = get_objective(cfg.loss_type, **params)
        if self.objective.batch_type is not PairBatch:
            raise ConfigError(f"online DPO trains pairwise objectives; {cfg.loss_type!r} takes a "
                              f"{self.objective.batch_type.__name__}. Use preflab.loops.grpo for group objectives.")
        needs_ref = self.objective.needs_reference or cfg.refresh_reference_every > 0
        self.ref = make_reference(policy, needs_ref, ref)
        if cfg.refresh_reference_every and (self.ref is None or is_lora(policy)):
            raise ConfigError("refresh_reference_every copies the policy's weights into the reference, which needs a "
                              "full (non-LoRA) policy; merge the adapters (merge_and_unload()) or set "
                              "refresh_reference_every=0.")
        self.scorer = LogProbScorer(policy, cfg.chunk_tokens)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.pad_id = pad_id_of(tokenizer)
        self.device = next(policy.parameters()).device
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.iteration, self.global_step = 0, 0
        self.out = Path(cfg.output_dir) if cfg.output_dir else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.out) if self.out else None
        self.history: list[dict] = []

    # ------------------------------------------------------------------ one update
    def _forward(self, mb: MicroBatch):
        layout = mb.layout.to(self.device)
        ref, ref_head = (None, None)
        if self.ref is not None or self.objective.needs_reference:
            ref, ref_head = reference_scores(self.policy, self.ref, layout, self.cfg.chunk_tokens)
        needs = self.objective.token_needs
        scores = self.scorer(layout, want_hidden="hidden" in needs, ref=ref if "token_kl" in needs else None,
                             ref_head=ref_head if "token_kl" in needs else None)
        batch = split_pairs(scores, ref if self.objective.needs_reference else None, layout.extras)
        out = self.objective(batch)
        out.metrics.update(self._online_metrics(split_pairs(scores, ref, layout.extras)))
        return out

    def _online_metrics(self, batch: PairBatch) -> dict[str, torch.Tensor]:
        s_c, s_r = batch.extras["score_chosen"].double(), batch.extras["score_rejected"].double()
        scores = torch.cat([s_c, s_r]).mean()
        logps = torch.cat([batch.policy_chosen.sum, batch.policy_rejected.sum]).detach().double()
        metrics = {"objective/scores": scores, "objective/scores_margin": (s_c - s_r).mean(),
                   "objective/entropy": -logps.mean()}
        if batch.has_reference:
            ref = torch.cat([batch.ref_chosen.sum, batch.ref_rejected.sum]).double()
            kl = (logps - ref).mean()
            metrics.update({"objective/kl": kl, "objective/non_score_reward": -self.cfg.beta * kl,
                            "objective/rlhf_reward": scores - self.cfg.beta * kl})
        return metrics

    # ------------------------------------------------------------------ one iteration
    def _prompt_window(self) -> list:
        n = self.cfg.prompts_per_iteration
        if n is None or n >= len(self.rows):
            return self.rows
        order = torch.randperm(len(self.rows), generator=self.generator)[:n].tolist()
        return [self.rows[i] for i in order]

    def _pairs(self, rollout, scores: torch.Tensor, plan: PairPlan) -> list[TokenizedPair]:
        k = rollout.group_size
        pairs = []
        for p, c, r in plan.triples:
            row = rollout.rows[p]
            pairs.append(TokenizedPair(row.row_id, row.prompt_ids, rollout.completion_ids[p * k + c],
                                       rollout.completion_ids[p * k + r],
                                       {"score_chosen": float(scores[p, c]), "score_rejected": float(scores[p, r])}))
        return pairs

    def _save_pairs(self, rollout, scores, plan: PairPlan) -> None:
        if not self.out:
            return
        k = rollout.group_size
        path = self.out / "iterations" / f"{self.iteration + 1}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as fh:
            for p, c, r in plan.triples:
                fh.write(json.dumps({"prompt": rollout.rows[p].prompt, "chosen": rollout.completions[p * k + c],
                                     "rejected": rollout.completions[p * k + r],
                                     "score_chosen": float(scores[p, c]), "score_rejected": float(scores[p, r]),
                                     "iteration": self.iteration + 1}) + "\n")

    def run_iteration(self) -> dict:
        cfg, t = self.cfg, self.iteration
        if t > 0 and cfg.refresh_reference_every and t % cfg.refresh_reference_every == 0:
            refresh_reference(self.ref, self.policy)
        started = time.perf_counter()
        rollout = sample_rollout(self.policy, self.tokenizer, self._prompt_window(), cfg.num_generations,
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                 seed=cfg.seed * 100_003 + t, batch_size=cfg.generation_batch_size)
        generated = time.perf_counter()
        flat, _ = self.judge(rollout.prompts(), rollout.completions, rollout.prompt_index, rollout.columns(),
                             rollout.completion_ids)
        if cfg.missing_eos_penalty is not None:
            flat = flat - cfg.missing_eos_penalty * (~torch.tensor(rollout.has_eos)).double()
        scores = flat.view(len(rollout.rows), cfg.num_generations)
        plan = build_pairs(scores, cfg.pair_builder, self.generator, cfg.rso_beta, cfg.rso_num_samples)
        self._save_pairs(rollout, scores, plan)
        pairs = self._pairs(rollout, scores, plan)
        steps = self._train(pairs)
        row = {"iteration": t + 1, "step": self.global_step, **completion_metrics(rollout),
               "objective/scores": float(flat.nanmean()), "pairs/count": len(pairs),
               "pairs/ties_dropped": plan.ties_dropped, "pairs/unscorable": plan.unscorable,
               "optimizer_steps": steps, "generation_seconds": generated - started,
               "iteration_seconds": time.perf_counter() - started, **self.judge.stats()}
        if pairs:
            margin = [p.extras["score_chosen"] - p.extras["score_rejected"] for p in pairs]
            row["objective/scores_margin"] = sum(margin) / len(margin)
        self._write(row)
        self.iteration += 1
        return row

    def _train(self, pairs: list[TokenizedPair]) -> int:
        cfg = self.cfg
        b, accum = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        steps = 0
        self.policy.train()
        for _ in range(cfg.epochs_per_iteration):
            order = torch.randperm(len(pairs), generator=self.generator).tolist()
            for start in range(0, len(order), b * accum):
                window = [pairs[i] for i in order[start:start + b * accum]]
                mbs = [MicroBatch(collate_pairs(window[m:m + b], self.pad_id, "padded"),
                                  [p.row_id for p in window[m:m + b]], [], sequence_tokens(window[m:m + b]))
                       for m in range(0, len(window), b)]
                result = optimizer_step(mbs, self._forward, self.params, self.optimizer, None, None,
                                        cfg.max_grad_norm)
                self.global_step += 1
                steps += 1
                self._write({"step": self.global_step, "iteration": self.iteration + 1, "loss": result.loss,
                             "grad_norm": result.grad_norm, "learning_rate": self.optimizer.param_groups[0]["lr"],
                             "beta": cfg.beta, "skipped": result.skipped, **result.metrics})
        self.policy.eval()
        return steps

    def _write(self, row: dict) -> None:
        self.history.append(row)
        if self.log is not None:
            self.log.write(row)

    # ------------------------------------------------------------------ the whole run
    def run(self) -> dict:
        started = time.perf_counter()
        while self.iteration < self.cfg.num_iterations:
            self.run_iteration()
        iterations = [r for r in self.history if "pairs/count" in r]
        summary = {"global_step": self.global_step, "iterations": len(iterations),
                   "final_metrics": iterations[-1] if iterations else {}, "per_iteration": iterations,
                   "config": asdict(self.cfg), "runtime_s": time.perf_counter() - started}
        if self.out:
            finish_run(self.out, summary, self.policy if self.cfg.save_model else None, self.tokenizer)
        return summary


def online_dpo(policy, tokenizer, prompts: Sequence[Any], judge, ref=None,
               judge_weights: Sequence[float] | None = None, **options) -> dict:
    """Run the online / iterative DPO loop; `options` are OnlineConfig fields. Returns the summary dict."""
    cfg = OnlineConfig.from_kwargs(**options)
    return OnlineLoop(policy, tokenizer, prompts, judge, cfg, ref=ref, judge_weights=judge_weights).run()
