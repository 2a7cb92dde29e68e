"""Supervised fine-tuning (task: sft): TRL's SFT data forms through the offline Trainer with an SFT batch kind.

Rows (TRL SFTTrainer's dataset forms, one form per row):

    {"text": "..."}                                   language modeling: the whole text is the completion
    {"messages": [{"role": ..., "content": ...}]}     conversational: the rendered chat is the completion
    {"prompt": "...", "completion": "..."}            prompt-completion (strings, or both lists of messages)
    {"input_ids": [...], "labels": [...]}             tokenized (labels, or completion_mask / assistant_masks;
                                                      preflab.loops.sft_rows.tokenized_labels: TRL's rule)

Each row becomes `TokenizedSFT(prompt_ids, completion_ids)`; only completion tokens carry loss. With
`completion_only_loss: false` (TRL's name) a prompt-completion row trains on the prompt too (all tokens but the
first). Text rows get BOS (when the tokenizer has one) and EOS like preference rows; chat rows end with the
template's own end of turn. Rows longer than `max_length` keep their start (TRL's SFT truncation). TRL's
`eos_token` replaces the tokenizer's eos and `chat_template_path` (a .jinja / .j2 file) its chat template before any
row is tokenized (preflab.models.tokenizer_options).

`assistant_only_loss: true` (TRL's name; conversational rows only) keeps the loss on the tokens the chat template
marks with `{% generation %}` (preflab.data.assistant_mask): the completion then starts at the first marked token
and `TokenizedSFT.loss_mask` says which of its tokens carry loss (the user turns between assistant turns do not).
As in TRL 1.16's labels, a prompt-completion row with completion_only_loss (the default) trains on the tokens that
are both marked and in the completion; with `completion_only_loss: false`, on every marked token.

The loss of an optimizer step is TRL's token mean of the completion NLL over the whole global batch (all
micro-batches of all ranks; TRL's `num_items_in_batch` normalisation):

    L = -(sum_i sum_t m_it log p_theta(y_it | x_i, y_i<t)) / (sum_i sum_t m_it)

preflab.step divides the sum of per-example losses by the global example count N, so example i's loss is its
token-summed NLL times N / T (T = global completion tokens, counted before the step's forwards). Hence
2 processes x batch b, 1 process x batch 2b and accumulation 2 x b give the same loss and gradient. Metrics use
TRL's names: `loss`, `mean_token_accuracy` (share of completion tokens whose argmax prediction is the target,
token-weighted the same way), `entropy` (the mean predictive entropy over the same tokens, as TRL's SFTTrainer),
`num_tokens` (logged by the loop).

`packing: true` (TRL's name) places several sequences in one row of at most max_length tokens, with per-sequence
position ids and a block-diagonal causal mask (preflab.data.prefix.block_rows; Krell et al. 2021, arXiv:2107.02027),
so the loss equals the unpacked loss. `packing_strategy` bfd_split / wrapped cut the rows first as TRL's
pack_dataset does (preflab.loops.sft_packing). `skip_prepare_dataset: true` (TRL's dataset_kwargs) uses tokenized rows
as they are.
"""
from __future__ import annotations

import torch

from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.objectives._sft_task import SFTBatch, SFTLoss  # noqa: F401  (public names of this module)
from preflab.loops.sft_rows import (SFT_FORMS, SFTKind, TokenizedSFT, collate_sft, correct_and_entropy,  # noqa: F401
                                    correct_tokens, note_assistant_template, prepare_sft, sft_row_builder,
                                    tokenize_sft_row)


class SFTTrainer(Trainer):
    """The offline Trainer with the SFT batch kind (same loop, checkpoints, resume, report). Layout: `packed`
    when packing is true (rows of at most max_length tokens), else `padded`; cfg.layout is not used."""

    def __init__(self, cfg, policy=None, ref=None, tokenizer=None, train_data=None, eval_data=None, callbacks=None):
        if cfg.task != "sft":
            raise ConfigError(f"SFTTrainer trains task: sft, the config has task: {cfg.task!r}.")
        if getattr(cfg, "teacher_model_name_or_path", None) and type(self) is SFTTrainer:
            raise ConfigError("the config distils from teacher_model_name_or_path: train it with "
                              "preflab.loops.distill.DistillTrainer (`preflab train` picks it).")
        eos_changed = False
        if cfg.eos_token is not None or cfg.chat_template_path is not None:  # TRL's SFTConfig options, before the rows
            from preflab.models.load import load_tokenizer
            from preflab.models.tokenizer_options import apply_sft_tokenizer_options

            if tokenizer is None:
                tokenizer = load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
            eos_changed = apply_sft_tokenizer_options(cfg, tokenizer)
        super().__init__(cfg, policy, ref, tokenizer, train_data, eval_data, callbacks)
        if eos_changed:  # as TRL: the model's config and generation config learn the new eos (saved with the model)
            from preflab.models.tokenizer_options import mirror_eos_to_model

            mirror_eos_to_model(self.policy, self.tokenizer)
        self.kind = type("SFTKindRun", (SFTKind,), {"max_row_tokens": cfg.max_length})

    def requested_layout(self) -> str:
        """SFT's own layout (the offline Trainer checks it against the model): packed or padded, not cfg.layout."""
        return "packed" if self.cfg.packing else "padded"

    def micro_batches(self, step: int):
        """The loop's micro-batches, each told N / T of the whole step (one all-reduce of two numbers)."""
        mbs = self.completed(super().micro_batches(step), step)
        acc = self.accelerator
        local = [float(sum(len(mb.row_ids) for mb in mbs)),
                 float(sum(int(mb.layout.response_mask.sum()) for mb in mbs))]  # host layouts: no device read
        if acc.num_processes > 1:
            local = acc.reduce(torch.tensor(local, device=acc.device), reduction="sum").tolist()
        ratio = local[0] / max(local[1], 1.0)
        for mb in mbs:
            mb.examples_per_token = ratio
        return mbs

    def completed(self, mbs: list, step: int) -> list:
        """The step's micro-batches as trained (DistillTrainer may replace the completions by the student's)."""
        return mbs

    def _accuracy_count(self, layout, batch: SFTBatch) -> torch.Tensor:
        """[2]: correct argmax predictions and summed entropy over the completion tokens of `layout` (as built on the
        host), on the device (correct_and_entropy)."""
        from preflab.scoring.lm import backbone_and_head

        hidden = batch.extras["_hidden"].detach()
        targets = layout.gather_plan().target  # target_ids[response_mask], from index lists: no mask indexing
        if targets.device != hidden.device:
            from preflab.data.layout import to_device

            targets = to_device(targets, hidden.device)
        return correct_and_entropy(hidden, targets, backbone_and_head(self.policy)[1])

    def forward(self, mb):
        batch = self.score(mb.layout, positions=mb.index)
        ratio = getattr(mb, "examples_per_token", None)
        if ratio is not None:
            batch.extras["examples_per_token"] = ratio
        out = self.objective_output(batch)
        # weighted by n / N in preflab.step: right * (N / T) / n sums to right / T over the step
        # on the device: no host read inside the step; entropy as TRL's SFTTrainer (token mean over the loss tokens)
        scale = ratio if ratio is not None else batch.size / max(int(mb.layout.response_mask.sum()), 1)
        right, entropy = (self._accuracy_count(mb.layout, batch) * (scale / batch.size)).float()
        out.metrics["mean_token_accuracy"], out.metrics["entropy"] = right, entropy
        return out

    def eval_sums(self, each=None) -> tuple[float, int, float, int]:
        """One pass over the eval set in per_device_eval_batch_size chunks without gradients (the policy in eval mode,
        back in train mode after): (the completion tokens' summed NLL, how many of them the policy's argmax predicts,
        their summed entropy, how many there are). each(chunk, batch) sees every scored batch, for what a caller sums
        besides (SFT: the MoE router loss; distillation, preflab.loops.distill: the divergence)."""
        self.policy.eval()
        nll, right, entropy, tokens = 0.0, 0, 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.eval_data), self.cfg.per_device_eval_batch_size):
                chunk = self.eval_data[i:i + self.cfg.per_device_eval_batch_size]
                layout = self.kind.collate(chunk, self.pad_id, self.layout)
                batch = self.score(layout, train=False)
                nll -= float(batch.policy.masked().double().sum())
                counts = self._accuracy_count(layout, batch).tolist()
                right, entropy = right + int(counts[0]), entropy + counts[1]
                tokens += int(layout.response_mask.sum())
                if each is not None:
                    each(chunk, batch)
        self.policy.train()
        return nll, right, entropy, tokens

    def evaluate(self) -> dict:
        """eval_loss (token-mean completion NLL over the whole eval set) and eval_mean_token_accuracy. A MoE policy
        whose router loss training adds (preflab.scoring.router_loss) also gets eval_aux_loss, the router loss's
        example-weighted mean over the eval batches, and eval_loss holds router_aux_loss_coef x it, as TRL's does."""
        if not self.eval_data:
            return self.no_eval_metrics()
        aux = 0.0

        def add_router_loss(chunk, batch) -> None:
            nonlocal aux
            if self.router_loss is not None:
                aux, self.router_loss = aux + float(self.router_loss) * len(chunk), None
        nll, right, entropy, tokens = self.eval_sums(add_router_loss)
        out = {"eval_loss": nll / max(tokens, 1), "eval_mean_token_accuracy": right / max(tokens, 1),
               "eval_entropy": entropy / max(tokens, 1)}
        if self.router_coef is not None:
            out["eval_aux_loss"] = aux / len(self.eval_data)
            out["eval_loss"] += self.router_coef * out["eval_aux_loss"]
        return out
