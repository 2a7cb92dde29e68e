"""`preflab sample RUN --prompt TEXT [--prompts FILE] [...]`: images of a finished diffusion run, or of one of its
checkpoint-N folders (its trained parameters at step N on the run's base pipeline, read as the trainer built them:
preflab.loops.diffusion_checkpoint; a ppd checkpoint with the user table its trainer_state.json describes, as
`preflab eval` reads it).

Every row of the output is one model, every column one (prompt, seed): columns are the prompts in order, repeated
--num-images-per-prompt times, and column c has seed sample_seeds(seed, columns)[c] = seed * 100003 + c (seed: --seed,
else the run's), so image 0 of every prompt has the seed samples.png, `preflab eval --reward-fn` and PPDSampler give
that prompt position. Sampling is the pipeline's own (preflab.diffusion.pipeline.sample_images: DDIM, --steps /
--guidance-scale, else the run's sample_steps / guidance_scale).

Rows: a non-ppd run has one row, its trained pipeline. A ppd run (PPD, Dang et al. 2025, methods §28) has, in order,
the base model (--base: the user branch off, PPD's reference), one row per --user ID (subset 0 of the user's rows in
the saved table, else --user-embeddings FILE, else the run's user_embeddings: PPDSampler's rule), and one row per
gamma of --users A B --gamma G[,G2..] (e = (1 - gamma) e_A + gamma e_B). With --base and the run's first users this
is exactly the samples.png the run wrote at the end of training (preflab.loops.diffusion.DiffusionRun.write_samples).

Written to --out (default RUN/samples, a checkpoint's beside it: default_output_dir; a folder that holds files is
refused unless --overwrite): one PNG per image, grid.png (preflab.diffusion.pipeline.save_grid: one row per model)
and samples.json (per image: file, row, column, prompt, user, other_user, gamma, seed; and the steps, guidance scale
and rows).
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from preflab.errors import ConfigError

PPD_ONLY = ("--user", "--users", "--gamma", "--base", "--user-embeddings")


@dataclass(frozen=True)
class SampleRow:
    """One row of the grid: the base model (user None; ppd's branch off), the run's pipeline (user None, not ppd),
    a user, or the interpolation (1 - gamma) e_user + gamma e_other_user."""

    label: str
    user: str | None = None
    other_user: str | None = None
    gamma: float | None = None


def register(sub) -> None:
    p = sub.add_parser("sample", help="images of a finished diffusion run or its checkpoint-N (ppd: per user, or "
                                      "users interpolated)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Sample a finished task: diffusion run (or its checkpoint-N): PNGs, grid.png and "
                                   "samples.json.\n"
                                   "Example: preflab sample runs/ppd --prompt 'a red circle' --base --user alice "
                                   "--users alice bob --gamma 0.25,0.75")
    p.add_argument("run", help="a finished diffusion run's output_dir (the pipeline it saved), or one of its "
                               "checkpoint-N folders")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable; before the --prompts rows)")
    p.add_argument("--prompts", metavar="FILE", help=".jsonl with a 'prompt' field per line, or .txt, one per line")
    p.add_argument("--num-images-per-prompt", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    p.add_argument("--seed", type=int, help="column c is seeded seed * 100003 + c (default: the run's seed)")
    p.add_argument("--steps", type=int, help="DDIM steps (default: the run's sample_steps)")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (default: the run's guidance_scale)")
    p.add_argument("--user", action="append", metavar="ID", help="ppd: one row of this user's samples (repeatable)")
    p.add_argument("--users", nargs=2, metavar=("A", "B"), help="ppd: interpolate from user A to B (with --gamma)")
    p.add_argument("--gamma", help="ppd: comma-separated gammas in [0, 1] for --users (0: A, 1: B), one row each")
    p.add_argument("--base", action="store_true", help="ppd: a first row of the base model (the user branch off)")
    p.add_argument("--user-embeddings", metavar="FILE", help="ppd: safetensors of users the saved table lacks "
                                                                 "(default: the run's user_embeddings; a checkpoint "
                                                                 "of a run on precomputed embeddings: the file it "
                                                                 "trained with)")
    p.add_argument("--out", help="output folder (default: RUN/samples; a checkpoint-N: samples-checkpoint-N beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace the samples a former run left in --out")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available, else cpu)")
    p.set_defaults(func=sample_command)


def parse_gammas(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0]; a value that is no number or outside [0, 1] is refused, naming it."""
    gammas = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"--gamma {text}: {part.strip()!r} is not a number; give gammas in [0, 1] separated by "
                              "commas (--gamma 0,0.5,1).") from None
        if not (math.isfinite(value) and 0 <= value <= 1):
            raise ConfigError(f"--gamma {text}: {value:g} is not in [0, 1] (e = (1 - gamma) e_A + gamma e_B "
                              "interpolates from A at 0 to B at 1).")
        gammas.append(value)
    return gammas


def planned_rows(args, ppd: bool, loss_type) -> list[SampleRow]:
    """The grid's rows from the command line (module docstring). The ppd options on another run, --gamma without
    --users (or the reverse) and a ppd run given no row are refused before any model loads."""
    given = [flag for flag, value in (("--user", args.user), ("--users", args.users), ("--gamma", args.gamma),
                                      ("--base", args.base), ("--user-embeddings", args.user_embeddings)) if value]
    if not ppd:
        if given:
            raise ConfigError(f"{' / '.join(given)}: {args.run} is a {loss_type} run, which has no user branch and no "
                              f"users; {', '.join(PPD_ONLY)} sample a loss_type: ppd run. Remove them.")
        return [SampleRow("trained")]
    if (args.users is None) != (args.gamma is None):
        raise ConfigError("--users A B and --gamma G[,G2..] go together: the rows are e = (1 - gamma) e_A + gamma e_B "
                          "for each gamma; give both or neither.")
    rows = [SampleRow("base")] if args.base else []
    rows += [SampleRow(user, user) for user in args.user or []]
    if args.users:
        a, b = args.users
        rows += [SampleRow(f"{a}->{b} gamma={g:g}", a, b, g) for g in parse_gammas(args.gamma)]
    if not rows:
        raise ConfigError(f"{args.run} is a ppd run: say whose samples to draw, --user ID (repeatable), --users A B "
                          "--gamma G[,G2..] and/or --base (the base model, the user branch off).")
    return rows


def sampled_run(run: str) -> dict:
    """The saved config of `run` (a checkpoint's: its run's, one level up) when it is a diffusion run's final
    directory or one of its checkpoint-N folders with model.safetensors; else a ConfigError: another task (naming the
    command for it), a checkpoint-N without its weights, a folder without the pipeline training writes at its end."""
    from preflab.eval.run_files import eval_task_of_run
    from preflab.models.run_config import is_checkpoint_folder, require_run_config

    saved = require_run_config(run, "preflab sample")[1]
    task = saved.get("task")
    if task != "diffusion":
        fitting = eval_task_of_run(saved)
        how = ("" if fitting is None else f" Its command is `preflab eval {run}"
               + ("" if fitting == "dpo" else f" --task {fitting}") + " --data ...` (with --reward-fn it generates "
               "from the model for a win rate).")
        raise ConfigError(f"{run} is a task: {task} run; preflab sample draws images from task: diffusion runs.{how}")
    if (Path(run) / "model_index.json").is_file():
        return saved
    if is_checkpoint_folder(run):
        if (Path(run) / "model.safetensors").is_file():  # its trained parameters, read on the run's base model
            return saved
        raise ConfigError(f"{run} is a checkpoint folder without model.safetensors (still being written, or its "
                          "weights sharded across processes by FSDP / DeepSpeed): preflab sample reads a "
                          "checkpoint's whole trained parameters. Sample another checkpoint-N or the run's final "
                          f"directory ({Path(run).parent}).")
    raise ConfigError(f"{run} holds no pipeline (model_index.json), which a diffusion run writes when training ends: "
                      "sample a finished run's output_dir.")


class PipelineSampler:
    """A finished non-ppd diffusion run's pipeline, sampled as its samples.png's trained row was; or one of its
    checkpoint-N folders: the trained parameters at step N on the run's base pipeline
    (preflab.loops.diffusion_checkpoint; LoRA adapters unfused)."""

    def __init__(self, run_dir: str, saved: dict, device: str | None = None):
        from preflab.config import config_with_overrides
        from preflab.diffusion.pipeline import components_of, load_pipeline
        from preflab.loops.diffusion_eval import is_diffusion_checkpoint

        self.cfg = config_with_overrides(saved, preflab_overrides=[])
        if is_diffusion_checkpoint(Path(run_dir)):
            from preflab.loops.diffusion_checkpoint import checkpoint_components, checkpoint_denoiser

            self.components = checkpoint_components(run_dir, self.cfg, device)
            self.denoiser = checkpoint_denoiser(run_dir, self.cfg, self.components).unet
            return
        self.components = components_of(load_pipeline(str(run_dir), self.cfg.allow_pickle, seed=self.cfg.seed))
        self.components.flux_guidance, self.components.resolution = self.cfg.flux_guidance, self.cfg.resolution
        self.denoiser = self.components.denoiser.float()
        if device is not None:
            self.components.pipeline.to(device)

    def sample(self, prompts: list[str], user: None, seeds: list[int], other_user: None = None, gamma: None = None,
               num_steps: int = 20, guidance_scale: float = 1.0):
        """uint8 [N, 3, S, S]: PPDSampler.sample's signature; a pipeline without users takes none (planned_rows)."""
        from preflab.diffusion.pipeline import sample_images

        return sample_images(self.components, self.denoiser.eval(), prompts, seeds, num_steps, guidance_scale)


def load_sampler(run: str, saved: dict, user_embeddings: str | None, device: str | None):
    """The sampler of a finished diffusion run or checkpoint (sampled_run): PPDSampler for ppd, else
    PipelineSampler. The one place `preflab sample` loads a run."""
    if saved.get("loss_type") == "ppd":
        from preflab.loops.ppd_sample import PPDSampler

        return PPDSampler(run, user_embeddings=user_embeddings, device=device)
    return PipelineSampler(run, saved, device)


def default_output_dir(run: str) -> Path:
    """RUN/samples; for a checkpoint-N folder RUN/../samples-checkpoint-N, beside it: a checkpoint folder holds
    exactly what training wrote (its files are checked against their recorded sizes and sha256, and save_total_limit
    deletes whole checkpoint folders, samples and all)."""
    from preflab.models.run_config import is_checkpoint_folder

    path = Path(run)
    return path.parent / f"samples-{path.name}" if is_checkpoint_folder(path) else path / "samples"


def output_dir(run: str, out: str | None, overwrite: bool) -> Path:
    """--out, else default_output_dir, checked before anything loads: a file, or a folder that holds files without
    --overwrite, is refused (nothing is written or removed here: clear_former_samples)."""
    folder = Path(out) if out else default_output_dir(run)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file; give a folder.")
    held = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if held and not overwrite:
        raise ConfigError(f"{folder} already holds {len(held)} file(s) ({', '.join(held[:3])}); pass --overwrite to "
                          "replace former samples, or --out another folder.")
    return folder


def clear_former_samples(folder: Path) -> None:
    """Create `folder`, less the files a former `preflab sample` wrote there (its samples.json's images, grid.png,
    samples.json); any other file is kept."""
    record = folder / "samples.json"
    former = json.loads(record.read_text()).get("samples", []) if record.is_file() else []
    for name in [s.get("file") for s in former if isinstance(s, dict)] + ["grid.png", "samples.json"]:
        if isinstance(name, str) and (folder / Path(name).name).is_file():
            (folder / Path(name).name).unlink()
    folder.mkdir(parents=True, exist_ok=True)


def check_users(sampler, rows: list[SampleRow], run: str) -> None:
    """Every user of `rows` has an embedding (the saved table, else the user_embeddings file: PPDSampler's rule);
    one that has none is refused, naming it and the users there are; gammas are checked by PPDSampler.embedding."""
    wanted = [u for row in rows for u in (row.user, row.other_user) if u is not None]
    table = sampler.table.including(wanted)
    missing = [u for u in dict.fromkeys(wanted) if u not in table.user_rows]
    if missing:
        known = sorted(table.user_rows)
        raise ConfigError(f"user(s) {', '.join(map(repr, missing))} of {run} have no embedding in {table.source} "
                          f"(its users: {', '.join(map(repr, known[:8]))}{' ...' if len(known) > 8 else ''}). "
                          + _remedy(table.file, sampler.cfg.user_embeddings))
    for row in rows:
        if row.user is not None:
            sampler.embedding(row.user, row.other_user, row.gamma)


def write_samples(folder: Path, rows: list[SampleRow], images: list, prompts: list[str], seeds: list[int],
                  header: dict) -> Path:
    """One PNG per image (sample-r<row>-c<column>.png), grid.png and samples.json in `folder`; returns samples.json."""
    from preflab.diffusion.pipeline import save_grid
    from preflab.diffusion.shapes import save_png

    samples = []
    for r, (row, row_images) in enumerate(zip(rows, images)):
        for c, image in enumerate(row_images):
            name = f"sample-r{r:02d}-c{c:03d}.png"
            save_png(image, folder / name)
            samples.append({"file": name, "row": r, "column": c, "prompt": prompts[c], "seed": seeds[c],
                            **{k: v for k, v in asdict(row).items() if k != "label"}})
    save_grid(images, folder / "grid.png")
    record = folder / "samples.json"
    record.write_text(json.dumps({**header, "rows": [row.label for row in rows], "grid": "grid.png",
                                  "samples": samples}, indent=1))
    return record


def _remedy(file: str | None, configured: str | None) -> str:
    if file is not None:
        return f"Add them to {file}, or pass --user-embeddings FILE holding them."
    if not configured:
        return ("The run learned one embedding per training user (no user_embeddings in its config.yaml): only its "
                "training users can be sampled.")
    return f"The run's user_embeddings {configured} is not a file here: pass --user-embeddings FILE holding them."


def sample_command(args) -> int:
    """`preflab sample` (module docstring)."""
    from preflab.loops.diffusion import sample_seeds
    from preflab.loops.sample_prompts import sampled_prompts

    saved = sampled_run(args.run)
    rows = planned_rows(args, saved.get("loss_type") == "ppd", saved.get("loss_type"))
    prompts = sampled_prompts(args.prompt, args.prompts)
    if args.num_images_per_prompt < 1:
        raise ConfigError(f"--num-images-per-prompt {args.num_images_per_prompt}: give 1 or more.")
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps}: sampling needs 1 or more DDIM steps.")
    folder = output_dir(args.run, args.out, args.overwrite)
    device = args.device or ("cuda" if _cuda() else "cpu")
    sampler = load_sampler(args.run, saved, args.user_embeddings, device)
    cfg = sampler.cfg
    steps = cfg.sample_steps if args.steps is None else args.steps
    if steps < 1:
        raise ConfigError(f"{args.run} was trained with sample_steps {steps} (no samples); give --steps N.")
    guidance = cfg.guidance_scale if args.guidance_scale is None else args.guidance_scale
    if saved.get("loss_type") == "ppd":
        check_users(sampler, rows, args.run)  # before the first image is drawn
    columns = prompts * args.num_images_per_prompt
    seed = cfg.seed if args.seed is None else args.seed
    seeds = sample_seeds(seed, len(columns))
    images = [sampler.sample(columns, row.user, seeds=seeds, other_user=row.other_user, gamma=row.gamma,
                             num_steps=steps, guidance_scale=guidance) for row in rows]
    header = {"run": str(args.run), "loss_type": cfg.loss_type, "steps": steps, "guidance_scale": guidance,
              "seed": seed, "num_images_per_prompt": args.num_images_per_prompt}
    if cfg.loss_type == "self_npo":
        header["note"] = ("a self_npo run's pipeline is Self-NPO's negative model: use it in the negative branch of "
                          "classifier-free guidance (preflab.diffusion.guidance.npo_guidance)")
        print(f"preflab sample: note: {header['note']}.")
    clear_former_samples(folder)
    record = write_samples(folder, rows, images, columns, seeds, header)
    print(f"preflab sample: wrote {len(rows) * len(columns)} image(s) ({len(rows)} row(s) x {len(columns)}), "
          f"{folder / 'grid.png'} and {record}")
    return 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
