"""GRPO loop: prompts -> G completions each -> rewards -> group advantages -> clipped policy-gradient steps.

    from preflab.loops.grpo import grpo_train
    summary = grpo_train(policy, tokenizer, prompts, reward_funcs=[true_reward_fn], num_generations=8,
                         max_steps=20, learning_rate=1e-5, loss_type="dapo", output_dir="runs/grpo")

Structure as TRL's GRPOTrainer (Shao et al., 2024, arXiv:2402.03300, Algorithm 1): one generation batch of
prompts_per_step x steps_per_generation prompts, each sampled num_generations times from the current policy (the
"old" policy), is scored by the reward functions (TRL signature, weighted sum with reward_weights, None = NaN, a
completion with no finite reward is left out); advantages are computed once over the generation batch
(objectives/grpo.py: group mean, and std per scale_rewards); then num_iterations passes of steps_per_generation
optimizer steps, each on prompts_per_step groups, minimise the `grpo` objective (loss_type grpo | bnpo | dapo |
dr_grpo). The old policy's token log-probs are computed once when the policy moves before a sample is used
(num_iterations > 1 or steps_per_generation > 1); otherwise rho = 1 exactly (TRL's shortcut). The reference's token
log-probs are computed once per generation batch when beta > 0. dapo's normaliser is the step's completion tokens.
Metrics (TRL names): reward, reward_std, frac_reward_zero_std, rewards/<function>/{mean,std}, kl,
clip_ratio/*, completions/*, num_tokens, loss, grad_norm, learning_rate.
Deviation from TRL: log-probs are at temperature 1 (sample with temperature 1.0, TRL's default, for exact ratios);
no entropy metric; groups are not shuffled inside a generation batch.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch

from preflab.data.layout import padded
from preflab.errors import ConfigError, nearest
from preflab.loops.judge import as_judge
from preflab.loops.reference import make_reference, reference_scores
from preflab.loops.rollout import completion_metrics, pad_id_of, prepare_prompts, sample_rollout
from preflab.objectives import get_objective
from preflab.objectives.base import ListBatch, SequenceLogps
from preflab.objectives.grpo import group_advantages
from preflab.runlog import MetricsLog, finish_run
from preflab.scoring.lm import LogProbScorer
from preflab.step import optimizer_step


@dataclass
class GRPOConfig:
    num_generations: int = 8              # G completions per prompt (TRL default)
    prompts_per_step: int = 4             # prompt groups per optimizer step
    groups_per_micro_batch: int = 4       # prompt groups per forward pass (gradient accumulation inside a step)
    steps_per_generation: int = 1         # optimizer steps sharing one generation batch
    num_iterations: int = 1               # passes over each generation batch (mu)
    max_steps: int = 10                   # optimizer steps in all
    loss_type: str = "dapo"               # grpo | bnpo | dapo | dr_grpo (TRL 1.16 default dapo)
    beta: float = 0.0                     # KL coefficient (TRL 1.16 default)
    epsilon: float = 0.2
    epsilon_high: float | None = None
    scale_rewards: str = "group"          # group | batch | none
    learning_rate: float = 1e-6           # TRL default
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    max_completion_length: int = 256      # max new tokens per completion (also dr_grpo's normaliser)
    temperature: float = 1.0
    top_p: float = 1.0
    max_prompt_length: int | None = None
    generation_batch_size: int = 256
    chunk_tokens: int | None = None
    seed: int = 0
    output_dir: str | None = None
    save_model: bool = True

    def __post_init__(self):
        for name in ("num_generations", "prompts_per_step", "groups_per_micro_batch", "steps_per_generation",
                     "num_iterations", "max_steps", "max_completion_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if self.num_generations < 2:
            raise ConfigError("GRPOConfig.num_generations must be >= 2 (advantages compare completions of a group).")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "GRPOConfig":
        names = {f.name for f in fields(cls)}
        for key in kwargs:
            if key not in names:
                raise ConfigError(f"GRPOConfig has no option {key!r}.{nearest(key, names)}")
        return cls(**kwargs)


@dataclass
class GroupMicroBatch:
    groups: list[int]      # indices of prompt groups in the generation batch
    row_ids: list[int]     # their prompt rows (one example per group, as the step normalises)


class GRPOLoop:
    """GRPO training; `run()` trains max_steps optimizer steps, `generation_round()` one generation batch."""

    def __init__(self, policy, tokenizer, prompts: Sequence[Any], reward_funcs, cfg: GRPOConfig | None = None,
                 ref=None, reward_weights: Sequence[float] | None = None):
        self.cfg = cfg = cfg or GRPOConfig()
        self.policy, self.tokenizer = policy, tokenizer
        self.judge = as_judge(reward_funcs, reward_weights)
        self.rows = self.prepare_rows(prompts)
        self.objective = get_objective("grpo", beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                                       loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
                                       max_completion_length=cfg.max_completion_length)
        self.ref = make_reference(policy, self.objective.needs_reference, ref)
        self.scorer = self.scorer_class(policy, cfg.chunk_tokens)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.pad_id, self.device = pad_id_of(tokenizer), next(policy.parameters()).device
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.order: list[int] = []
        self.global_step, self.rounds, self.num_tokens = 0, 0, 0
        self.out = Path(cfg.output_dir) if cfg.output_dir else None
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        self.log = MetricsLog(self.out) if self.out else None
        self.history: list[dict] = []

    # hooks (preflab.loops.vlm_grpo overrides them for image-text models)
    scorer_class = LogProbScorer

    def prepare_rows(self, prompts: Sequence[Any]) -> list:
        return prepare_prompts(prompts, self.tokenizer, self.cfg.max_prompt_length)

    def sample(self, rows: list, seed: int):
        cfg = self.cfg
        return sample_rollout(self.policy, self.tokenizer, rows, cfg.num_generations,
                              max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                              seed=seed, batch_size=cfg.generation_batch_size)

    def reference_scores(self, layout):
        return reference_scores(self.policy, self.ref, layout, self.cfg.chunk_tokens)[0]

    def _next_rows(self, n: int) -> list:
        rows = []
        while len(rows) < n:
            if not self.order:
                self.order = torch.randperm(len(self.rows), generator=self.generator).tolist()
            rows.append(self.rows[self.order.pop(0)])
        return rows

    def _layout(self, groups: list[int]):
        G = self.cfg.num_generations
        seqs = [(self.rollout.rows[g].prompt_ids, self.rollout.completion_ids[g * G + i])
                for g in groups for i in range(G)]
        return padded(seqs, self.pad_id).to(self.device)

    def _side(self, token_lists: list[torch.Tensor], groups: list[int], width: int) -> torch.Tensor:
        G = self.cfg.num_generations
        out = torch.zeros(len(groups) * G, width, device=self.device)
        for n, (g, i) in enumerate((g, i) for g in groups for i in range(G)):
            row = token_lists[g * G + i]
            out[n, :len(row)] = row
        return out.view(len(groups), G, width)

    @torch.no_grad()
    def _precompute(self, model_scores) -> list[torch.Tensor]:
        """Per-completion token log-probs [len] from `model_scores(layout)`, micro-batch by micro-batch."""
        out: list[torch.Tensor] = []
        groups = list(range(len(self.rollout.rows)))
        for start in range(0, len(groups), self.cfg.groups_per_micro_batch):
            chunk = groups[start:start + self.cfg.groups_per_micro_batch]
            scores = model_scores(self._layout(chunk))
            out.extend(row[m] for row, m in zip(scores.token_logps, scores.mask))
        return out

    def _forward(self, mb: GroupMicroBatch):
        G, groups = self.cfg.num_generations, mb.groups
        layout = self._layout(groups)
        scores = self.scorer(layout)
        width = scores.token_logps.shape[-1]
        shape = (len(groups), G, width)
        policy = SequenceLogps(scores.token_logps.view(shape), scores.mask.view(shape))
        ref = None if self.ref_logps is None else SequenceLogps(self._side(self.ref_logps, groups, width),
                                                                 policy.mask)
        extras = {"advantages": self.advantages[groups], "tokens_per_prompt": self.tokens_per_prompt}
        if self.old_logps is not None:
            extras["old_logps"] = self._side(self.old_logps, groups, width)
        return self.objective(ListBatch(policy, self.rewards[groups], ref, self.valid[groups], extras))

    def generation_round(self) -> list[dict]:
        """Generate, score, and run num_iterations x steps_per_generation optimizer steps; returns the step rows."""
        cfg, G = self.cfg, self.cfg.num_generations
        rows = self._next_rows(cfg.prompts_per_step * cfg.steps_per_generation)
        self.rollout = self.sample(rows, seed=cfg.seed * 100_003 + self.rounds)
        self.rounds += 1
        flat, per_fn = self.judge(self.rollout.prompts(), self.rollout.completions, self.rollout.prompt_index,
                                  self.rollout.columns(), self.rollout.completion_ids)
        rewards = flat.view(len(rows), G).to(self.device)
        self.valid = ~rewards.isnan()
        self.rewards = rewards.nan_to_num(0.0).float()
        self.advantages = group_advantages(self.rewards, self.valid, cfg.scale_rewards)[0]
        moved = cfg.num_iterations > 1 or cfg.steps_per_generation > 1
        self.policy.eval()
        self.old_logps = self._precompute(self.scorer) if moved else None
        self.ref_logps = None
        if self.objective.needs_reference:
            self.ref_logps = self._precompute(self.reference_scores)
        lengths = torch.tensor([len(c) for c in self.rollout.completion_ids], dtype=torch.float64).view(len(rows), G)
        generation = completion_metrics(self.rollout)
        for k, name in enumerate(self.judge.names):
            values = per_fn[:, k]
            generation[f"rewards/{name}/mean"] = float(values.nanmean())
            generation[f"rewards/{name}/std"] = float(values[~values.isnan()].std()) if (~values.isnan()).sum() > 1 \
                else 0.0
        out = []
        self.policy.train()
        for _ in range(cfg.num_iterations):
            for s in range(cfg.steps_per_generation):
                if self.global_step >= cfg.max_steps:
                    break
                window = list(range(s * cfg.prompts_per_step, (s + 1) * cfg.prompts_per_step))
                tokens = float((lengths[window] * self.valid[window].cpu()).sum())
                self.tokens_per_prompt = torch.tensor(tokens / len(window), device=self.device)
                mbs = [GroupMicroBatch(window[i:i + cfg.groups_per_micro_batch],
                                       [rows[g].row_id for g in window[i:i + cfg.groups_per_micro_batch]])
                       for i in range(0, len(window), cfg.groups_per_micro_batch)]
                result = optimizer_step(mbs, self._forward, self.params, self.optimizer, None, None,
                                        cfg.max_grad_norm)
                self.global_step += 1
                self.num_tokens += int(tokens)
                row = {"step": self.global_step, "loss": result.loss, "grad_norm": result.grad_norm,
                       "learning_rate": self.optimizer.param_groups[0]["lr"], "num_tokens": self.num_tokens,
                       "skipped": result.skipped, **result.metrics, **generation}
                out.append(row)
                self.history.append(row)
                if self.log is not None:
                    self.log.write(row)
        self.policy.eval()
        return out

    def run(self) -> dict:
        started = time.perf_counter()
        while self.global_step < self.cfg.max_steps:
            self.generation_round()
        summary = {"global_step": self.global_step, "generation_rounds": self.rounds,
                   "final_metrics": self.history[-1] if self.history else {}, "config": asdict(self.cfg),
                   "judge": self.judge.stats(), "runtime_s": time.perf_counter() - started}
        if self.out:
            finish_run(self.out, summary, self.policy if self.cfg.save_model else None, self.tokenizer)
        return summary


def grpo_train(policy, tokenizer, prompts: Sequence[Any], reward_funcs, ref=None,
               reward_weights: Sequence[float] | None = None, **options) -> dict:
    """Run GRPO; `options` are GRPOConfig fields. Returns the summary dict."""
    cfg = GRPOConfig.from_kwargs(**options)
    return GRPOLoop(policy, tokenizer, prompts, reward_funcs, cfg, ref=ref, reward_weights=reward_weights).run()
