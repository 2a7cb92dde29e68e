"""Reward-model training: `preflab train` with `task: reward`, and the driver every reward head shares.

    summary = train_reward(load_config("rm.yaml"))                  # Bradley-Terry, the TRL RewardTrainer setting
    summary = train_reward(cfg, head=GPMHead(dim=4))                 # general preference model, same loop

Data: `load_rows` / `tokenize_pairs` (`preflab.reward_models.data`); order: `BatchPlan` (deterministic, resumable);
update: the shared `preflab.step.optimizer_step`; output: metrics.jsonl, checkpoints (`preflab.checkpoint`),
summary.json, and the final model as safetensors in `output_dir`, loadable with
`transformers.AutoModelForSequenceClassification.from_pretrained(output_dir)` (LoRA adapters are merged first).
`RewardRun` (preflab.reward_models.reward_run, on the shared loop of preflab.loops.driver) takes any collate / loss
pair, so attribute (multi-objective) heads reuse it. train_reward sends reward_head multi_objective and em_mixture to
their trainers (which build on reward_run), and the pairwise heads to reward_run.train_pairwise_reward.
"""
from __future__ import annotations

from preflab.config import TrainConfig
from preflab.reward_models.maxmin_train import train_mixture
from preflab.reward_models.multi_objective import train_attribute_reward
from preflab.reward_models.reward_run import (RewardRun, check_given_reward_model,  # noqa: F401
                                              head_from_cfg, reward_model_for_run, step_outputs,
                                              train_pairwise_reward, unmasked_rows)


def train_reward(cfg: TrainConfig, model=None, tokenizer=None, train_data=None, eval_data=None, head=None,
                 context_template: str | None = None) -> dict:
    """Train a pairwise reward model (BT by default, or `head=GPMHead(...)`); returns the summary dict.

    model / tokenizer / train_data (TokenizedPair list) / eval_data may be passed in (tests); otherwise they come
    from cfg (model_name_or_path, dataset_name, eval_dataset_name or eval_fraction). context_template: the template
    in-memory pairs were rendered with (`preflab.reward_models.data.tokenize_reward_pairs`), recorded with the model; data
    read from cfg records its own."""
    if head is None and cfg.reward_head == "em_mixture":  # MaxMin-RLHF: K BT runs driven by EM (refuses a model)
        return train_mixture(cfg, tokenizer=reward_tokenizer(cfg, tokenizer), train_data=train_data,
                             eval_data=eval_data, model=model)
    check_given_reward_model(cfg, model, tokenizer)  # before any data is read
    tokenizer = reward_tokenizer(cfg, tokenizer)  # eos_token / chat_template_path (TRL's RewardConfig), before the rows
    if head is None and cfg.reward_head == "multi_objective":  # DPA: attribute regression on rated rows
        return train_attribute_reward(cfg, model=model, tokenizer=tokenizer)
    return train_pairwise_reward(cfg, model, tokenizer, train_data, eval_data, head, context_template)


def reward_tokenizer(cfg: TrainConfig, tokenizer=None):
    """`tokenizer` (None: loaded from model_name_or_path when an option below needs it) with TRL 1.16
    RewardTrainer.__init__'s tokenizer options applied, before any row is tokenized (preflab.models.tokenizer_options,
    as task: sft applies them): eos_token (a token of the vocabulary) becomes its eos, so each text side ends with
    that id (TRL appends the token's text to chosen and rejected, then tokenizes prompt + response: the same id);
    chat_template_path (a .jinja / .j2 file) becomes its chat template, which renders conversational rows. The saved
    tokenizer keeps both; the model's config learns the eos (reward_run.reward_model_for_run). Neither set: the
    tokenizer as given (None stays None)."""
    if cfg.eos_token is None and cfg.chat_template_path is None:
        return tokenizer
    from preflab.models.tokenizer_options import apply_sft_tokenizer_options

    if tokenizer is None:
        from preflab.models.load import load_tokenizer

        tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    apply_sft_tokenizer_options(cfg, tokenizer)
    return tokenizer
