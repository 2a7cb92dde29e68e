"""Reward-model training: `preflab train` with `task: reward`, and the driver every reward head shares.

    summary = train_reward(load_config("rm.yaml"))                  # Bradley-Terry, the TRL RewardTrainer setting
    summary = train_reward(cfg, head=GPMHead(dim=4))                 # general preference model, same loop

Data: `load_rows` / `tokenize_pairs` (`preflab.reward.data`); order: `BatchPlan` (deterministic, resumable);
update: the shared `preflab.step.optimizer_step`; output: metrics.jsonl, checkpoints (`preflab.checkpoint`),
summary.json, and the final model as safetensors in `output_dir`, loadable with
`transformers.AutoModelForSequenceClassification.from_pretrained(output_dir)` (LoRA adapters are merged first).
`RewardRun` is the loop itself: it takes any collate / loss pair, so attribute (multi-objective) heads reuse it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import torch

from preflab.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from preflab.config import TrainConfig
from preflab.errors import NonFiniteError, PreflabError
from preflab.loops.batches import BatchPlan, MicroBatch, collate_pairs
from preflab.loops.offline import make_scheduler
from preflab.runlog import MetricsLog, Progress, environment, write_summary
from preflab.step import optimizer_step


class RewardRun:
    """One training run of a reward model: `collate(items) -> micro-batch` (with `row_ids`, `num_tokens` and a
    `layout` or tensors) and `loss_fn(model, micro_batch) -> ObjectiveOutput`; `evaluate(model) -> dict`."""

    def __init__(self, cfg: TrainConfig, model, tokenizer, train_items: list, collate: Callable,
                 loss_fn: Callable, evaluate: Callable | None = None, reward_info: dict | None = None,
                 data_report: dict | None = None):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.cfg, self.tokenizer, self.items = cfg, tokenizer, train_items
        self.collate, self.loss_fn, self.evaluate_fn = collate, loss_fn, evaluate
        self.reward_info, self.data_report = dict(reward_info or {}), dict(data_report or {})
        precision = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.torch_dtype, "no")
        self.acc = Accelerator(cpu=cfg.use_cpu, mixed_precision=precision,
                               log_with=None if cfg.report_to in ("none", None, []) else cfg.report_to,
                               project_dir=cfg.output_dir)
        set_seed(cfg.seed)
        self.out, self.main = Path(cfg.output_dir), self.acc.is_main_process
        self.plan = BatchPlan(len(train_items), cfg.per_device_train_batch_size, self.acc.num_processes,
                              cfg.gradient_accumulation_steps, cfg.seed)
        if self.plan.steps_per_epoch == 0:
            raise PreflabError(
                f"{len(train_items)} training rows are fewer than one global batch ({self.plan.global_batch} = "
                "per_device_train_batch_size x processes x gradient_accumulation_steps); lower the batch size.")
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(
            cfg.num_train_epochs * self.plan.steps_per_epoch)
        if cfg.disable_dropout:
            from preflab.models.load import disable_dropout

            disable_dropout(model)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                      eps=cfg.adam_epsilon, weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = make_scheduler(optimizer, cfg.lr_scheduler_type, self.total_steps, warmup)
        self.model, self.optimizer = self.acc.prepare(model, optimizer)

    def forward(self, mb):
        with self.acc.autocast():
            return self.loss_fn(self.model, mb)

    def micro_batches(self, step: int) -> list:
        return [self.collate([self.items[i] for i in index])
                for index in self.plan.indices(step, self.acc.process_index)]

    def train(self) -> dict:
        cfg, acc = self.cfg, self.acc
        start_step = self._maybe_resume()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")
        log = MetricsLog(self.out, self.main, resume_step=start_step or None)
        bar = Progress(self.total_steps, start_step, self.main and not cfg.disable_tqdm)
        self.model.train()
        bad_in_row, nonfinite, window, last, tokens_total = 0, [], [], {}, 0
        started = time.perf_counter()
        for step in range(start_step, self.total_steps):
            mbs = self.micro_batches(step)
            result = optimizer_step(mbs, self.forward, self.params, self.optimizer, self.scheduler, acc,
                                    cfg.max_grad_norm, sync_module=self.model)
            tokens = torch.tensor(sum(mb.num_tokens for mb in mbs), device=acc.device)
            tokens_total += int(acc.reduce(tokens, reduction="sum").item() if acc.num_processes > 1 else tokens)
            bar.update(result, int(tokens))
            if result.skipped:
                bad_in_row += 1
                nonfinite.append({"step": step + 1, "row_ids": result.row_ids})
                log.write({"step": step + 1, "nonfinite": True, "row_ids": result.row_ids})
                if bad_in_row >= cfg.max_nonfinite_steps:
                    path = self._save(step + 1, {"nonfinite": nonfinite}) if self.main else None
                    raise NonFiniteError(
                        f"{bad_in_row} non-finite steps in a row (last rows {result.row_ids}); the weights are those "
                        f"from before the first bad step, saved in {path}. Lower the learning rate or check the data.")
            else:
                bad_in_row = 0
            window.append(result)
            if (step + 1) % cfg.logging_steps == 0 or step + 1 == self.total_steps:
                last = {"step": step + 1, "epoch": (step + 1) / self.plan.steps_per_epoch,
                        "learning_rate": self.scheduler.get_last_lr()[0], "num_tokens": tokens_total,
                        **_average(window),
                        "tokens_per_second": tokens_total / max(time.perf_counter() - started, 1e-9)}
                log.write(last)
                window = []
            if cfg.eval_steps and (step + 1) % cfg.eval_steps == 0 and self.evaluate_fn:
                log.write({"step": step + 1, **self.evaluate()})
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and self.main:
                self._save(step + 1, {"nonfinite": nonfinite})
            acc.wait_for_everyone()
        bar.close()
        final_eval = self.evaluate() if self.evaluate_fn else {}
        if final_eval:
            log.write({"step": self.total_steps, **final_eval})
        summary = {"global_step": self.total_steps, "train_examples_seen": (self.total_steps - start_step)
                   * self.plan.global_batch, "resumed_from_step": start_step or None,
                   "final_metrics": {**last, **final_eval}, "nonfinite_steps": nonfinite,
                   "unused_rows_per_epoch": self.plan.unused_rows_per_epoch, "data": self.data_report,
                   "reward_model": self.reward_info, "runtime_s": time.perf_counter() - started,
                   "environment": environment()}
        if self.main:
            self.save_model()
            write_summary(self.out, summary)
            _write_card(self.out, cfg, summary)
        acc.end_training()
        return summary

    def evaluate(self) -> dict:
        self.model.eval()
        with torch.no_grad(), self.acc.autocast():
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        return {f"eval_{k}": v for k, v in metrics.items()}

    def _save(self, step: int, state: dict) -> Path:
        return save_checkpoint(self.out, step, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler,
                               {**state, "config": self.cfg.to_dict()}, self.cfg.save_total_limit)

    def _maybe_resume(self) -> int:
        spec = self.cfg.resume_from_checkpoint
        if spec in (None, False, "", "false"):
            return 0
        path = latest_checkpoint(self.out) if spec in (True, "true", "latest") else Path(spec)
        if path is None:
            raise PreflabError(f"resume_from_checkpoint is set but {self.out} holds no complete checkpoint.")
        state = load_checkpoint(path, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler)
        return int(state["global_step"])

    def save_model(self) -> None:
        """Safetensors weights (LoRA merged) + tokenizer; the head description goes into config.json."""
        from preflab.reward.heads import set_reward_config

        model = self.acc.unwrap_model(self.model)
        if hasattr(model, "merge_and_unload"):
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        set_reward_config(model, self.reward_info)
        model.save_pretrained(self.out, safe_serialization=True)
        self.tokenizer.save_pretrained(self.out)


def train_reward(cfg: TrainConfig, model=None, tokenizer=None, train_data=None, eval_data=None, head=None,
                 context_template: str | None = None) -> dict:
    """Train a pairwise reward model (BT by default, or `head=GPMHead(...)`); returns the summary dict.

    model / tokenizer / train_data (TokenizedPair list) / eval_data may be passed in (tests); otherwise they come
    from cfg (model_name_or_path, dataset_name, eval_dataset_name or eval_fraction). context_template: the template
    in-memory pairs were rendered with (`preflab.reward.data.tokenize_reward_pairs`), recorded with the model; data
    read from cfg records its own."""
    from preflab.reward.bt import BTHead
    from preflab.reward.eval import pair_outputs
    from preflab.reward.heads import build_reward_model, sequence_outputs

    head = head or BTHead(center_rewards_coefficient=cfg.center_rewards_coefficient)
    if tokenizer is None:
        from preflab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    report, template = {}, context_template
    if train_data is None:
        from preflab.reward.data import load_reward_pairs

        train_data, eval_data, report, template = load_reward_pairs(cfg, tokenizer)
    if model is None:
        model = build_reward_model(cfg.model_name_or_path, head.num_outputs, tokenizer, dtype="float32",
                                   trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle,
                                   seed=cfg.seed)
    if cfg.use_peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, task_type="SEQ_CLS",
                                                 target_modules=cfg.lora_target_modules))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    info = {**head.to_config(), **({"context_template": template} if template else {})}

    def collate(pairs) -> MicroBatch:
        return MicroBatch(collate_pairs(pairs, pad_id, "padded"), [p.row_id for p in pairs], [])

    def loss_fn(model, mb):
        layout = mb.layout.to(next(model.parameters()).device)
        out = sequence_outputs(model, layout.input_ids, layout.attention_mask)
        n = len(mb.row_ids)
        return head.loss(out[:n], out[n:], layout.extras)

    def evaluate(model) -> dict:
        from preflab.loops.batches import stack_extras

        out_c, out_r = pair_outputs(model, eval_data, pad_id, cfg.per_device_eval_batch_size)
        result = head.loss(out_c, out_r, stack_extras(eval_data))
        return {"loss": float(result.loss), **{k: float(v) for k, v in result.metrics.items()}}

    run = RewardRun(cfg, model, tokenizer, train_data, collate, loss_fn, evaluate if eval_data else None, info,
                    report)
    return run.train()


def _write_card(output_dir: Path, cfg: TrainConfig, summary: dict) -> None:
    """README.md beside the weights: base model, data, head, final metrics, how to load."""
    final = summary.get("final_metrics", {})
    info = summary.get("reward_model", {})
    lines = ["---", "library_name: transformers", f"tags: [preflab, reward-model, {info.get('head', 'bt')}]",
             f"base_model: {cfg.model_name_or_path}", "---", "", f"# {Path(cfg.output_dir).name}", "",
             f"Reward model trained with preflab from `{cfg.model_name_or_path}` on `{cfg.dataset_name}`; head: "
             f"{info}.", "",
             f"- steps: {summary.get('global_step')}, examples seen: {summary.get('train_examples_seen')}"]
    lines += [f"- {k}: {v:.4g}" for k, v in final.items() if isinstance(v, (int, float))]
    lines += ["", "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
              f"model = AutoModelForSequenceClassification.from_pretrained({str(output_dir)!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({str(output_dir)!r})",
              "# input ids as preflab builds them: [bos] + ids(prompt + response) + [eos]; the reward is .logits",
              "```", "", "Or `preflab.reward.interface.load_judge(dir).score(prompts, responses)`.", ""]
    (Path(output_dir) / "README.md").write_text("\n".join(lines))


def _average(results) -> dict:
    """Example-weighted mean of the step metrics of a logging window (skipped steps left out)."""
    kept = [r for r in results if not r.skipped]
    if not kept:
        return {"loss": float("nan")}
    n = sum(r.num_examples for r in kept)
    out = {"loss": sum(r.loss * r.num_examples for r in kept) / n,
           "grad_norm": sum(r.grad_norm for r in kept) / len(kept)}
    for key in kept[0].metrics:
        out[key] = sum(r.metrics.get(key, 0.0) * r.num_examples for r in kept) / n
    return out
