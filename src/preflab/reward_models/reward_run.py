"""The driver every reward head shares (RewardRun, on the shared loop of preflab.loops.driver) and the pairwise
(BT / GPM) training of `task: reward` (train_pairwise_reward); preflab.reward_models.train.train_reward is the
entry point, which sends reward_head multi_objective and em_mixture to their own trainers.

`RewardRun` takes any collate / loss pair, so attribute (multi-objective) heads reuse it, and the EM mixture
(preflab.reward_models.maxmin_train) trains each component with train_pairwise_reward. This module imports none of
those trainers (they import it).
"""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import Callable

import torch

from preflab.config import TrainConfig, resolve_epoch_eval
from preflab.errors import ConfigError
from preflab.loops.batches import MicroBatch, collate_pairs, make_plan
from preflab.loops.driver import TrainingRun
from preflab.loops.launch import make_accelerator, parameter_sharding
from preflab.loops.optimizer import make_optimizer
from preflab.models.dropout import original_dropout_config


class RewardRun(TrainingRun):
    """One training run of a reward model: `collate(items) -> micro-batch` (with `row_ids`, `num_tokens` and a
    `layout` or tensors) and `loss_fn(model, micro_batch) -> ObjectiveOutput`; `evaluate(model) -> dict`.
    The loop, logging, checkpoints and resume are the shared `preflab.loops.driver.TrainingRun`."""

    trained_model = "reward model"  # as TrainingRun's refusals name checkpoint_module

    def __init__(self, cfg: TrainConfig, model, tokenizer, train_items: list, collate: Callable,
                 loss_fn: Callable, evaluate: Callable | None = None, reward_info: dict | None = None,
                 data_report: dict | None = None):
        self.cfg, self.tokenizer, self.items = cfg, tokenizer, train_items
        self.collate, self.loss_fn, self.evaluate_fn = collate, loss_fn, evaluate
        self.reward_info, self.data_report = dict(reward_info or {}), dict(data_report or {})
        self.accelerator = self.acc = make_accelerator(cfg)
        engine = parameter_sharding(self.acc) if hasattr(model, "merge_and_unload") else None
        if engine:  # DDP and ZeRO-1/2 keep the whole weights on every rank: save_model merges from them
            raise ConfigError(f"use_peft: a LoRA reward model is saved merged (the adapters folded into the whole "
                              f"weights on the main process), and {engine} leaves each rank only a shard of the "
                              "weights; launch it with examples/accelerate/ddp.yaml or zero2.yaml (parameters "
                              "replicated), or train without use_peft.")
        self.plan, self.total_steps = make_plan(cfg, len(train_items), self.acc.num_processes)
        resolve_epoch_eval(cfg, self.plan.steps_per_epoch, self.acc.is_main_process)
        if cfg.disable_dropout:
            from preflab.models.load import disable_dropout

            disable_dropout(model)
        if cfg.gradient_checkpointing:
            from preflab.checkpointing_options import checkpoint_kwargs

            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs(cfg))
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer, self.scheduler = make_optimizer(cfg, self.params, self.total_steps, [model])
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.sync_module = self.checkpoint_module = self.model
        self.params = [p for p in model.parameters() if p.requires_grad]  # FSDP2 replaces them (DTensor)

    def forward(self, mb):
        with self.acc.autocast():
            return self.loss_fn(self.model, mb)

    def micro_batches(self, step: int) -> list:
        return [self.collate([self.items[i] for i in index])
                for index in self.plan.indices(step, self.acc.process_index)]

    def training_examples(self) -> list:
        return self.items

    def summary_extras(self) -> dict:
        return {"reward_model": self.reward_info}

    def write_card(self, summary: dict) -> None:
        _write_card(self.out, self.cfg, summary)

    def evaluate(self) -> dict:
        if self.evaluate_fn is None:
            return {}
        self.model.eval()
        with torch.no_grad(), self.acc.autocast():
            metrics = self.evaluate_fn(self.model)
        self.model.train()
        return {f"eval_{k}": v for k, v in metrics.items()}

    def write_model(self) -> None:
        """Safetensors weights (LoRA merged) + tokenizer; the head description goes into config.json."""
        from preflab.reward_models.heads import set_reward_config

        model = self.acc.unwrap_model(self.model)
        gathered = {"state_dict": self.final_state_dict} if self.final_state_dict else {}  # FSDP / DeepSpeed
        if hasattr(model, "merge_and_unload"):
            import copy

            # LoRA runs only where every rank holds the whole weights (DDP, ZeRO-1/2; refused in __init__ where
            # parameters are sharded): merged from the unwrapped model. The gathered state dict (ZeRO-2: the PEFT
            # wrapper's, base_layer / lora_A / lora_B keys) would not match the merged model's keys.
            model, gathered = copy.deepcopy(model).merge_and_unload(), {}
        set_reward_config(model, self.reward_info)
        with original_dropout_config(model):  # config.json keeps the rates disable_dropout zeroed for training
            model.save_pretrained(self.out, safe_serialization=True, **gathered)
        self.tokenizer.save_pretrained(self.out)


def train_pairwise_reward(cfg: TrainConfig, model=None, tokenizer=None, train_data=None, eval_data=None, head=None,
                          context_template: str | None = None) -> dict:
    """Train a pairwise reward model (BT by default, or `head=GPMHead(...)`); returns the summary dict. The
    arguments are train_reward's (preflab.reward_models.train), which calls this for the pairwise heads after
    check_given_reward_model."""
    from preflab.reward_models.eval import batch_extrema, pair_outputs

    head = head or head_from_cfg(cfg)
    if tokenizer is None:
        from preflab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    report, template = {}, context_template
    if train_data is None:
        from preflab.models.load import cap_max_length, max_positions
        from preflab.reward_models.data import load_reward_pairs

        cap_max_length(cfg, max_positions(model if model is not None else cfg.model_name_or_path,
                                          cfg.trust_remote_code))

        train_data, eval_data, report, template = load_reward_pairs(cfg, tokenizer)
    note = head.unreachable_margins_note(train_data) if hasattr(head, "unreachable_margins_note") else None
    if note:  # GPM: a margin its bounded score cannot reach
        print(f"preflab: note: {note}")
    model = reward_model_for_run(cfg, head.num_outputs, tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    from preflab.loops.prepare import check_ids_fit_embeddings

    check_ids_fit_embeddings(model, tokenizer, pad_id, ((cfg.dataset_name, train_data),
                                                        (cfg.eval_dataset_name or cfg.dataset_name, eval_data or [])))
    info = {**head.to_config(), **({"context_template": template} if template else {})}

    def collate(pairs) -> MicroBatch:
        from preflab.data.layout import bucket

        layout = bucket(collate_pairs(pairs, pad_id, "padded"), cfg.pad_to_multiple_of, pad_id)  # TRL's option
        return MicroBatch(layout, [p.row_id for p in pairs], [])

    def loss_fn(model, mb):
        device = next(model.parameters()).device
        layout = mb.layout.to(device)
        out = step_outputs(model, mb.layout, layout.input_ids, layout.attention_mask)
        n = len(mb.row_ids)
        return head.loss(out[:n], out[n:], layout.extras)

    def evaluate(model) -> dict:
        from preflab.loops.batches import stack_extras

        out_c, out_r = pair_outputs(model, eval_data, pad_id, cfg.per_device_eval_batch_size)
        result = head.loss(out_c, out_r, stack_extras(eval_data))
        metrics = batch_extrema(result.metrics, out_c, out_r, cfg.per_device_eval_batch_size * run.acc.num_processes)
        return {"loss": float(result.loss), **{k: float(v) for k, v in metrics.items()}}

    run = RewardRun(cfg, model, tokenizer, train_data, collate, loss_fn, evaluate if eval_data else None, info,
                    report)
    return run.train()


def step_outputs(model, host_rows, input_ids, attention_mask):
    """[N, D] head outputs of a reward training step's rows (the pairwise and the attribute-regression steps):
    `input_ids` and `attention_mask` on the model's device, `host_rows` the same rows as built on the host (its
    attention_mask and causal_only). Rows that unmasked_rows allows go without the mask (no device reads for it
    inside the model's forward), pooled at the host's last real tokens; the scores are the masked forward's."""
    from preflab.reward_models.heads import last_real_token, sequence_outputs

    if unmasked_rows(model, host_rows):
        last = last_real_token(host_rows.attention_mask).to(input_ids.device, non_blocking=True)
        return sequence_outputs(model, input_ids, None, last)
    return sequence_outputs(model, input_ids, attention_mask)


def unmasked_rows(model, layout) -> bool:
    """Whether a reward model may score `layout` (as built on the host) without its padding mask: right-padded rows
    (layout.causal_only) and a causal decoder under the head, checked once per model by a probe
    (preflab.models.attention.right_padding_needs_no_mask). The scores are those of the masked forward."""
    from preflab.models.attention import right_padding_needs_no_mask
    from preflab.reward_models.heads import reward_backbone

    if not getattr(layout, "causal_only", False) or _sharded(model):
        return False
    backbone = reward_backbone(model)
    return backbone is not None and right_padding_needs_no_mask(backbone)


_SHARDED: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def _sharded(model) -> bool:
    """Parameters sharded by FSDP2 (fully_shard) or DeepSpeed ZeRO-3: the probe would call the decoder outside the
    engine's root forward, which gathers them; such runs keep the padding mask. Decided once per model object."""
    if model not in _SHARDED:
        _SHARDED[model] = _find_sharding(model)
    return _SHARDED[model]


def _find_sharding(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    inner = model
    while True:
        if isinstance(inner, FSDPModule):
            return True
        if not isinstance(getattr(inner, "module", None), torch.nn.Module):
            break
        inner = inner.module
    return any(hasattr(p, "ds_tensor") for p in model.parameters())


def check_given_reward_model(cfg: TrainConfig, model, tokenizer) -> None:
    """A reward model given from Python (`train_reward(cfg, model=...)`, `train_multi_objective`): the loading
    options that act only while preflab loads one (load_dtype, model_init_kwargs, allow_pickle, trust_remote_code
    beside a given tokenizer, LoRA options unlike a given PEFT model's adapters) are refused or checked for agreement,
    as the offline trainer's (preflab.models.given); use_peft is carried out (reward_model_for_run adds the adapters).
    `tokenizer`: the one given (None: preflab loads it)."""
    if model is not None:
        from preflab.models.given import REWARD_OPTIONS, check_given_models

        check_given_models(cfg, model, tokenizer=tokenizer, what="reward model", options=REWARD_OPTIONS)


def reward_model_for_run(cfg: TrainConfig, num_outputs: int, tokenizer, model=None):
    """The model a reward run trains: `model` if given, else `cfg.model_name_or_path` with a head of
    `num_outputs` (in `load_dtype`, with `model_init_kwargs`); wrapped in LoRA adapters under `use_peft` (a given
    PEFT model trains its own adapters: check_given_reward_model compared the lora_* options with them). With
    eos_token, the model's (text) config eos_token_id is the tokenizer's, as TRL's RewardTrainer sets it (a
    sequence-classification model has no generation config)."""
    from preflab.reward_models.heads import build_reward_model

    if model is None:
        model = build_reward_model(cfg.model_name_or_path, num_outputs, tokenizer,
                                   dtype=cfg.load_dtype or "float32", trust_remote_code=cfg.trust_remote_code,
                                   allow_pickle=cfg.allow_pickle, seed=cfg.seed, init_kwargs=cfg.model_kwargs())
    if getattr(cfg, "eos_token", None) is not None:  # TRL's RewardTrainer: the model's (text) config learns the eos
        config = model.config
        (config.get_text_config() if hasattr(config, "get_text_config") else config).eos_token_id = \
            tokenizer.eos_token_id
    if cfg.use_peft and not hasattr(model, "peft_config"):
        from peft import LoraConfig, get_peft_model

        from preflab.models.load import check_lora_targets, check_modules_to_save, lora_extras

        check_lora_targets(model, cfg.lora_target_modules)
        extras = lora_extras(cfg)
        check_modules_to_save(model, extras["modules_to_save"])
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, task_type="SEQ_CLS",
                                                 target_modules=cfg.lora_target_modules, **extras))
    return model


def head_from_cfg(cfg: TrainConfig):
    """The pairwise head `reward_head` / `reward_head_params` name: BTHead (with center_rewards_coefficient) or
    GPMHead. Unknown parameter names are a ConfigError listing the head's fields."""
    import dataclasses

    from preflab.reward_models.bt import BTHead
    from preflab.reward_models.gpm import GPMHead

    cls = {"bt": BTHead, "gpm": GPMHead}.get(cfg.reward_head)
    if cls is None:
        raise ConfigError(f"reward_head={cfg.reward_head!r} is not a pairwise head (bt | gpm); multi_objective "
                          "trains through preflab.reward_models.multi_objective.train_attribute_reward.")
    params = dict(cfg.reward_head_params or {})
    allowed = {f.name for f in dataclasses.fields(cls)} - {"center_rewards_coefficient"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"reward_head_params: {unknown} are not fields of reward_head: {cfg.reward_head} "
                          f"(it has {sorted(allowed)}).")
    if cls is BTHead:
        params["center_rewards_coefficient"] = cfg.center_rewards_coefficient
    return cls(**params)


def _write_card(output_dir: Path, cfg: TrainConfig, summary: dict) -> None:
    """README.md beside the weights: base model, data, head, final metrics, how to load."""
    final = summary.get("final_metrics", {})
    info = summary.get("reward_model", {})
    lines = ["---", "library_name: transformers", f"tags: [preflab, reward-model, {info.get('head', 'bt')}]",
             f"base_model: {cfg.model_name_or_path}", "---", "", f"# {Path(cfg.output_dir).name}", "",
             f"Reward model trained with preflab from `{cfg.model_name_or_path}` on `{cfg.dataset_name}`" +
             (f" (dataset_config `{cfg.dataset_config}`)" if getattr(cfg, "dataset_config", None) is not None else "")
             + f"; head: {info}.", "",
             f"- steps: {summary.get('global_step')}, examples seen: {summary.get('train_examples_seen')}"]
    lines += [f"- {k}: {v:.4g}" for k, v in final.items() if isinstance(v, (int, float))]
    lines += ["", "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
              f"model = AutoModelForSequenceClassification.from_pretrained({str(output_dir)!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({str(output_dir)!r})",
              "# input ids as preflab builds them: [bos] + ids(prompt + response) + [eos]; " + _logits_meaning(info),
              "```", "", "Or `preflab.reward_models.interface.load_judge(dir)` (" + _judge_use(info) + ").", ""]
    (Path(output_dir) / "README.md").write_text("\n".join(lines))


def _logits_meaning(info: dict) -> str:
    """What `.logits` of the saved model are, for the model card: the reward, GPM embeddings or attribute ratings."""
    head = info.get("head", "bt")
    if head == "gpm":
        return (f".logits are the {info.get('dim')}-dim preference embedding v (unit-normalised: "
                f"{info.get('normalize')}); P(a > b) = sigmoid(s(v_a, v_b) / {info.get('tau')}), "
                "s = preflab.reward_models.gpm.skew_score")
    if head == "multi_objective":
        return f".logits are the ratings of {info.get('attributes')} (config.id2label names them)"
    return ".logits[:, 0] is the reward" + (f" (P(a > b) = sigmoid((r_a - r_b) / {info['tau']}))"
                                            if info.get("tau", 1.0) != 1.0 else "")


def _judge_use(info: dict) -> str:
    head = info.get("head", "bt")
    if head == "gpm":
        return ".prefer(prompts, a, b), .win_rate_matrix(prompt, responses)"
    if head == "multi_objective":
        return "direction=[...] over the attributes, then .score(prompts, responses)"
    return ".score(prompts, responses)"
