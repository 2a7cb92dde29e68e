"""The options TR-DPO reference syncing (sync_ref_model, TRL's DPOConfig field) cannot honour, refused with the reason
(ref_sync_conflicts, run by TrainConfig.check). What syncing does: preflab.loops.ref_sync.

A module of the config layer (beside preflab.config, not in preflab/loops), as preflab.streaming_options. The checks
that need the built objective, models or engine (a reference-free loss_type, FSDP or DeepSpeed, a reference of
another architecture) run when the trainer is built (preflab.loops.ref_sync.check_ref_sync).
"""
from __future__ import annotations

SYNC_DEFAULTS = {"ref_model_mixup_alpha": 0.6, "ref_model_sync_steps": 512}  # TRL 1.16 DPOConfig's

# huggingface/trl#3108: TRL 1.16 refuses sync_ref_model with a PEFT model (DPOTrainer.__init__); preflab mixes the
# policy's merged weights (base + LoRA delta) into a separate full reference (preflab.loops.ref_sync)
QUANTIZED_REASON = ("a 4/8-bit base (load_in_4bit / load_in_8bit) has no floating-point weights to mix the policy "
                    "into, and its separate reference would be a full-precision copy of the whole model")


def ref_sync_conflicts(cfg) -> list[str]:
    """One line per option that sync_ref_model cannot honour; ref_model_mixup_alpha / ref_model_sync_steps away from
    TRL's defaults without sync_ref_model (they would do nothing)."""
    if not cfg.sync_ref_model:
        moved = [f"{k}={getattr(cfg, k)!r}" for k, default in SYNC_DEFAULTS.items() if getattr(cfg, k) != default]
        return [f"{' and '.join(moved)} only {'applies' if len(moved) == 1 else 'apply'} with sync_ref_model: true "
                "(TR-DPO reference syncing); set sync_ref_model: true or remove "
                f"{'it' if len(moved) == 1 else 'them'}."] if moved else []
    out = []
    if cfg.task != "dpo":
        why = {"online": "an online run's reference moves with refresh_reference_every (a hard copy of the policy "
                         "every n rounds); TR-DPO's soft update is not implemented there",
               "vlm": "reference syncing is implemented and tested for the text trainer only"}.get(
            cfg.task, "the reference sync is implemented for the offline preference trainer only")
        out.append(f"sync_ref_model: true applies to task: dpo (offline preference training), not task: {cfg.task}: "
                   f"{why}. Remove sync_ref_model.")
    if cfg.precompute_ref_log_probs:
        out.append("sync_ref_model: true moves the reference during training, so reference log-probs computed once "
                   "before training (precompute_ref_log_probs, the reference cache) would be stale after the first "
                   "sync (TRL refuses the pair too); set precompute_ref_log_probs: false or remove sync_ref_model.")
    if cfg.load_in_4bit or cfg.load_in_8bit:
        out.append(f"sync_ref_model: true with a quantized base: {QUANTIZED_REASON}. Load the base in a "
                   "floating-point dtype or remove sync_ref_model.")
    return out


def sharded_ref_sync_problem(cfg, engine: str | None) -> str | None:
    """sync_ref_model: true under a sharding engine (launch.sharding_engine's name; None without sharding): each rank
    holds only its shards of the policy and the reference. Asked by preflab.loops.ref_sync.check_ref_sync (after its
    reference-free check) and `preflab plan`."""
    if engine is None or not cfg.sync_ref_model:
        return None
    return (f"sync_ref_model: true is not supported under {engine}: each rank holds only its shards of the policy "
            "and the reference, and preflab's reference sync is tested on one process and DDP only. Train with "
            "examples/accelerate/ddp.yaml or one process, or remove sync_ref_model.")


def ref_sync_reference_problem(cfg, needs_reference: bool) -> str | None:
    """sync_ref_model: true with a reference-free objective (`needs_reference` False): nothing to sync. Asked by
    preflab.loops.ref_sync.check_ref_sync (before its engine check) and `preflab plan`."""
    if not cfg.sync_ref_model or needs_reference:
        return None
    return (f"sync_ref_model: true, but loss_type {cfg.loss_type!r} uses no reference model (reference-free), so "
            "there is nothing to sync; remove sync_ref_model or choose a loss_type with a reference (sigmoid, ipo, "
            "...).")
