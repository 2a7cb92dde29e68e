"""`preflab eval RUN_DIR --task diffusion --data PAIRS`: a trained text-to-image pipeline on held-out image pairs.

- Implicit-reward accuracy: the run's objective and scorer on the held-out pairs (fixed draws per pair), the policy
  = the pipeline in RUN_DIR, the reference = --reference or the run's base model (config.yaml's
  model_name_or_path). A pair counts as correct when the policy lowers the chosen image's denoising error relative
  to the rejected one more than the reference does (ties 1/2; Diffusion-DPO's implicit_acc).
- Win rate (with --reward-fn MODULE:NAME, f(images uint8 [N, 3, S, S], prompts) -> N scores): the policy's and the
  reference's samples for the same prompts and seeds (DDIM, the run's sample_steps / guidance_scale), compared by
  the reward, ties 1/2, with a Wilson interval.
Written to eval.json in RUN_DIR (or --out). ppd and self_npo runs are refused (no shared implicit reward). The split
read is the policy eval's (preflab.eval.run.open_eval_split): --split, else 'test' where the data has one, else
'train', said in a note.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from preflab.diffusion.data import image_pair_key
from preflab.errors import ConfigError
from preflab.eval.names import DIFFUSION_NOT_EVALUATED
from preflab.eval.run import OverlapRule, overlap_with_training

# an image pair shares its prompt with a training pair when the captions are equal, and is a training pair when the
# captions each image is conditioned on and the two images' pixels, in order, are too (diffusion.data.image_pair_key)
IMAGE_PAIRS = OverlapRule(rows="pairs", prompt="a caption", same_row="same captions and the two images' pixels",
                          prompt_key=lambda example: example.prompt, row_key=image_pair_key)


def evaluate_diffusion_run(run_dir: str, data: str, reference: str | None = None, reward_fn=None,
                           num_prompts: int = 32, confidence: float = 0.95, batch_size: int = 8,
                           split: str | None = None) -> dict:
    """The metrics of the module docstring as a dict (see eval.json). run_dir: a run's final directory (a pipeline)
    or one of its checkpoint-N folders (its trained parameters, LoRA adapters included, on the run's base model).
    split None: the policy eval's default."""
    from preflab.checkpoint import load_checkpoint_weights
    from preflab.config import config_with_overrides, lora_off_overrides
    from preflab.diffusion.pipeline import components_of, load_pipeline, sample_images
    from preflab.models.run_config import require_run_config
    from preflab.eval.run import data_fields, data_name, open_eval_split, training_data_note
    from preflab.eval.run_files import refuse_other_task
    from preflab.eval.winrate import win_rate
    from preflab.loops.diffusion import DiffusionRun

    checkpoint = _is_checkpoint(Path(run_dir))
    # a checkpoint's config is its run's, one level up (preflab.models.run_config's rule)
    saved = require_run_config(run_dir, "preflab eval --task diffusion")[1]  # read once, passed on
    refuse_other_task(run_dir, "diffusion", saved)  # a text policy, a reward model, a VLM: named with its command
    if saved.get("task") not in (None, "diffusion"):  # a recipe's folder: its stages are runs in its subfolders
        raise ConfigError(f"{run_dir} is a task: {saved['task']} run; --task diffusion evaluates task: diffusion runs.")
    trained = saved.get("loss_type")
    if trained in DIFFUSION_NOT_EVALUATED:  # refused before --data is opened
        _refuse_unevaluated(trained)
    # the split decided and its reader, read by the run (its dataset_split says which): the data is opened once
    split, said, reader = open_eval_split(data, split)
    with tempfile.TemporaryDirectory() as tmp:
        # a checkpoint holds the trained parameters (LoRA adapters when use_peft) on the run's base model; the
        # final directory is a pipeline with the adapters fused
        cfg = config_with_overrides(saved, preflab_overrides=[
            # the run is given `reader`, which reads --data-config's configuration (dataset_name is its name)
            f"dataset_name={data_name(data)}", "dataset_config=null", f"dataset_split={split}",
            "eval_dataset_name=null",
            "eval_dataset_config=null", "eval_fraction=0",
            f"output_dir={tmp}", "max_steps=1", "resume_from_checkpoint=null", f"per_device_eval_batch_size={batch_size}",
            "per_device_train_batch_size=1", "gradient_accumulation_steps=1",  # no step: no training batch plan to refuse
            "report_to=none", "caption_perturbation=none"] + ([] if checkpoint else lora_off_overrides()))
        objective = cfg.objective()
        if type(objective).__name__ in ("PPD", "SelfNPO"):
            _refuse_unevaluated(cfg.loss_type)
        reference_name = reference or _run_base_model(run_dir, cfg.model_name_or_path)
        policy_name = _run_base_model(run_dir, cfg.model_name_or_path) if checkpoint else str(run_dir)
        run = DiffusionRun(cfg, pipeline=load_pipeline(policy_name, cfg.allow_pickle, seed=cfg.seed),
                           scores_held_out=True, reader=reader)
        if checkpoint:
            load_checkpoint_weights(run_dir, run.trainables)
        try:
            ref = components_of(load_pipeline(reference_name, cfg.allow_pickle, seed=cfg.seed))
        except ConfigError as err:
            if reference:
                raise
            raise ConfigError(f"{err} (the reference is {run_dir}'s model_name_or_path from its config.yaml; if it "
                              "was a local directory relative to another working directory, pass --reference "
                              "DIR)") from err
        ref.flux_guidance, ref.resolution = cfg.flux_guidance, cfg.resolution  # Flux: sampled as the run's
        run.reference = ref.denoiser.float().to(run.accelerator.device).requires_grad_(False).eval()
        run.eval_data = run.train_data
        metrics = run.evaluate()
        trained_on = training_data_note(data, saved, split)  # the metrics are then not held-out
        overlap, overlap_note, why = overlap_with_training(run.eval_data, image_training_rows(saved, run),
                                                           IMAGE_PAIRS, trained_on is not None)
        out = {"task": "diffusion", "checkpoint": str(run_dir), "reference": reference_name, **data_fields(data),
               "split": split, "loss_type": cfg.loss_type, "beta": cfg.beta, "num_pairs": len(run.eval_data),
               "metrics": {"implicit_accuracy": metrics.get("eval_implicit_acc"),
                           **{k[5:]: v for k, v in metrics.items() if k.startswith("eval_")}},
               **({"overlap_with_training": overlap} if overlap is not None else {}),
               "notes": [n for n in (said, *run.eval_notes, trained_on, overlap_note) if n],
               "missing": {"overlap_with_training": why} if why else {}}
        if reward_fn is not None:
            prompts = [x.prompt for x in run.eval_data][:num_prompts]
            seeds = [cfg.seed * 100003 + i for i in range(len(prompts))]
            policy = sample_images(run.components, run.module.unet.eval(), prompts, seeds, cfg.sample_steps,
                                   cfg.guidance_scale)
            baseline = sample_images(ref, run.reference, prompts, seeds, cfg.sample_steps, cfg.guidance_scale)
            p_scores = image_rewards(reward_fn, policy, prompts, "trained")
            r_scores = image_rewards(reward_fn, baseline, prompts, "reference")
            rate = win_rate(p_scores, r_scores, confidence)
            both = [(a, b) for a, b in zip(p_scores, r_scores) if a is not None and b is not None]
            out["metrics"].update({"win_rate": rate.win_rate, "win_rate/ci_low": rate.ci_low,
                                   "win_rate/ci_high": rate.ci_high,
                                   "reward/policy": sum(a for a, _ in both) / len(both),
                                   "reward/reference": sum(b for _, b in both) / len(both)})
            out["win_rate"] = rate.to_dict()
            out["notes"] += [n for n in (win_rate_note(rate),) if n]
    return out


def image_rewards(reward_fn, images: torch.Tensor, prompts: list[str], whose: str) -> list[float | None]:
    """--reward-fn's scores of `images` (uint8 [N, 3, S, S], one per prompt): one finite number per image, None where
    it gave None / NaN / inf (no verdict: preflab.eval.winrate). A function that raises, or that returns another count
    than N, is a ConfigError naming it; before, N - 1 scores were zipped with the other side's and the win rate was
    silently over the first N - 1 prompts (and a raise was a traceback after both pipelines had sampled)."""
    from preflab.eval.winrate import _finite

    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    try:
        scores = reward_fn(images, prompts)
        values = [_finite(v) for v in (scores.flatten().tolist() if isinstance(scores, torch.Tensor) else scores)]
    except Exception as err:  # the user's code: any exception it raises is its own verdict on these images
        raise ConfigError(f"--reward-fn {name} raised {type(err).__name__} on the {whose} pipeline's samples "
                          f"(images uint8 {list(images.shape)}, {len(prompts)} prompts): {err}. It is called as "
                          "f(images, prompts) and returns one score per image.") from err
    if len(values) != len(prompts):
        raise ConfigError(f"--reward-fn {name} returned {len(values)} scores for the {whose} pipeline's "
                          f"{len(prompts)} images; it must return one per image (None where it cannot score one).")
    return values


def win_rate_note(rate) -> str | None:
    """A note when every compared prompt is a tie: the reward scored the trained and the reference pipeline's
    images alike (a constant function, or samples that did not change), so the win rate of 1/2 measures nothing;
    and when some prompts had no score (left out of n). None otherwise."""
    notes = []
    if rate.n and rate.ties == rate.n:
        notes.append(f"all {rate.n} compared prompts are ties (the reward function gave the trained and the reference "
                     "pipeline's images the same score: a constant function, or samples that did not change), so "
                     "win_rate 0.5 says nothing about the run")
    if rate.failed:
        notes.append(f"{rate.failed} prompt(s) had no score (None, NaN or inf from the reward function) and are left "
                     f"out of the win rate (n = {rate.n})")
    return "; ".join(notes) or None


def image_training_rows(saved: dict, run):
    """The image pairs the diffusion run of saved config `saved` trained on, read as it read them (its dataset_name
    / dataset_split through load_image_pairs with the run's options: DiffusionRun.image_pair_options of `run`, the
    eval's run on the same config), less the rows eval_fraction held out (preflab.eval.run.run_training_rows)."""
    from preflab.diffusion.data import load_image_pairs
    from preflab.eval.run import run_training_rows

    options = {**run.image_pair_options(), "on_bad_row": "skip"}
    return run_training_rows(saved, lambda name, split: load_image_pairs(name, split=split, **options),
                             holds="image pairs")


def _refuse_unevaluated(loss_type: str) -> None:
    why = "; ".join(f"{k}: {v}" for k, v in DIFFUSION_NOT_EVALUATED.items())
    raise ConfigError(f"preflab eval --task diffusion reads pairwise runs; {loss_type} runs are not supported ({why}).")


def _is_checkpoint(path: Path) -> bool:
    """A checkpoint-N folder of a diffusion run (preflab.models.run_config.is_checkpoint_folder, holding its trained
    parameters, not a pipeline): loaded over the run's base model."""
    from preflab.models.run_config import is_checkpoint_folder

    return (is_checkpoint_folder(path) and (path / "model.safetensors").is_file()
            and not (path / "model_index.json").is_file())


def _run_base_model(run_dir: str, name: str) -> str:
    """The run's model_name_or_path as the reference, or a ConfigError when it was a local path that is not a
    directory here (a relative path written from another working directory, or a moved model): loading it would
    ask the hub for it (retrying for about 20 s) and then fail with a hub error."""
    from preflab.diffusion.pipeline import TINY, TINY_FLUX, TINY_SD3

    if name in (TINY, TINY_SD3, TINY_FLUX) or Path(name).expanduser().is_dir():
        return name
    local = name.startswith((".", "/", "~")) or "\\" in name or name.count("/") != 1
    if local:
        raise ConfigError(f"{run_dir} was trained from model_name_or_path={name!r} (its config.yaml), which is not "
                          "a directory here (relative to another working directory, or moved); pass --reference DIR "
                          "(the pipeline the run started from).")
    return name


def shapes_reward(images: torch.Tensor, prompts: list[str]) -> list[float]:
    """The demo's true reward (preflab.diffusion.shapes.true_reward) as a --reward-fn: the caption's colour, or
    red for captions without one (the demo's rater)."""
    from preflab.diffusion.shapes import COLOURS, true_reward

    out = []
    for image, prompt in zip(images, prompts):
        named = any(c in prompt.split() for c in COLOURS)
        out.append(float(true_reward(image[None], [prompt], None if named else "red")[0]))
    return out


def eval_task(args) -> int:
    """`preflab eval RUN --task diffusion` (routed here by preflab.cli): written to eval.json like a policy eval."""
    from preflab.eval.cli import format_summary, refuse_unread_options
    from preflab.eval.run import eval_data, eval_json_path, write_json
    from preflab.eval.winrate import load_callable

    refuse_unread_options(args, "diffusion")
    if getattr(args, "no_reference", False):
        raise ConfigError("--no-reference with --task diffusion: the implicit-reward accuracy compares the pipeline "
                          "with a reference (default: the run's base model); remove --no-reference.")
    result = evaluate_diffusion_run(args.checkpoint, eval_data(args.data, getattr(args, "data_config", None)),
                                    reference=args.reference,
                                    reward_fn=load_callable(args.reward_fn) if args.reward_fn else None,
                                    num_prompts=args.win_rate_prompts, confidence=args.confidence,
                                    batch_size=args.batch_size, split=args.split)
    path = write_json(eval_json_path(args.checkpoint, args.out), result)
    print(format_summary({**result, "path": str(path)}, extra=("implicit_accuracy", "loss", "reward/policy",
                                                                "reward/reference")))
    return 0
