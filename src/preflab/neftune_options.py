"""Which runs take neftune_noise_alpha (NEFTune: preflab.models.neftune), and why the others are refused
(neftune_conflicts, run by TrainConfig.check; the batch-kind check, which needs the built objective, runs when
training starts: neftune_kind_refusal).

NEFTune's noise scale alpha / sqrt(L * d) depends on L, the sequence length of the batch the embedding sees. In TRL
that is the padded batch: DPOTrainer's [chosen; rejected] rows padded to the longest prompt + completion,
SFTTrainer's padded rows, RewardTrainer's [chosen; rejected] rows. preflab's layout: padded (task: dpo), its SFT rows
without packing and its reward batches are those same rows, so L is TRL's. Its other layouts are not: prefix_shared
puts prompt + chosen + rejected in one row and packed / prefix_packed put several pairs in one row, so L would be
longer and the noise smaller than TRL's; they are refused rather than run with another noise scale.
"""
from __future__ import annotations

COVERED = "task: dpo with layout: padded (paired loss types), task: sft without packing, task: reward"

TASK_REASONS = {
    "online": "the online loop adds no noise to its policy updates (TRL's GRPOTrainer runs transformers' hook on "
              "every forward of the model in training mode, generation included, which preflab does not copy)",
    "vlm": "a vision-language model's image features enter beside the token embeddings; NEFTune is not "
           "implemented for it",
    "diffusion": "a diffusion model has no token embeddings to add the noise to",
}


def neftune_conflicts(cfg) -> list[str]:
    """One line per reason this config cannot run NEFTune as TRL does (module docstring); [] without it."""
    alpha = cfg.neftune_noise_alpha
    if alpha is None:
        return []
    head = f"neftune_noise_alpha={alpha!r}"
    if cfg.task not in ("dpo", "sft", "reward"):
        reason = TASK_REASONS.get(cfg.task, "a recipe passes only its stages' own options to them")
        return [f"{head} applies to {COVERED}; not to task: {cfg.task} ({reason}). Remove it."]
    if cfg.task == "dpo" and cfg.layout != "padded":
        return [f"{head} with layout: {cfg.layout}: the noise scale alpha / sqrt(L * d) depends on the row length L, "
                "which is TRL's (the padded [chosen; rejected] batch) only with layout: padded; "
                f"{cfg.layout} rows are longer (prompt and both responses, or several pairs, in one row), so the noise "
                "would be smaller than TRL's. Set layout: padded, or remove neftune_noise_alpha."]
    if cfg.task == "sft" and cfg.packing:
        return [f"{head} with packing: true: the noise scale alpha / sqrt(L * d) depends on the row length L, and a "
                "packed row holds several sequences, so the noise would differ from an unpacked run's. Set "
                "packing: false, or remove neftune_noise_alpha."]
    if cfg.torch_compile:
        return [f"{head} with torch_compile: the noise is a forward hook on the embedding module, added after the "
                "model is built; it is not tested under torch.compile. Remove one of them."]
    return []


def neftune_kind_refusal(alpha, kind_name: str | None) -> str | None:
    """The refusal for a task: dpo run whose loss type reads unpaired or ranked-list batches (KTO's [completion;
    mismatched completion] rows are one forward in preflab, two in TRL's KTOTrainer: another L), else None."""
    if alpha is None or kind_name in (None, "pairs", "sft"):
        return None
    return (f"neftune_noise_alpha={alpha!r} applies to {COVERED}; this loss type reads {kind_name} batches, whose "
            "rows are not laid out as TRL's trainer lays them (another sequence length L in the noise scale). "
            "Remove neftune_noise_alpha.")
