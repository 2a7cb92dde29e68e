"""`preflab eval RUN --task vlm --data PAIRS`: a trained image-text policy (task: vlm) on held-out vision pairs.

The policy is RUN (a final run directory or a checkpoint-N, reloaded by preflab.models.vlm_run with CAT's clue
aggregator when the run trained one); the reference is --reference, else the run's ref_model_name_or_path, else its
model_name_or_path (the starting policy; for LoRA the base); --no-reference for reference-free objectives. The
pairs are read and built as the run read its training data (its vision_pairs builder and max_length; pami_vdpo's
perturbations chosen with the run's starting policy, as in training), and the run's
objective and scorer give the metrics of its eval_* rows (VisionTrainer.evaluate: loss, rewards/*, logps/*, TRL's
token metrics, ranking accuracy), written to eval.json in RUN (or --out). The split read is the policy eval's
(preflab.eval.run.open_eval_split): --split, else 'test' where the data has one, else 'train', said in a note.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from preflab.data.vision import vision_prompt_key, vision_row_key
from preflab.errors import ConfigError
from preflab.eval.run import OverlapRule, overlap_with_training
from preflab.eval.skipped_rows import EVAL_ON_BAD_ROW, skipped_rows_note

# a vision row shares its prompt with a training row when the prompt messages and the images' pixels are equal, and
# is a training row when its answers (and the rejected side's own images) are too (data.vision's keys)
VISION_ROWS = OverlapRule(rows="pairs", prompt="a prompt (text and image pixels)",
                          same_row="same prompt text, image pixels, chosen and rejected",
                          prompt_key=vision_prompt_key, row_key=vision_row_key)


def evaluate_vlm_run(checkpoint: str, data: str, reference: str | None = None, no_reference: bool = False,
                     batch_size: int = 8, split: str | None = None) -> dict:
    """The metrics of the module docstring as a dict (see eval.json). split None: the policy eval's default."""
    from preflab.config import config_with_overrides, lora_off_overrides
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.run_config import require_run_config
    from preflab.eval.run import data_fields, data_name, held_out_run_overrides, open_eval_split, training_data_note
    from preflab.models.vlm import load_vlm_reference
    from preflab.models.vlm_run import load_vlm_run

    from preflab.eval.run_files import note_saved_run, refuse_other_task

    path = Path(checkpoint)
    # the run's config.yaml (a checkpoint's is its run's, one level up), read once here and passed on: the task check,
    # the evaluation's config and the run's saved values, the model and processor reload
    raw = require_run_config(path, "preflab eval --task vlm")[1]
    refuse_other_task(checkpoint, "vlm", raw)  # before the data is opened and the run's config is read as a vlm one
    note_saved_run(checkpoint, raw)  # options this preflab does not know, another preflab version
    # a run saved before truncation_mode became TRL 1.16's holds the old default keep_end, which task: vlm now refuses
    # beside max_length; a VLM run never cut prompts (responses kept their start), which is what unset means now
    old = ["truncation_mode=null"] if raw.get("truncation_mode") == "keep_end" else []
    # the split decided and its reader, read by the run (its dataset_split says which): the data is opened once
    split, said, reader = open_eval_split(data, split)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_with_overrides(raw, preflab_overrides=[
            *held_out_run_overrides(data, split, tmp, batch_size), "ref_model_name_or_path=null",
            "precompute_ref_log_probs=false", *lora_off_overrides(), *old,
            EVAL_ON_BAD_ROW])  # bad rows of --data are skipped and counted, as the policy eval does
        if cfg.task != "vlm":
            raise ConfigError(f"{checkpoint} is a task: {cfg.task} run; --task vlm evaluates task: vlm runs.")
        saved = config_with_overrides(raw, preflab_overrides=old)
        policy, processor = load_vlm_run(path, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                                         saved=raw)
        # a LoRA run reloads merged (or as a checkpoint's adapters) with every weight frozen; the trainer evaluates
        # without a step but builds its optimizer over the trainable weights ("empty parameter list" otherwise)
        policy.requires_grad_(True)
        needs_reference = cfg.objective().needs_reference
        if no_reference and needs_reference:
            raise ConfigError(f"--no-reference: the run's objective {cfg.loss_type!r} needs a reference model; give "
                              "--reference DIR, or leave both out for the run's own.")
        reference = reference or saved.ref_model_name_or_path or saved.model_name_or_path
        ref = None
        if needs_reference:
            ref = load_vlm_reference(reference, cfg, processor, policy, "--reference").requires_grad_(False).eval()
        from preflab.loops.vlm import prepare_vision_data

        selector = policy  # only pami_vdpo's builder scores with it
        if cfg.vision_pairs == "pami_vdpo":
            # the run chose each row's perturbed images with its starting policy (model_name_or_path): the eval does
            # too, so the pairs are the run's; selected with the trained policy they were the ones it tells apart best
            start = saved.model_name_or_path
            selector = ref if ref is not None and reference == start else load_vlm_reference(
                start, cfg, processor, policy, "model_name_or_path").requires_grad_(False).eval()
        rows_read: dict = {}  # the rows as read, for the overlap with the run's training rows
        pairs, _, data_report = prepare_vision_data(cfg, processor, selector, cfg.objective(), reader, rows_read,
                                                    evaluated=True)
        skipped_note, skipped_report = skipped_rows_note(data_report, len(pairs), data_name(data))
        run = VisionTrainer(cfg, policy=policy, ref=ref, processor=processor, train_data=pairs)
        run.eval_data, run.step, run.main = run.train_data, 0, False
        metrics = run.evaluate()
    trained_on = training_data_note(data, raw, split)  # the metrics are then not held-out
    scored = {pair.row_id for pair in run.eval_data}
    overlap, overlap_note, why = overlap_with_training(
        [row for row in rows_read["train"] if row.row_id in scored], vision_training_rows(raw, cfg), VISION_ROWS,
        trained_on is not None)
    return {"task": "vlm", "checkpoint": str(checkpoint), "reference": reference if needs_reference else None,
            **data_fields(data), "split": split, "loss_type": cfg.loss_type, "beta": cfg.beta,
            "num_pairs": len(run.eval_data),
            "metrics": {k[len("eval_"):]: v for k, v in metrics.items() if k.startswith("eval_")},
            **({"overlap_with_training": overlap} if overlap is not None else {}),
            "notes": [n for n in (said, skipped_note, trained_on, overlap_note) if n],
            **({"data_report": skipped_report} if skipped_report else {}),
            "missing": {"overlap_with_training": why} if why else {}}


def vision_training_rows(saved: dict, cfg):
    """The rows the VLM run of saved config `saved` trained on, read as prepare_vision_data read them (its
    dataset_name / dataset_split through read_vision_pairs, with its max_frames and, for a pair builder, one answer
    per row), less the rows eval_fraction held out (preflab.eval.run.run_training_rows). cfg: the eval's config (the
    run's, on the eval data), whose vision_pairs and max_frames are the run's."""
    from preflab.data.vision import read_vision_pairs
    from preflab.eval.run import run_training_rows

    read = dict(on_bad_row="skip", max_frames=cfg.max_frames, responses_only=cfg.vision_pairs != "given")
    return run_training_rows(saved, lambda name, split: read_vision_pairs(name, split=split, **read),
                             holds="vision rows")


def eval_task(args) -> int:
    """`preflab eval RUN --task vlm` (routed here by preflab.cli): written to eval.json like a policy eval."""
    from preflab.eval.cli import format_summary, refuse_unread_options
    from preflab.eval.run import eval_columns, eval_data, eval_json_path, write_json

    refuse_unread_options(args, "vlm")
    data = eval_data(args.data, getattr(args, "data_config", None), eval_columns(args))
    result = evaluate_vlm_run(args.checkpoint, data,
                              reference=args.reference, no_reference=args.no_reference,
                              batch_size=args.batch_size, split=args.split)
    path = write_json(eval_json_path(args.checkpoint, args.out), result)
    print(format_summary({**result, "path": str(path)}, extra=("loss", "rewards/accuracies", "ranking_accuracy")))
    return 0
