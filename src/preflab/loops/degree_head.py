"""SPO's preference-degree head and the producer of its extras (methods/objectives.md §C #9; objective spo_degree).

Each training example's chosen and rejected responses have J+1 degree variants (preflab.data.spo_variants: j key
content units deleted, label j). At every step the policy scores the variants of the micro-batch's examples after
their own prompt (one more forward of the policy, with gradient), and the head reads them:

    h(y^(j))     = mean over the response-predicting positions of the policy's final hidden state (the positions
                   from the last prompt token to the one before the response's last token: those the scorer
                   gathers for the response log-probs)
    degree_logits = W h + b   [B, 2, J+1, J+1]  (example, side chosen/rejected, variant j, class)
    degree_labels = j         [B, 2, J+1]      (-100 where the response had fewer than j units)

W and b start at zero, so every class has logit 0 and the degree loss starts at log(J+1) (the spec's check). The
head is trained with the policy (its parameters join the optimizer; the driver saves them in every checkpoint's
extra.safetensors and restores them on resume and, with load_best_model_at_end, from the best checkpoint; the final
head is written to degree_head.safetensors beside the model). It enters the loss only through degree_logits, so the alignment (DPO) term gives it no gradient; the degree
loss's gradient reaches the policy through the variants' hidden states.
"""
from __future__ import annotations

import torch
from torch import nn

from preflab.errors import ConfigError, PreflabError
from preflab.loops.extras_producer import ExtrasProducer

HEAD_FILE = "degree_head.safetensors"


class DegreeHead(nn.Module):
    """Linear classifier hidden [N, H] -> J+1 logits, zero-initialised."""

    def __init__(self, hidden_size: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, classes)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(pooled.to(self.linear.weight.dtype))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, L, H], [N, L] -> [N, H]: the mean over each row's masked positions."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def variant_sequences(examples, variants, classes: int) -> tuple[list, list[int], torch.Tensor]:
    """(sequences (prompt ids, variant response ids), flat slot b*2*(J+1) + side*(J+1) + j of each, labels
    [B, 2, J+1] with -100 where a variant is missing). The prompt is each example's own, untouched."""
    seqs, slots = [], []
    labels = torch.full((len(examples), 2, classes), -100, dtype=torch.long)
    for b, (ex, per) in enumerate(zip(examples, variants)):
        for s, side in enumerate(("chosen", "rejected")):
            for j, ids in per[side]:
                seqs.append((list(ex.prompt_ids), ids))
                slots.append((b * 2 + s) * classes + j)
                labels[b, s, j] = j
    return seqs, slots, labels


class DegreeExtras(ExtrasProducer):
    """degree_logits and degree_labels of spo_degree (see the module docstring)."""

    def __init__(self, objective, cfg):
        super().__init__(objective, cfg)
        if getattr(cfg, "streaming", False):
            raise ConfigError("loss_type spo_degree builds the degree variants of every example before training; "
                              "streaming: true is not supported for it. Set streaming: false.")
        from preflab.data.spo_variants import extractor_for

        self.extractor = extractor_for(objective.unit_extractor)  # a bad name fails before the models load
        self.classes = objective.degrees + 1
        self.head: DegreeHead | None = None
        self.variants: dict[str, list] = {}

    def prepare(self, trainer) -> dict:
        from preflab.data.spo_variants import build_degree_variants, report_note
        from preflab.loops.kinds import PairKind
        from preflab.scoring.lm import LogProbScorer

        if trainer.kind is not PairKind or trainer.scorer_class is not LogProbScorer:
            raise ConfigError(f"loss_type spo_degree scores text response variants of preference pairs; "
                              f"{type(trainer).__name__} ({trainer.kind.name} batches, "
                              f"{trainer.scorer_class.__name__}) does not. Run it with task: dpo.")
        report = {}
        for split, examples in (("train", trainer.train_data), ("eval", trainer.eval_data)):
            self.variants[split], report[split] = build_degree_variants(
                examples, trainer.tokenizer, self.objective.degrees, self.cfg.seed, self.cfg.max_length,
                self.extractor)
            note = report_note(report[split], split) if examples else None
            if note and trainer.main:
                print(f"preflab: note: {note}")
        policy = trainer.accelerator.unwrap_model(trainer.policy)
        hidden = policy.get_input_embeddings().weight.shape[-1] if policy.get_input_embeddings() is not None else \
            policy.config.hidden_size
        self.head = DegreeHead(hidden, self.classes).to(trainer.accelerator.device)
        return {"spo_degree_variants": report}

    def parameters(self) -> list:
        return list(self.head.parameters())

    def extras(self, trainer, positions, train: bool) -> dict:
        from preflab.data.layout import padded

        if positions is None:
            raise PreflabError("loss_type spo_degree scores the degree variants of each pair; pass the pairs' dataset "
                               "positions to Trainer.score().")
        split = "train" if train else "eval"
        data = trainer.train_data if train else trainer.eval_data
        J1 = self.classes
        seqs, slots, labels = variant_sequences([data[i] for i in positions],
                                                [self.variants[split][i] for i in positions], J1)
        device = trainer.accelerator.device
        layout = padded(seqs, trainer.pad_id).to(device)
        with trainer.accelerator.autocast():
            scores = trainer.scorer(layout, want_hidden=True)
        logits = self.head(mean_pool(scores.hidden, scores.mask))
        full = torch.zeros(len(positions) * 2 * J1, J1, dtype=logits.dtype, device=device)
        full = full.index_copy(0, torch.tensor(slots, device=device), logits)
        return {"degree_logits": full.view(len(positions), 2, J1, J1), "degree_labels": labels.to(device)}

    def save(self, out_dir) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(out_dir / HEAD_FILE))
