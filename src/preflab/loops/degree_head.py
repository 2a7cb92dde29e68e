"""SPO's preference-degree head and the producer of its extras (methods/objectives.md §C #9; objective spo_degree).

Each training example's chosen and rejected responses have J+1 degree variants (preflab.data.spo_variants: j key
content units deleted, label j). The head reads the policy's final hidden states of each variant after its own
prompt:

    h(y^(j))     = mean over the response-predicting positions of the policy's final hidden state (the positions
                   from the last prompt token to the one before the response's last token: those the scorer
                   gathers for the response log-probs)
    degree_logits = W h + b   [B, 2, J+1, J+1]  (example, side chosen/rejected, variant j, class)
    degree_labels = j         [B, 2, J+1]      (-100 where the response had fewer than j units)

Variant j = 0 is the unmodified response, which the step's own forward (the pair's chosen and rejected log-probs)
has already run: its h is pooled from that forward's gathered hidden states (Scores.hidden_flat), not scored again.
The variants j >= 1 take one more forward of the policy per micro-batch (with gradient), through the run's scorer
(so DDP / FSDP2 / torch.compile wrap it as they wrap the main forward) with `hidden_only`: the backbone and the
gather of the response-predicting positions, no LM head (the degree loss reads no log-prob). Its layout and index
lists are built on the host and copied without blocking, so it adds no device-to-host read of preflab's to the
step; transformers reads the device once in that forward (masking_utils.find_packed_sequence_indices, for rows
given without a mask; skipped under torch.compile): tests/test_step_syncs.py.

W and b start at zero, so every class has logit 0 and the degree loss starts at log(J+1) (the spec's check). The
head is trained with the policy (its parameters join the optimizer; the driver saves them in every checkpoint's
extra.safetensors and restores them on resume and, with load_best_model_at_end, from the best checkpoint; the final
head is written to degree_head.safetensors beside the model, or beside the LoRA adapter). It enters the loss only
through degree_logits, so the alignment (DPO) term gives it no gradient; the degree loss's gradient reaches the policy
through the variants' hidden states. The head has the optimizer's learning rate: the paper's code is not public
(lijian16/SPO holds only a LICENSE), so no separate rate is offered.
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


def mean_pool(hidden_flat: torch.Tensor, slot: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, H] float32: the mean of each sequence's hidden states over its response-predicting positions, from the
    scorer's gathered hidden states hidden_flat [M, H] (Scores.hidden_flat) at the flat slots n * L + l of the
    [N, L] response grid `mask` (GatherPlan.slot): sum by row (index_add), divided by the row's count."""
    rows = torch.div(slot, mask.shape[1], rounding_mode="floor")
    sums = hidden_flat.new_zeros((mask.shape[0], hidden_flat.shape[-1]), dtype=torch.float32)
    sums = sums.index_add(0, rows, hidden_flat.float())
    return sums / mask.sum(1).clamp_min(1).unsqueeze(-1).to(sums.dtype)


def variant_sequences(examples, variants, classes: int) -> tuple[list, list[int], torch.Tensor, list]:
    """(sequences (prompt ids, variant response ids) of the variants j >= 1, the flat slot
    b*2*(J+1) + side*(J+1) + j of each, labels [B, 2, J+1] with -100 where a variant is missing, originals
    [(slot of j = 0, its sequence side*B + b in the pair forward's [chosen_1..B, rejected_1..B])]). The prompt is
    each example's own, untouched; variant j = 0 is the response itself, scored by the pair forward."""
    seqs, slots, originals = [], [], []
    labels = torch.full((len(examples), 2, classes), -100, dtype=torch.long)
    for b, (ex, per) in enumerate(zip(examples, variants)):
        for s, side in enumerate(("chosen", "rejected")):
            for j, ids in per[side]:
                slot = (b * 2 + s) * classes + j
                labels[b, s, j] = j
                if j == 0:
                    originals.append((slot, s * len(examples) + b))
                else:
                    seqs.append((list(ex.prompt_ids), ids))
                    slots.append(slot)
    return seqs, slots, labels, originals


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

    def module(self) -> DegreeHead:
        return self.head

    def extras(self, trainer, positions, train: bool, scored=None) -> dict:
        """degree_logits and degree_labels of the micro-batch at dataset `positions`. scored: (Scores, device
        LayoutBatch) of the pair forward of the same micro-batch, whose sequences are [chosen_1..B, rejected_1..B]:
        the j = 0 variants are pooled from its hidden states."""
        from preflab.data.layout import padded, to_device

        if positions is None or scored is None:
            raise PreflabError("loss_type spo_degree scores the degree variants of each pair; pass the pairs' dataset "
                               "positions to Trainer.score() (it hands the pair forward's scores to the producer).")
        split = "train" if train else "eval"
        data = trainer.train_data if train else trainer.eval_data
        J1, B = self.classes, len(positions)
        seqs, slots, labels, originals = variant_sequences([data[i] for i in positions],
                                                           [self.variants[split][i] for i in positions], J1)
        device = trainer.accelerator.device
        pair_scores, pair_layout = scored
        pooled = [mean_pool(pair_scores.hidden_flat, pair_layout.gather_plan().slot, pair_scores.mask)]
        order = [row for _, row in originals]  # j = 0: the pair forward's rows
        dummy = not seqs
        if dummy:  # no j >= 1 variant in this micro-batch: still one forward (every rank runs the same forwards:
            # FSDP2 gathers parameters in each), on the first pair sequence, its logits weighted 0 below
            ex = data[positions[0]]
            seqs = [(list(ex.prompt_ids), list(ex.chosen_ids))]
        layout = padded(seqs, trainer.pad_id).to(device)
        if trainer.cfg.torch_compile:  # as Trainer.score does for the pair layout: sizes dynamic, probes eager
            from preflab.scoring.compile import before_compiled_call

            before_compiled_call(layout, device, (trainer.policy,))
        with trainer.accelerator.autocast():
            variant = trainer.scorer(layout, hidden_only=True)
        pooled.append(mean_pool(variant.hidden_flat, layout.gather_plan().slot, variant.mask))
        # the head reads the variants in slot order (example, side, j), as one forward over all J+1 would give them
        placed = sorted(zip([slot for slot, _ in originals] + slots, order + list(range(2 * B, 2 * B + len(slots)))))
        # index lists and labels are made on the host and copied without blocking (to_device): a blocking host ->
        # GPU copy (torch.tensor(..., device=cuda), .to(cuda)) waits for all queued GPU work, once per tensor
        rows = to_device(torch.tensor([row for _, row in placed]), device)
        logits = self.head(torch.cat(pooled).index_select(0, rows))
        full = torch.zeros(B * 2 * J1, J1, dtype=logits.dtype, device=device)
        full = full.index_copy(0, to_device(torch.tensor([slot for slot, _ in placed]), device), logits)
        if dummy:
            full = full + 0 * self.head(pooled[1]).sum()
        return {"degree_logits": full.view(B, 2, J1, J1), "degree_labels": to_device(labels, device)}

    def save(self, out_dir, state: dict | None = None) -> None:
        """degree_head.safetensors: the head's state_dict, or `state` (its full tensors gathered from a sharding
        engine, keyed like the head's state_dict: the driver's final_extra_states)."""
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in (state or self.head.state_dict()).items()},
                  str(out_dir / HEAD_FILE))
