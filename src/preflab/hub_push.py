"""push_to_hub: the trained model (and, by hub_strategy, checkpoints) uploaded to a Hugging Face Hub model repository
with huggingface_hub's HfApi, at the points transformers' Trainer uploads (init_hf_repo, _push_from_checkpoint,
push_to_hub), from the main process only.

    pusher = HubPusher.from_config(cfg)    # None without push_to_hub
    pusher.create_repo()                   # before the first step: a bad token or name fails before training
    pusher.push_checkpoint(path, step)     # after each checkpoint save, as hub_strategy says
    pusher.push_final(output_dir)          # after the final model, summary and card are written

The repository: hub_model_id, or output_dir's folder name (transformers' default), created with exist_ok (private
when hub_private_repo; an existing repository keeps its visibility). hub_revision: the branch every upload commits to
(created from main when missing). The token: hub_token, else huggingface_hub's own (HF_TOKEN, `hf auth login`).

hub_strategy (transformers' HubStrategy):
- end: only the final push (commit "End of training"): output_dir without checkpoint-* folders, files or folders
  starting with "_" or ".", and pickle files.
- every_save: also at each checkpoint, its model files (no optimizer, scheduler or RNG state) under
  last-checkpoint/ (commit "Training in progress, step N"). preflab's checkpoint weights are its own format (the
  trained parameters), not a from_pretrained folder, so they do not go to the repository's root as transformers'
  in-progress model does; the root gets the loadable final model at the end.
- checkpoint: also at each checkpoint the whole folder (optimizer state too: a run can resume from it) under
  last-checkpoint/ (commit "Training in progress, step N, checkpoint").
- all_checkpoints: the same under checkpoint-N/, one folder per save.

Uploads block (transformers' run in the background and skip a save while one is in flight unless hub_always_push):
every due save is uploaded before training goes on. A failed upload is a PreflabError naming the repository, the
local folder (kept: uploads only read) and the command that uploads it by hand.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from preflab.errors import ConfigError, PreflabError
from preflab.hub import failure_reason

HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt"]
# transformers' ignore_patterns ["_*", "checkpoint-*"], hidden files (a checkpoint being written is .tmp-checkpoint-*)
# and pickle files (preflab writes none; one a callback left there is not uploaded)
FINAL_IGNORE = ["_*", "checkpoint-*", ".*", "**/.*", *PICKLE_PATTERNS]
# a checkpoint's training state (preflab.checkpoint, preflab.sharded_checkpoint, preflab.deepspeed_checkpoint):
# left out by every_save, uploaded by checkpoint / all_checkpoints
TRAINING_STATE = ["optimizer*", "optimizer/*", "rng*", "global_step*", "global_step*/*", "zero_to_fp32.py", "latest"]


def hub_api():
    """huggingface_hub's HfApi (looked up at each call, so a test can replace huggingface_hub.HfApi)."""
    import huggingface_hub

    return huggingface_hub.HfApi()


def default_repo_name(output_dir) -> str:
    """transformers' default hub_model_id: the name of output_dir's folder."""
    return Path(output_dir).absolute().name


@dataclass
class HubPusher:
    repo_name: str                  # hub_model_id or output_dir's name; repo_id once the repository exists
    strategy: str = "every_save"
    private: bool | None = None
    token: str | None = None
    revision: str | None = None
    api: object = None
    repo_id: str | None = None
    after_training: str | None = None  # `preflab push`: the run's folder (a failure's advice is then not a training's)
    from_python: bool = False  # trainer.push_to_hub() after training: its advice names that call, not the CLI's flags

    @classmethod
    def from_config(cls, cfg, api=None) -> "HubPusher | None":
        if not getattr(cfg, "push_to_hub", False):
            return None
        if cfg.hub_strategy not in HUB_STRATEGIES:
            raise ConfigError(f"hub_strategy={cfg.hub_strategy!r}: use one of {', '.join(HUB_STRATEGIES)}.")
        return cls(repo_name=cfg.hub_model_id or default_repo_name(cfg.output_dir), strategy=cfg.hub_strategy,
                   private=cfg.hub_private_repo, token=cfg.hub_token, revision=cfg.hub_revision, api=api)

    def _api(self):
        if self.api is None:
            self.api = hub_api()
        return self.api

    def create_repo(self) -> str:
        """Create the model repository (exist_ok; private when asked) and hub_revision's branch; returns the
        repo_id (the user's namespace added to a bare name)."""
        api = self._api()
        try:
            url = api.create_repo(self.repo_name, token=self.token, private=self.private, exist_ok=True)
            self.repo_id = getattr(url, "repo_id", None) or self.repo_name
            if self.revision:
                api.create_branch(self.repo_id, branch=self.revision, token=self.token, exist_ok=True)
        except Exception as err:  # huggingface_hub's HTTP, auth and connection errors alike
            where = f"{self.repo_name!r}{f' (branch {self.revision!r})' if self.revision else ''}"
            if self.after_training is not None and self.from_python:  # trainer.push_to_hub() (user trial 27)
                raise PreflabError(
                    f"trainer.push_to_hub(): could not create the Hub repository {where}: {failure_reason(err)}. "
                    f"Nothing was uploaded; {self.after_training} is unchanged. Check the network (the Hub must be "
                    "reachable), the token (push_to_hub(token=...), hub_token, HF_TOKEN or `hf auth login`, with "
                    "write access) and hub_model_id, then call trainer.push_to_hub() again (or, from a shell, "
                    f"`preflab push {self.after_training} --repo-id NAME`).") from err
            if self.after_training is not None:  # `preflab push RUN`: nothing to say about training
                raise PreflabError(
                    f"preflab push: could not create the Hub repository {where}: {failure_reason(err)}. Nothing was "
                    f"uploaded; {self.after_training} is unchanged. Check the network (the Hub must be reachable), "
                    "the token (--token, HF_TOKEN or `hf auth login`, with write access) and --repo-id, then run "
                    "the same `preflab push` again.") from err
            raise PreflabError(
                f"push_to_hub: could not create the Hub repository {where}: {failure_reason(err)}. Nothing was "
                "trained yet. Check the token (hub_token, HF_TOKEN or `hf auth login`, with write access) and "
                "hub_model_id, or set push_to_hub: false and upload output_dir afterwards with `hf upload`.") from err
        return self.repo_id

    def _upload(self, folder: Path, message: str, path_in_repo: str | None = None, ignore=None) -> None:
        if self.repo_id is None:
            self.create_repo()
        try:
            self._api().upload_folder(repo_id=self.repo_id, folder_path=str(folder), path_in_repo=path_in_repo,
                                      commit_message=message, token=self.token, revision=self.revision,
                                      ignore_patterns=ignore)
        except Exception as err:
            where = f"{self.repo_id}/{path_in_repo}" if path_in_repo else self.repo_id
            by_hand = (f"hf upload {self.repo_id} {folder}" + (f" {path_in_repo}" if path_in_repo else "") +
                       (f" --revision {self.revision}" if self.revision else "") +
                       (f" --exclude {' '.join(repr(p) for p in ignore)}" if ignore else ""))
            raise PreflabError(
                f"push_to_hub: uploading {folder} to the Hub repository {where} failed: {failure_reason(err)}. The "
                f"local files are kept in {folder}. Check the token's write access and the network, then upload them "
                f"with `{by_hand}` (or `preflab push {folder.parent if path_in_repo else folder} --repo-id "
                f"{self.repo_id}`).") from err

    def push_checkpoint(self, checkpoint: Path | None, step: int) -> bool:
        """After checkpoint-<step> is written: upload it as hub_strategy says (end: nothing). True when uploaded."""
        if checkpoint is None or self.strategy == "end":
            return False
        message = f"Training in progress, step {step}"
        if self.strategy == "every_save":
            from preflab.checkpoint import MARKER

            self._upload(Path(checkpoint), message, "last-checkpoint",  # (its COMPLETE marker lists the files left out)
                         ignore=[*TRAINING_STATE, MARKER, *PICKLE_PATTERNS])
        else:
            where = "last-checkpoint" if self.strategy == "checkpoint" else Path(checkpoint).name
            self._upload(Path(checkpoint), message + ", checkpoint", where, ignore=PICKLE_PATTERNS)
        return True

    def push_final(self, output_dir, message: str = "End of training") -> None:
        """The final model folder (weights, config, tokenizer, model card, the run's config and metrics) without its
        checkpoints."""
        self._upload(Path(output_dir), message, ignore=FINAL_IGNORE)


def _saved_options(run: Path) -> dict:
    """The run's config.yaml (its hub options), {} when it has none."""
    import yaml

    path = run / "config.yaml"
    saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    return saved if isinstance(saved, dict) else {}


def holds_a_model(run: Path) -> bool:
    """A saved final model: safetensors weights in the folder or a component subfolder (a diffusion pipeline's unet),
    not counting checkpoint-* folders (preflab's training state)."""
    return any(run.glob("*.safetensors")) or any(p for p in run.glob("*/*.safetensors")
                                                 if not p.parent.name.startswith(("checkpoint-", ".", "_")))


def push_run(run, repo_id: str | None = None, private: bool | None = None, revision: str | None = None,
             token: str | None = None, api=None, message: str = "Upload preflab run", from_python: bool = False) -> str:
    """`preflab push RUN`: upload a finished run's output_dir as push_to_hub's final push does (the same files,
    commit "Upload preflab run"), to repo_id, else the run's hub_model_id, else its folder name. Returns the
    repo_id. from_python: called by trainer.push_to_hub(), whose failures are said in that call's terms."""
    from preflab.checkpoint import MARKER
    from preflab.final_save import check_final_model_complete

    run = Path(run)
    if not run.is_dir():
        raise PreflabError(f"preflab push: {run} is not a folder; give a run's output_dir.")
    if (run / MARKER).is_file():
        raise PreflabError(f"preflab push: {run} is a checkpoint (preflab's training state: the trained parameters "
                           "and optimizer state, not a from_pretrained folder). Give the run's output_dir, which holds "
                           "the final model.")
    check_final_model_complete(run)  # a model save interrupted: its files are not one save's
    if not holds_a_model(run):
        raise PreflabError(f"preflab push: {run} holds no saved model (no *.safetensors): the run has not "
                           "finished (its checkpoint-N folders are preflab's training state, not a model). Give "
                           "the output_dir of a finished run.")
    saved = _saved_options(run)
    name = repo_id or saved.get("hub_model_id") or default_repo_name(run)
    pusher = HubPusher(repo_name=name, private=private if private is not None else saved.get("hub_private_repo"),
                       token=token, revision=revision if revision is not None else saved.get("hub_revision"),
                       api=api, after_training=str(run), from_python=from_python)
    pusher.create_repo()
    pusher.push_final(run, message=message)
    return pusher.repo_id


def register(sub) -> None:
    p = sub.add_parser("push", help="upload a finished run's model folder to the Hugging Face Hub",
                       description="Upload a finished run's output_dir (weights, config, tokenizer, model card, the "
                                   "run's config.yaml and metrics; no checkpoint-* folders, no pickle files) to a Hub "
                                   "model repository, as push_to_hub: true does at the end of training.")
    p.add_argument("run", help="the run's output_dir")
    p.add_argument("--repo-id", help="the repository (default: the run's hub_model_id, else its folder name)")
    p.add_argument("--private", action="store_true", default=None, help="create the repository private")
    p.add_argument("--revision", help="the branch to commit to (created from main when missing)")
    p.add_argument("--token", help="the token (default: HF_TOKEN or `hf auth login`)")
    p.set_defaults(func=_run_push)


def _run_push(args) -> int:
    repo = push_run(args.run, args.repo_id, args.private, args.revision, args.token)
    print(f"preflab: pushed {args.run} to https://huggingface.co/{repo}")
    return 0
