"""Offline preference training: dataset -> micro-batches -> scores -> objective -> the shared step.

    trainer = Trainer(load_config("examples/quickstart.yaml"))
    summary = trainer.train()      # writes metrics.jsonl, checkpoints, the final model and summary.json

accelerate owns processes, devices and mixed precision; the scorer (not the raw LM) is what DDP wraps, so one
forward returns response log-probs. The trainer never names an objective: it reads the objective's declared needs.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from preflab.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from preflab.config import TrainConfig
from preflab.errors import ConfigError, NonFiniteError, PreflabError
from preflab.loops.batches import BatchPlan, collate_pairs, micro_batches
from preflab.runlog import MetricsLog, Progress, environment, write_model_card, write_summary
from preflab.scoring.lm import LogProbScorer, backbone_and_head, split_pairs
from preflab.step import optimizer_step


def make_scheduler(optimizer, kind: str, total: int, warmup: int):
    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Trains `policy` on preference pairs. Models, tokenizer and data may be passed in (tests, the demo)."""

    def __init__(self, cfg: TrainConfig, policy=None, ref=None, tokenizer=None, train_data=None, eval_data=None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg = cfg
        self.objective = cfg.objective()
        precision = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.torch_dtype, "no")
        self.accelerator = Accelerator(cpu=cfg.use_cpu, mixed_precision=precision,
                                       log_with=None if cfg.report_to in ("none", None, []) else cfg.report_to,
                                       project_dir=cfg.output_dir)
        set_seed(cfg.seed)
        self.out = Path(cfg.output_dir)
        self.main = self.accelerator.is_main_process
        if tokenizer is None:
            from preflab.models.load import load_tokenizer

            tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
        self.tokenizer = tokenizer
        self.data_report = {}
        if train_data is None:
            from preflab.loops.prepare import prepare_pairs

            train_data, eval_data, self.data_report = prepare_pairs(cfg, tokenizer)
        self.train_data, self.eval_data = train_data, eval_data or []
        if policy is None:
            from preflab.models.load import load_models

            policy, ref = load_models(cfg, tokenizer)
        self.policy, self.ref = policy, ref
        self.lora = hasattr(policy, "disable_adapter")
        if self.objective.needs_reference and ref is None and not self.lora:
            raise ConfigError(f"objective {cfg.loss_type!r} needs a reference model; none was given.")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.plan = BatchPlan(len(self.train_data), cfg.per_device_train_batch_size, self.accelerator.num_processes,
                              cfg.gradient_accumulation_steps, cfg.seed)
        if self.plan.steps_per_epoch == 0:
            raise PreflabError(
                f"{len(self.train_data)} training rows are fewer than one global batch ({self.plan.global_batch} = "
                "per_device_train_batch_size x processes x gradient_accumulation_steps); lower the batch size."
            )
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(
            cfg.num_train_epochs * self.plan.steps_per_epoch)
        self._build_optimizer()

    def _build_optimizer(self):
        cfg = self.cfg
        self.extra_params = list(self.objective.parameters()) if isinstance(self.objective, torch.nn.Module) else []
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params + self.extra_params, lr=cfg.learning_rate,
                                           betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                                           weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = make_scheduler(self.optimizer, cfg.lr_scheduler_type, self.total_steps, warmup)
        self.scorer = LogProbScorer(self.policy, cfg.chunk_tokens)
        if cfg.torch_compile:
            self.scorer = torch.compile(self.scorer)
        self.ref_scorer = LogProbScorer(self.ref, cfg.chunk_tokens) if self.ref is not None else None
        self.scorer, self.optimizer = self.accelerator.prepare(self.scorer, self.optimizer)
        if self.ref is not None:
            self.ref.to(self.accelerator.device)

    # ------------------------------------------------------------------ scoring
    def _reference(self, layout):
        if not self.objective.needs_reference:
            return None, None
        with torch.no_grad():
            if self.lora:
                base = LogProbScorer(self.policy, self.cfg.chunk_tokens)
                with self.policy.disable_adapter():
                    return base(layout), backbone_and_head(self.policy)[1]
            return self.ref_scorer(layout), backbone_and_head(self.ref)[1]

    def score(self, layout, train: bool = True):
        """PairBatch of policy (and reference) log-probs, with the objective's token needs in extras."""
        layout = layout.to(self.accelerator.device)
        with self.accelerator.autocast():
            ref, ref_head = self._reference(layout)
            needs = self.objective.token_needs
            policy = self.scorer(layout, want_hidden="hidden" in needs,
                                 ref=ref if "token_kl" in needs else None,
                                 ref_head=ref_head if "token_kl" in needs else None)
        return split_pairs(policy, ref, layout.extras)

    def _forward(self, mb):
        return self.objective(self.score(mb.layout))

    # ------------------------------------------------------------------ loop
    def train(self) -> dict:
        cfg, acc = self.cfg, self.accelerator
        start_step = self._maybe_resume()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")
        log = MetricsLog(self.out, self.main, resume_step=start_step if start_step else None)
        bar = Progress(self.total_steps, start_step, self.main and not cfg.disable_tqdm)
        self.policy.train()
        bad_in_row, nonfinite, window, started = 0, [], [], time.perf_counter()
        tokens_total = 0
        last = {}
        for step in range(start_step, self.total_steps):
            mbs = micro_batches(self.train_data, self.plan, step, acc.process_index, self.pad_id, cfg.layout)
            result = optimizer_step(mbs, self._forward, self.params, self.optimizer, self.scheduler, acc,
                                    cfg.max_grad_norm, sync_module=self.scorer, extra_params=self.extra_params)
            tokens = int(acc.reduce(torch.tensor(sum(mb.num_tokens for mb in mbs), device=acc.device),
                                    reduction="sum").item()) if acc.num_processes > 1 else sum(
                mb.num_tokens for mb in mbs)
            tokens_total += tokens
            bar.update(result, tokens)
            if result.skipped:
                bad_in_row += 1
                nonfinite.append({"step": step + 1, "row_ids": result.row_ids})
                log.write({"step": step + 1, "nonfinite": True, "row_ids": result.row_ids})
                if bad_in_row >= cfg.max_nonfinite_steps:
                    path = self._save(step + 1, {"nonfinite": nonfinite}) if self.main else None
                    raise NonFiniteError(
                        f"{bad_in_row} non-finite steps in a row (last rows {result.row_ids}); the weights are those "
                        f"from before the first bad step, saved in {path}. Lower the learning rate or check the data."
                    )
            else:
                bad_in_row = 0
            window.append(result)
            row = {"step": step + 1, "epoch": (step + 1) / self.plan.steps_per_epoch,
                   "learning_rate": self.scheduler.get_last_lr()[0], "num_tokens": tokens_total}
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == self.total_steps:
                row.update(_average(window))
                row["tokens_per_second"] = tokens_total / max(time.perf_counter() - started, 1e-9)
                log.write(row)
                last = row
                window = []
            if cfg.eval_steps and (step + 1) % cfg.eval_steps == 0 and self.eval_data:
                log.write({"step": step + 1, **self.evaluate()})
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and self.main:
                self._save(step + 1, {"nonfinite": nonfinite})
            acc.wait_for_everyone()
        bar.close()
        final_eval = self.evaluate() if self.eval_data else {}
        if final_eval:
            log.write({"step": self.total_steps, **final_eval})
        summary = {"global_step": self.total_steps, "train_examples_seen": (self.total_steps - start_step)
                   * self.plan.global_batch, "resumed_from_step": start_step or None,
                   "final_metrics": {**last, **final_eval}, "nonfinite_steps": nonfinite,
                   "unused_rows_per_epoch": self.plan.unused_rows_per_epoch, "data": self.data_report,
                   "runtime_s": time.perf_counter() - started, "environment": environment()}
        if self.main:
            self.save_model()
            write_summary(self.out, summary)
            write_model_card(self.out, cfg, summary)
        acc.end_training()
        return summary

    def evaluate(self) -> dict:
        """Eval loss and metrics (prefixed eval_) plus ranking accuracy and log-prob drift on the eval pairs."""
        from preflab.loops.eval_metrics import pair_eval_metrics

        self.policy.eval()
        sums, n = {}, 0
        with torch.no_grad():
            for i in range(0, len(self.eval_data), self.cfg.per_device_eval_batch_size):
                chunk = self.eval_data[i:i + self.cfg.per_device_eval_batch_size]
                batch = self.score(collate_pairs(chunk, self.pad_id, self.cfg.layout))
                out = self.objective(batch)
                values = {"loss": out.loss, **out.metrics, **pair_eval_metrics(batch)}
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(chunk)
                n += len(chunk)
        self.policy.train()
        return {f"eval_{k}": v / n for k, v in sums.items()}

    # ------------------------------------------------------------------ persistence
    def _save(self, step: int, state: dict) -> Path:
        return save_checkpoint(self.out, step, self.policy, self.optimizer, self.scheduler,
                               {**state, "config": self.cfg.to_dict()}, self.cfg.save_total_limit)

    def _maybe_resume(self) -> int:
        spec = self.cfg.resume_from_checkpoint
        if spec in (None, False, "", "false"):
            return 0
        path = latest_checkpoint(self.out) if spec in (True, "true", "latest") else Path(spec)
        if path is None:
            raise PreflabError(f"resume_from_checkpoint is set but {self.out} holds no complete checkpoint.")
        state = load_checkpoint(path, self.policy, self.optimizer, self.scheduler)
        if self.main:
            print(f"preflab: resumed from {path} at step {state['global_step']}")
        return int(state["global_step"])

    def save_model(self) -> None:
        """Final weights as safetensors (LoRA: the adapter) with the tokenizer and a model card."""
        model = self.accelerator.unwrap_model(self.policy)
        model.save_pretrained(self.out, safe_serialization=True)
        self.tokenizer.save_pretrained(self.out)


def _average(results) -> dict:
    kept = [r for r in results if not r.skipped]
    if not kept:
        return {"loss": float("nan")}
    n = sum(r.num_examples for r in kept)
    out = {"loss": sum(r.loss * r.num_examples for r in kept) / n,
           "grad_norm": sum(r.grad_norm for r in kept) / len(kept)}
    for key in kept[0].metrics:
        out[key] = sum(r.metrics.get(key, 0.0) * r.num_examples for r in kept) / n
    return out

