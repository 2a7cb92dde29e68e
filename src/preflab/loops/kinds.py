"""Batch kinds: how examples of one kind are read, laid out, and turned back into an objective's batch.

The trainer asks `kind_for(objective)` and never names an objective or a batch type itself:

    pairs     PairBatch objectives: rows -> TokenizedPair -> [chosen_1..B, rejected_1..B] -> PairBatch
    lists     ListBatch objectives with no computed extras (rrhf): rows with k completions + scores -> ListBatch
              (preflab.loops.listwise)
    unpaired  UnpairedBatch objectives (KTO): rows (KTO rows, or pairs split into a desirable and an undesirable
              example, as TRL does) -> TokenizedUnpaired -> [completion_1..B, mismatched_1..B] -> UnpairedBatch

KTO's reference point uses mismatched completions: example i's prompt with example i-1's completion (rotation by
one inside the micro-batch); they are scored in the same forward as the completions. Unpaired objectives without
that reference point (apo_zero_unpaired) score the completions only (UnpairedCompletionsKind). With precompute_ref_log_probs
the pairing is fixed per example instead, as TRL fixes it (preflab.data.mismatched), so the reference log-probs of
both pairs are cached per example.
"""
from __future__ import annotations

import torch

from preflab.data.layout import LayoutBatch, padded
from preflab.errors import DataError
from preflab.objectives.base import ListBatch, PairBatch, SequenceLogps, UnpairedBatch


class PairKind:
    name = "pairs"

    @staticmethod
    def prepare(cfg, tokenizer):
        from preflab.loops.prepare import prepare_pairs

        return prepare_pairs(cfg, tokenizer)

    @staticmethod
    def collate(items, pad_id: int, layout: str) -> LayoutBatch:
        from preflab.loops.batches import collate_pairs

        return collate_pairs(items, pad_id, layout)

    @staticmethod
    def count_tokens(items) -> int:
        from preflab.loops.batches import sequence_tokens

        return sequence_tokens(items)

    @staticmethod
    def split(policy, ref, extras) -> PairBatch:
        from preflab.scoring.lm import split_pairs

        return split_pairs(policy, ref, extras)

    @staticmethod
    def prompt_sequences(layout) -> int:
        """The sequences whose prompt tokens the "prompt_logps" need scores: the chosen half."""
        return layout.num_sequences // 2

    @staticmethod
    def eval_metrics(batch) -> dict:
        from preflab.loops.eval_metrics import pair_eval_metrics

        return pair_eval_metrics(batch)

    @staticmethod
    def token_sums(token_stats, mask, host_extras) -> dict:
        """TRL's DPO token metrics as [sum, count] pairs (preflab.scoring.token_metrics)."""
        from preflab.scoring.token_metrics import pair_token_sums

        return pair_token_sums(token_stats, mask)


LABEL_COUNTS = "_label_counts"  # layout extra of unpaired batches: (desirable, undesirable) counts, host ints


def unpaired_extras(items) -> dict:
    """The batch extras of unpaired examples: their stacked data columns, `label` [B] and LABEL_COUNTS (desirable,
    undesirable) as Python ints, which stay on the host when the layout moves."""
    from preflab.loops.batches import stack_extras

    extras = stack_extras(items, responses={"completion": [x.completion_ids for x in items]})
    extras["label"] = torch.tensor([bool(x.label) for x in items])
    desirable = sum(bool(x.label) for x in items)
    extras[LABEL_COUNTS] = (desirable, len(items) - desirable)
    return extras


class UnpairedKind:
    name = "unpaired"

    @staticmethod
    def prepare(cfg, tokenizer):
        from preflab.loops.prepare import prepare_unpaired

        return prepare_unpaired(cfg, tokenizer)

    @staticmethod
    def fix_reference_inputs(train, evals, cfg) -> tuple[list, list]:
        """precompute_ref_log_probs: (train, eval) examples with their mismatched completion fixed (preflab.data.
        mismatched), so each example's reference log-probs (completion and mismatched pair) are a property of the
        example and can be cached. Train and eval: TRL's pairing, rotation inside consecutive chunks of
        per_device_train_batch_size examples in TRL's unpaired order (the eval set's pairing is fixed with or
        without the cache, see fix_eval_pairing, so eval metrics do not depend on the cache)."""
        from preflab.data.mismatched import fix_mismatched, trl_unpaired_order

        return (fix_mismatched(train, cfg.per_device_train_batch_size, trl_unpaired_order(train)),
                UnpairedKind.fix_eval_pairing(evals, cfg))

    @staticmethod
    def fix_eval_pairing(evals, cfg) -> list:
        """The eval examples with their mismatched completion fixed as TRL 1.16's KTOTrainer fixes its eval
        dataset's KL_completion_ids: _prepare_dataset runs the same add_kl_completion_ids map on the eval set as on
        the train set, rotating completions by one inside consecutive chunks of per_device_train_batch_size (not
        per_device_eval_batch_size) examples in TRL's unpaired order. The pairing is then a property of each
        example, the same whatever per_device_eval_batch_size and the number of processes."""
        from preflab.data.mismatched import fix_mismatched, trl_unpaired_order

        return fix_mismatched(evals, cfg.per_device_train_batch_size, trl_unpaired_order(evals)) if evals else evals

    @staticmethod
    def reference_fingerprint(examples) -> str:
        """The reference cache's key of unpaired examples: prompt, completion and fixed mismatched completion ids."""
        from preflab.data.mismatched import unpaired_fingerprint

        return unpaired_fingerprint(examples)

    @staticmethod
    def mismatched(items) -> list[list[int]]:
        """The mismatched completion of each item: its fixed one (x.mismatched_completion_ids, all items or none),
        else the previous item's completion in TRL's unpaired order of the micro-batch (preflab.data.mismatched.
        trl_unpaired_order: a pair's two halves next to each other are reordered desirable-first), rotating inside
        the micro-batch (the first takes the last's). Rotation
        inside the micro-batch is the default because it keeps the mismatched completions the same set as the
        batch's completions, only paired with other prompts (TRL's comment on its estimator: the best estimate of the
        KL term); a fixed pairing cannot, since the batches are drawn in shuffled order, but it is what a per-example
        reference cache needs."""
        fixed = [getattr(x, "mismatched_completion_ids", None) for x in items]  # items built from Python may lack it
        if all(m is not None for m in fixed):
            return fixed
        if any(m is not None for m in fixed):
            row = items[[m is None for m in fixed].index(True)].row_id
            raise DataError(f"row {row}: this micro-batch mixes examples with a fixed mismatched_completion_ids and "
                            "examples without (this one); give it for every example or for none.")
        from preflab.data.mismatched import trl_unpaired_order
        from preflab.data.tokenize import uncut_completion

        # rotation in TRL's unpaired order: a pair split in two and batched in row order ([chosen_0, rejected_0,
        # ...], evaluation) would otherwise give each rejected example its own prompt's chosen completion
        order = trl_unpaired_order(items)
        out: list = [None] * len(items)
        for k, position in enumerate(order):
            out[position] = uncut_completion(items[order[k - 1]])
        return out

    @staticmethod
    def collate(items, pad_id: int, layout: str) -> LayoutBatch:
        """[completion_1..B, mismatched_1..B]; always the padded layout (no shared prompt between the two). Each
        mismatched sequence is cut to max_length as TRL 1.16 cuts its KL sequences (preflab.data.tokenize.
        kl_sequence)."""
        from preflab.data.tokenize import kl_sequence
        from preflab.loops.batches import pad_token_extras

        n = len(items)
        seqs = [(x.prompt_ids, x.completion_ids) for x in items]
        seqs += [kl_sequence(x, m) for x, m in zip(items, UnpairedKind.mismatched(items))]
        layout = pad_token_extras(padded(seqs, pad_id=pad_id, row_ids=[x.row_id for x in items],
                                         extras=unpaired_extras(items)))
        # the MoE router loss averages over the completions' rows only: TRL's KTOTrainer scores the mismatched
        # (KL) completions in a forward of their own and adds no router loss from it (preflab.scoring.router_loss)
        layout.token_multiplicity[n:] = 0
        return layout

    @staticmethod
    def count_tokens(items) -> int:
        """prompt + completion per example: TRL 1.16's num_tokens counts the attention mask of the completions'
        batch, not the mismatched (KL) sequences it scores in a forward of their own."""
        return sum(len(x.prompt_ids) + len(x.completion_ids) for x in items)

    @staticmethod
    def split(policy, ref, extras) -> UnpairedBatch:
        b = policy.token_logps.shape[0] // 2
        side = lambda s, part: None if s is None else SequenceLogps(s.token_logps[part], s.mask[part])  # noqa: E731
        first, second = slice(0, b), slice(b, 2 * b)
        extras = dict(extras)
        label = extras.pop("label")
        counts = extras.pop(LABEL_COUNTS, None)
        return UnpairedBatch(side(policy, first), label.to(policy.token_logps.device), side(ref, first),
                             side(policy, second), side(ref, second), extras, label_counts=counts)

    @staticmethod
    def eval_metrics(batch) -> dict:
        return {}

    @staticmethod
    def token_sums(token_stats, mask, host_extras) -> dict:
        """The token metrics over the completions, desirable as chosen (preflab.scoring.token_metrics)."""
        from preflab.scoring.token_metrics import unpaired_token_sums

        return unpaired_token_sums(token_stats, mask, host_extras["label"])


class UnpairedCompletionsKind(UnpairedKind):
    """Unpaired objectives without KTO's reference point (apo_zero_unpaired: z0 = 0): the completions only,
    [completion_1..B] -> UnpairedBatch with policy_kl = ref_kl = None. TRL 1.16 sets calculate_KL = False for them
    and scores no mismatched sequence; scoring them anyway doubled the forward for a term the loss never reads."""

    @staticmethod
    def fix_reference_inputs(train, evals, cfg) -> tuple[list, list]:
        """Nothing to fix: the reference log-probs of an example are those of its own completion."""
        return train, evals

    @staticmethod
    def fix_eval_pairing(evals, cfg) -> list:
        """Nothing to pair: no mismatched completion is scored."""
        return evals

    @staticmethod
    def collate(items, pad_id: int, layout: str) -> LayoutBatch:
        """[completion_1..B]; the padded layout, as KTO's."""
        from preflab.loops.batches import pad_token_extras

        seqs = [(x.prompt_ids, x.completion_ids) for x in items]
        return pad_token_extras(padded(seqs, pad_id=pad_id, row_ids=[x.row_id for x in items],
                                       extras=unpaired_extras(items)))

    @staticmethod
    def split(policy, ref, extras) -> UnpairedBatch:
        extras = dict(extras)
        label = extras.pop("label")
        counts = extras.pop(LABEL_COUNTS, None)
        ref = None if ref is None else SequenceLogps(ref.token_logps, ref.mask)
        return UnpairedBatch(SequenceLogps(policy.token_logps, policy.mask), label.to(policy.token_logps.device),
                             ref, None, None, extras, label_counts=counts)


def kind_for(objective):
    """The batch kind an objective consumes (WeightedSum exposes its parts' common batch_type)."""
    if objective.batch_type is UnpairedBatch:
        return UnpairedKind if getattr(objective, "uses_mismatched_completions", True) else UnpairedCompletionsKind
    if objective.batch_type is PairBatch:
        return PairKind
    if objective.batch_type is ListBatch and not objective.required_extras:  # ranked lists from the data (rrhf)
        from preflab.loops.listwise import ListKind

        return ListKind
    if objective.batch_type.__name__ == "SFTBatch":  # task: sft (preflab.loops.sft)
        from preflab.loops.sft_rows import SFTKind

        return SFTKind
    raise NotImplementedError(
        f"preflab train feeds pairwise, unpaired and ranked-list (rrhf) objectives; {objective.batch_type.__name__} "
        f"objectives that need computed extras ({', '.join(objective.required_extras) or 'none'}: listwise with "
        "step indices, GRPO) run through preflab.online (task: online) / the Python API."
    )
