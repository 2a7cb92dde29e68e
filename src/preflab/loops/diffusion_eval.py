"""`preflab eval RUN_DIR --task diffusion --data PAIRS`: a trained text-to-image pipeline on held-out image pairs.

- Implicit-reward accuracy: the run's objective and scorer on the held-out pairs (fixed draws per pair), the policy
  = the pipeline in RUN_DIR, the reference = --reference or the run's base model (config.yaml's
  model_name_or_path). A pair counts as correct when the policy lowers the chosen image's denoising error relative
  to the rejected one more than the reference does (ties 1/2; the diffusers script's implicit_acc, logged by
  training as implicit_accuracy).
- Win rate (with --reward-fn MODULE:NAME, f(images uint8 [N, 3, S, S], prompts) -> N scores): the policy's and the
  reference's samples for the same prompts and seeds (DDIM, the run's sample_steps / guidance_scale), compared by
  the reward, ties 1/2, with a Wilson interval.
- ppd (methods §28: "split train/test by user"; held-out users): each pair scored with its user's embedding through
  the saved user branch (users.json, user_branch.safetensors), subset 0 of each user as the run's own eval reads it,
  against the same UNet without the branch (the run's reference), so implicit_accuracy and loss equal the run's
  eval_* on the same pairs. Users the saved table lacks come from --user-embeddings FILE (else the run's own
  user_embeddings file); a user in neither is refused, naming it and its row. preference_accuracy/personalized and
  /base: the fraction of pairs whose chosen image has the lower denoising error (ties 1/2) with the branch on and
  off, from the same forwards; `users` counts the evaluated users the run trained on (not held-out users). With
  --reward-fn, the win rate of the personalized model (each held-out pair's prompt sampled with that pair's user
  through the branch) against the base model (the same UNet, branch off), same seeds and sampler (ppd_samples);
  a reward function with a `users` parameter (or **kwargs) gets each image's user. A checkpoint-N folder of a ppd
  run is read with the user table its trainer_state.json describes (preflab.loops.ppd_eval.checkpoint_user_table).
  per_user: each user's pairs, loss and accuracies (and win rate), means of the pooled metrics' per-pair values.
Written to eval.json in RUN_DIR (or --out). self_npo runs are refused (no shared implicit reward). The split
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
from preflab.eval.skipped_rows import EVAL_ON_BAD_ROW, skipped_rows_note

# an image pair shares its prompt with a training pair when the captions are equal, and is a training pair when the
# captions each image is conditioned on and the two images' pixels, in order, are too (diffusion.data.image_pair_key)
IMAGE_PAIRS = OverlapRule(rows="pairs", prompt="a caption", same_row="same captions and the two images' pixels",
                          prompt_key=lambda example: example.prompt, row_key=image_pair_key)
# ppd: a pair is a training pair only for the same user (two users may rate the same images)
USER_IMAGE_PAIRS = OverlapRule(rows="pairs", prompt="a caption",
                               same_row="same user, captions and the two images' pixels",
                               prompt_key=lambda example: example.prompt,
                               row_key=lambda x: None if image_pair_key(x) is None else (x.user, *image_pair_key(x)))


def evaluate_diffusion_run(run_dir: str, data: str, reference: str | None = None, reward_fn=None,
                           num_prompts: int = 32, confidence: float = 0.95, batch_size: int = 8,
                           split: str | None = None, user_embeddings: str | None = None) -> dict:
    """The metrics of the module docstring as a dict (see eval.json). run_dir: a run's final directory (a pipeline)
    or one of its checkpoint-N folders (its trained parameters, LoRA adapters included, on the run's base model).
    split None: the policy eval's default. user_embeddings: ppd, a file of the users the saved table lacks."""
    from preflab.checkpoint import load_checkpoint_weights
    from preflab.config import config_with_overrides, lora_off_overrides
    from preflab.diffusion.pipeline import components_of, load_pipeline, sample_images
    from preflab.models.run_config import require_run_config
    from preflab.eval.run import data_fields, data_name, held_out_run_overrides, open_eval_split, training_data_note
    from preflab.eval.run_files import note_saved_run, refuse_other_task
    from preflab.loops.diffusion import DiffusionRun, sample_seeds

    checkpoint = is_diffusion_checkpoint(Path(run_dir))
    # a checkpoint's config is its run's, one level up (preflab.models.run_config's rule)
    saved = require_run_config(run_dir, "preflab eval --task diffusion")[1]  # read once, passed on
    refuse_other_task(run_dir, "diffusion", saved)  # a text policy, a reward model, a VLM: named with its command
    note_saved_run(run_dir, saved)  # options this preflab does not know, another preflab version
    if saved.get("task") not in (None, "diffusion"):  # a recipe's folder: its stages are runs in its subfolders
        raise ConfigError(f"{run_dir} is a task: {saved['task']} run; --task diffusion evaluates task: diffusion runs.")
    trained = saved.get("loss_type")
    if trained in DIFFUSION_NOT_EVALUATED:  # refused before --data is opened
        _refuse_unevaluated(trained, run_dir)
    ppd = trained == "ppd"
    if user_embeddings is not None and not ppd:
        raise ConfigError(f"--user-embeddings gives a ppd run's user embeddings; {run_dir} is a {trained} run. "
                          "Remove it.")
    if reference and not ppd:  # a builtin VLM or text model was looked up on the hub as a pipeline
        from preflab.models.model_kind import check_model_fits_task

        check_model_fits_task(reference, "diffusion", "--reference")
    users = None
    if ppd:
        from preflab.loops.ppd_eval import checkpoint_user_table

        refuse_ppd_reference(reference)
        users = (checkpoint_user_table(run_dir, saved, user_embeddings) if checkpoint
                 else saved_user_table(run_dir, saved, user_embeddings))
    # the split decided and its reader, read by the run (its dataset_split says which): the data is opened once
    split, said, reader = open_eval_split(data, split)
    with tempfile.TemporaryDirectory() as tmp:
        # a checkpoint holds the trained parameters (LoRA adapters when use_peft) on the run's base model; the
        # final directory is a pipeline with the adapters fused
        cfg = config_with_overrides(saved, preflab_overrides=held_out_run_overrides(data, split, tmp, batch_size) + [
            "caption_perturbation=none"] + ([] if checkpoint else lora_off_overrides())
            # bad rows of --data are skipped and counted, as the policy eval does; ppd's too: its user table is the
            # saved run's (users.json, a checkpoint's trainer_state.json, user_embeddings), not built from --data's
            # rows, so a skipped row only leaves its pair out
            + [EVAL_ON_BAD_ROW])
        objective = cfg.objective()
        if type(objective).__name__ == "SelfNPO":
            _refuse_unevaluated(cfg.loss_type)
        # ppd's reference is its own UNet without the branch; the others' is checked before the policy loads
        reference_name = None if ppd else reference or run_base_model(run_dir, cfg.model_name_or_path)
        policy_name = run_base_model(run_dir, cfg.model_name_or_path) if checkpoint else str(run_dir)
        run = DiffusionRun(cfg, pipeline=load_pipeline(policy_name, cfg.allow_pickle, seed=cfg.seed),
                           scores_held_out=True, reader=reader, user_table=users)
        if checkpoint:
            load_checkpoint_weights(run_dir, run.trainables)
        if ppd:
            return _evaluate_ppd(run, run_dir, data, saved, split, said, reward_fn, num_prompts, confidence,
                                 checkpoint)
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
        skipped_note, skipped_report = skipped_rows_note(run.data_report, len(run.eval_data), data_name(data))
        metrics = run.evaluate()
        trained_on = training_data_note(data, saved, split)  # the metrics are then not held-out
        overlap, overlap_note, why = overlap_with_training(run.eval_data, image_training_rows(saved, run),
                                                           IMAGE_PAIRS, trained_on is not None)
        out = {"task": "diffusion", "checkpoint": str(run_dir), "reference": reference_name, **data_fields(data),
               "split": split, "loss_type": cfg.loss_type, "beta": cfg.beta, "num_pairs": len(run.eval_data),
               "metrics": eval_json_metrics(metrics),
               **({"overlap_with_training": overlap} if overlap is not None else {}),
               "notes": [n for n in (said, skipped_note, *run.eval_notes, trained_on, overlap_note) if n],
               **({"data_report": skipped_report} if skipped_report else {}),
               "missing": {"overlap_with_training": why} if why else {}}
        if reward_fn is not None:
            prompts = [x.prompt for x in run.eval_data][:num_prompts]
            seeds = sample_seeds(cfg.seed, len(prompts))
            policy = sample_images(run.components, run.module.unet.eval(), prompts, seeds, cfg.sample_steps,
                                   cfg.guidance_scale)
            baseline = sample_images(ref, run.reference, prompts, seeds, cfg.sample_steps, cfg.guidance_scale)
            add_win_rate(out, reward_fn, policy, baseline, prompts, confidence)
    return out


def eval_json_metrics(metrics: dict, added: dict | None = None) -> dict:
    """eval.json's metrics from the run's evaluate() (its eval_* keys, the prefix dropped): implicit_accuracy first,
    then `added` (ppd's preference accuracies), then the rest in the run's order. One key per quantity: training logs
    implicit_accuracy under the name eval.json uses, so eval.json no longer writes the diffusers script's
    implicit_acc beside it (an eval.json written before says both; preflab report reads either,
    preflab.eval.names.current_metric_names)."""
    held = {k[len("eval_"):]: v for k, v in metrics.items() if k.startswith("eval_")}
    return {"implicit_accuracy": held.pop("implicit_accuracy", None), **(added or {}), **held}


def add_win_rate(out: dict, reward_fn, policy: torch.Tensor, baseline: torch.Tensor, prompts: list[str],
                 confidence: float, users: list[str] | None = None) -> tuple[list, list]:
    """eval.json's win-rate fields (metrics win_rate, its Wilson interval, the mean rewards over prompts both sides
    scored; "win_rate"; a note when every prompt ties or some had no score) from --reward-fn's scores of the trained
    (`policy`) and the reference (`baseline`) samples of the same prompts and seeds; returns the two score lists.
    users: ppd, each prompt's user, passed to a reward function that takes them (image_rewards)."""
    from preflab.eval.winrate import win_rate

    p_scores = image_rewards(reward_fn, policy, prompts, "trained", users)
    r_scores = image_rewards(reward_fn, baseline, prompts, "reference", users)
    rate = win_rate(p_scores, r_scores, confidence)
    both = [(a, b) for a, b in zip(p_scores, r_scores) if a is not None and b is not None]
    out["metrics"].update({"win_rate": rate.win_rate, "win_rate/ci_low": rate.ci_low,
                           "win_rate/ci_high": rate.ci_high,
                           "reward/policy": sum(a for a, _ in both) / len(both) if both else None,
                           "reward/reference": sum(b for _, b in both) / len(both) if both else None})
    out["win_rate"] = rate.to_dict()
    out["notes"] += [n for n in (win_rate_note(rate),) if n]
    return p_scores, r_scores


def refuse_ppd_reference(reference: str | None) -> None:
    """--reference is refused for ppd: its reference is its own UNet without the user branch."""
    if reference is not None:
        raise ConfigError("--reference with a ppd run: its reference is its own UNet without the user branch (the "
                          "implicit reward is what the user branch adds); remove --reference.")


def saved_user_table(run_dir: str, saved: dict, user_embeddings: str | None, checkpoint: bool = False,
                     reference: str | None = None):
    """A ppd run's UserTable (preflab.loops.diffusion) from its final directory's users.json and
    user_branch.safetensors' users.weight; users it lacks come from `user_embeddings`, else the run's configured
    user_embeddings file (preflab.loops.ppd_eval.user_table_of). Refused: a checkpoint-N folder (it holds no
    users.json: `preflab eval` reads a checkpoint's table with ppd_eval.checkpoint_user_table), --reference (ppd's
    reference is the UNet without its branch), missing or inconsistent saved files."""
    import json

    from safetensors import safe_open

    from preflab.loops.ppd_eval import check_user_layout, user_table_of

    if checkpoint:
        raise ConfigError(f"{run_dir} is a checkpoint of a ppd run: it holds no users.json or user_branch.safetensors "
                          "(the final directory's user files); use the run's final directory.")
    refuse_ppd_reference(reference)
    run = Path(run_dir)
    files = [run / "users.json", run / "user_branch.safetensors"]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise ConfigError(f"{run_dir} is a ppd run without {' and '.join(absent)} (written with the pipeline when "
                          "training ends): evaluate a finished run's output directory.")
    info = json.loads(files[0].read_text())
    with safe_open(str(files[1]), framework="pt") as f:
        weight = f.get_tensor("users.weight") if "users.weight" in f.keys() else None
    rows = {u: tuple(v) for u, v in info.get("subsets", {}).items()}
    tokens = info.get("tokens")
    check_user_layout(weight, rows, tokens, f"{run_dir}: users.json", "user_branch.safetensors' users.weight")
    return user_table_of(run_dir, weight, rows, tokens, f"{files[0]} (the run's {len(rows)} users)", saved,
                         user_embeddings)


def load_user_branch(run_dir: str, branch, what: str) -> None:
    """Load a finished ppd run's trained user branch (P, W_K^u, W_V^u: the `branch.*` tensors of its
    user_branch.safetensors) into `branch`; a branch of other shapes is refused, naming the file and `what` it was
    loaded into."""
    from safetensors.torch import load_file

    state = load_file(str(Path(run_dir) / "user_branch.safetensors"))
    try:
        branch.load_state_dict({k[len("branch."):]: v for k, v in state.items() if k.startswith("branch.")})
    except RuntimeError as err:
        raise ConfigError(f"{run_dir}/user_branch.safetensors does not fit {what}: {err}") from err


def _evaluate_ppd(run, run_dir: str, data, saved: dict, split: str, said: str | None, reward_fn=None,
                  num_prompts: int = 32, confidence: float = 0.95, checkpoint: bool = False) -> dict:
    """A ppd run on held-out pairs (the module docstring): the saved user branch loaded (a checkpoint's is already
    in run.trainables), the run's eval, the per-pair loss and scores of each side read off the same batches (the
    pooled preference accuracies and per_user, preflab.loops.ppd_eval), the overlap and user counts; with
    reward_fn, the win rate of ppd_samples' personalized samples against the base model's, pooled and per user."""
    from preflab.eval.run import data_fields, data_name, overlap_with_training, training_data_note
    from preflab.loops.ppd_eval import (add_per_user_win_rates, pair_columns, per_user_breakdown, preference_accuracy,
                                        takes_users)

    if not checkpoint:
        load_user_branch(run_dir, run.module.user_branch, "the run's user branch")
    run.module.user_branch.to(run.accelerator.device)
    run.reference = None  # ppd's reference: the same UNet without the user branch (DiffusionRun._reference)
    run.eval_data = run.train_data
    skipped_note, skipped_report = skipped_rows_note(run.data_report, len(run.eval_data), data_name(data))
    pairs = []
    metrics = run.evaluate(on_batch=lambda index, batch: pairs.append(pair_columns(run.objective, batch)))
    columns = torch.cat(pairs) if pairs else torch.zeros(0, 5, dtype=torch.float64)
    errors = columns[:, 1:]
    cfg = run.cfg
    trained_on = training_data_note(data, saved, split)
    training = image_training_rows(saved, run)
    overlap, overlap_note, why = overlap_with_training(run.eval_data, training, USER_IMAGE_PAIRS,
                                                       trained_on is not None)
    users, users_note = held_out_users(run.eval_data, training.rows)
    trained_users = None if training.rows is None else {x.user for x in training.rows}
    per_user = per_user_breakdown([x.user for x in run.eval_data], columns, trained_users)
    out = {"task": "diffusion", "checkpoint": str(run_dir), "reference": "the run's UNet without its user branch",
           **data_fields(data), "split": split, "loss_type": cfg.loss_type, "beta": cfg.beta,
           "num_pairs": len(run.eval_data),
           "metrics": eval_json_metrics(metrics, {
               "preference_accuracy/personalized": preference_accuracy(errors[:, 0], errors[:, 1]),
               "preference_accuracy/base": preference_accuracy(errors[:, 2], errors[:, 3])}),
           "users": users, "per_user": per_user,
           **({"overlap_with_training": overlap} if overlap is not None else {}),
           "notes": [n for n in (said, skipped_note, *run.eval_notes, trained_on, overlap_note, users_note) if n],
           **({"data_report": skipped_report} if skipped_report else {}),
           "missing": {"overlap_with_training": why} if why else {}}
    if reward_fn is not None:
        prompts, policy, baseline = ppd_samples(run, num_prompts)
        sampled_users = [x.user for x in run.eval_data[:len(prompts)]]  # ppd_samples' pairs, in order
        if not takes_users(reward_fn):
            out["notes"].append(f"--reward-fn {getattr(reward_fn, '__name__', type(reward_fn).__name__)} takes no "
                                "`users` (nor **kwargs): every image is scored without its user, so per_user's win "
                                "rates are by one reward for all users; give it a `users` keyword parameter to score "
                                "each user's taste")
        scores = add_win_rate(out, reward_fn, policy, baseline, prompts, confidence, sampled_users)
        add_per_user_win_rates(per_user, sampled_users, *scores, confidence)
    return out


def ppd_samples(run, num_prompts: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(prompts, personalized samples, base samples) of the first `num_prompts` held-out pairs of a ppd eval's run:
    each prompt sampled with its pair's user (subset 0 of the user's rows, the embedding the pair is scored with)
    through the user branch, and with the branch off (the base model, PPD's reference), the same seeds
    (seed * 100003 + i) and the run's sample_steps / guidance_scale for both (DenoiserModule.sample_user_images)."""
    from preflab.loops.diffusion import sample_seeds

    cfg, module = run.cfg, run.module
    pairs = run.eval_data[:num_prompts]
    prompts = [x.prompt for x in pairs]
    seeds = sample_seeds(cfg.seed, len(prompts))
    e = module.user_embeddings([run.user_rows[x.user][0] for x in pairs])
    personalized = module.sample_user_images(run.components, prompts, seeds, e, cfg.sample_steps, cfg.guidance_scale)
    base = module.sample_user_images(run.components, prompts, seeds, None, cfg.sample_steps, cfg.guidance_scale)
    return prompts, personalized, base


def held_out_users(examples, training_rows) -> tuple[dict, str | None]:
    """(eval.json's "users", a note): the evaluated users and pairs, and of them those with rows in the run's training
    data (None where it was not read). PPD evaluates on held-out users (methods §28: split train/test by user), so
    pairs of a training user are said in a note."""
    evaluated = sorted({x.user for x in examples})
    record = {"evaluated": len(evaluated), "trained_on": None, "pairs_of_trained_users": None}
    if training_rows is None:
        return record, None
    seen = {x.user for x in training_rows} & set(evaluated)
    pairs = sum(1 for x in examples if x.user in seen)
    record.update(trained_on=len(seen), pairs_of_trained_users=pairs)
    if not seen:
        return record, None
    names = ", ".join(repr(u) for u in sorted(seen)[:5]) + (" ..." if len(seen) > 5 else "")
    return record, (f"{len(seen)} of {len(evaluated)} evaluated users ({names}; {pairs} of {len(examples)} pairs) have "
                    "training rows: those pairs are held-out pairs of seen users, not held-out users (PPD splits "
                    "train/test by user)")


def image_rewards(reward_fn, images: torch.Tensor, prompts: list[str], whose: str,
                  users: list[str] | None = None) -> list[float | None]:
    """--reward-fn's scores of `images` (uint8 [N, 3, S, S], one per prompt): one finite number per image, None where
    it gave None / NaN / inf (no verdict: preflab.eval.winrate). users (ppd: each image's user id): passed as
    f(images, prompts, users=users) to a function that takes them (preflab.loops.ppd_eval.takes_users: a `users`
    parameter or **kwargs), so a reward can score each user's taste; any other function is called f(images,
    prompts). A function that raises, or that returns another count than N, is a ConfigError naming it; before,
    N - 1 scores were zipped with the other side's and the win rate was silently over the first N - 1 prompts (and
    a raise was a traceback after both pipelines had sampled)."""
    from preflab.eval.winrate import _finite
    from preflab.loops.ppd_eval import takes_users

    name = getattr(reward_fn, "__name__", type(reward_fn).__name__)
    given = {"users": list(users)} if users is not None and takes_users(reward_fn) else {}
    try:
        scores = reward_fn(images, prompts, **given)
        values = [_finite(v) for v in (scores.flatten().tolist() if isinstance(scores, torch.Tensor) else scores)]
    except Exception as err:  # the user's code: any exception it raises is its own verdict on these images
        raise ConfigError(f"--reward-fn {name} raised {type(err).__name__} on the {whose} pipeline's samples "
                          f"(images uint8 {list(images.shape)}, {len(prompts)} prompts): {err}. It is called as "
                          f"f(images, prompts{', users=users' if given else ''}) and returns one score per "
                          "image.") from err
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


def _refuse_unevaluated(loss_type: str, run_dir) -> None:
    """The refusal of a run `preflab eval --task diffusion` does not score (DIFFUSION_NOT_EVALUATED), with what to use
    instead (DIFFUSION_INSTEAD, for the run's folder: a checkpoint's is one level up)."""
    from preflab.eval.names import DIFFUSION_INSTEAD

    why = "; ".join(f"{k}: {v}" for k, v in DIFFUSION_NOT_EVALUATED.items())
    run = Path(run_dir).parent if is_diffusion_checkpoint(Path(run_dir)) else Path(run_dir)
    instead = DIFFUSION_INSTEAD.get(loss_type)
    raise ConfigError(f"preflab eval --task diffusion reads pairwise runs; {loss_type} runs are not supported ({why})"
                      + (f". Instead: {instead.replace('RUN', str(run))}." if instead else "."))


def is_diffusion_checkpoint(path: Path) -> bool:
    """A checkpoint-N folder of a diffusion run (preflab.models.run_config.is_checkpoint_folder, holding its trained
    parameters, not a pipeline): loaded over the run's base model."""
    from preflab.models.run_config import is_checkpoint_folder

    return (is_checkpoint_folder(path) and (path / "model.safetensors").is_file()
            and not (path / "model_index.json").is_file())


def run_base_model(run_dir: str, name: str) -> str:
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
    from preflab.eval.run import eval_columns, eval_data, eval_json_path, write_json
    from preflab.eval.winrate import load_callable
    from preflab.loops.ppd_eval import per_user_lines

    refuse_unread_options(args, "diffusion")
    if getattr(args, "no_reference", False):
        raise ConfigError("--no-reference with --task diffusion: the implicit-reward accuracy compares the pipeline "
                          "with a reference (default: the run's base model); remove --no-reference.")
    data = eval_data(args.data, getattr(args, "data_config", None), eval_columns(args))
    result = evaluate_diffusion_run(args.checkpoint, data,
                                    reference=args.reference,
                                    reward_fn=load_callable(args.reward_fn) if args.reward_fn else None,
                                    num_prompts=args.win_rate_prompts, confidence=args.confidence,
                                    batch_size=args.batch_size, split=args.split,
                                    user_embeddings=getattr(args, "user_embeddings", None))
    path = write_json(eval_json_path(args.checkpoint, args.out), result)
    print(format_summary({**result, "path": str(path)}, extra=("implicit_accuracy", "loss", "reward/policy",
                                                                "reward/reference", "preference_accuracy/personalized",
                                                                "preference_accuracy/base"),
                         more=per_user_lines(result.get("per_user") or {})))
    return 0
