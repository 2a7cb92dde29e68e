"""Reward-model backbones with a D-output head read at the last real token, and their persistence.

    model = build_reward_model("builtin:tiny-llama", num_outputs=1, tokenizer=tok)   # a BT reward model
    out = sequence_outputs(model, input_ids, attention_mask)                          # [N, D]

Where transformers has `AutoModelForSequenceClassification` for the architecture (Llama, Qwen2, GPT-2, ... ) the
model *is* that class with `num_labels = D`, so the saved directory loads with plain
`AutoModelForSequenceClassification.from_pretrained(dir)` and gives the same outputs (its pooling reads the
rightmost token that is not `pad_token_id`; preflab right-pads, so that is the last real token, the appended eos,
when the pad token differs from eos; with pad = eos it is the token before the eos, in training and after reloading
alike). Otherwise `LastTokenRewardModel` puts a bias-free linear head on the
backbone's last hidden state at the last position of the attention mask; it saves the backbone with
`save_pretrained` plus `reward_head.safetensors`.

What the D outputs mean is the head's business (a BT reward, GPM embedding, attribute ratings); the head's
description is stored in `config.preflab_reward` (see `REWARD_CONFIG_KEY`), which transformers keeps in config.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from preflab.errors import ConfigError
from preflab.models.load import REWARD_CONFIG_KEY  # noqa: F401  (a public name of this module; the loaders' check)
from preflab.models.load import REWARD_FALLBACK_FILE as FALLBACK_FILE

HEAD_FILE = "reward_head.safetensors"


class LastTokenRewardModel(nn.Module):
    """A transformers backbone (`AutoModel`) plus a bias-free linear head on the last real token's hidden state."""

    def __init__(self, backbone: nn.Module, num_outputs: int):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.score = nn.Linear(backbone.config.get_text_config().hidden_size, num_outputs, bias=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None, last_index: Tensor | None = None) -> Tensor:
        """attention_mask None (right-padded rows of a causal decoder, see sequence_outputs): last_index [N], each
        row's last real token, must be given."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [N, T, H]
        last = last_index if attention_mask is None else last_real_token(attention_mask)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.score(pooled.to(self.score.weight.dtype))

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def save_pretrained(self, path, safe_serialization: bool = True, **kwargs) -> None:
        from safetensors.torch import save_file

        self.backbone.save_pretrained(path, safe_serialization=True, **kwargs)
        save_file({"weight": self.score.weight.detach().contiguous().cpu()}, str(Path(path) / HEAD_FILE))
        Path(path, FALLBACK_FILE).write_text(json.dumps({"num_outputs": self.score.out_features}))

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "LastTokenRewardModel":
        from safetensors.torch import load_file
        from transformers import AutoModel

        meta = json.loads(Path(path, FALLBACK_FILE).read_text())
        kwargs = {**kwargs, "use_safetensors": True}
        model = cls(AutoModel.from_pretrained(path, **kwargs), meta["num_outputs"])
        model.score.weight.data.copy_(load_file(str(Path(path) / HEAD_FILE))["weight"])
        return model


def last_real_token(attention_mask: Tensor) -> Tensor:
    """[N] index of the last 1 in each row of the padding mask (LastTokenRewardModel's pooling position)."""
    return attention_mask.long().cumsum(-1).argmax(-1)


def reward_backbone(model: nn.Module) -> nn.Module | None:
    """The decoder under a reward model's head (inside DDP / PEFT wrappers): LastTokenRewardModel's backbone, a
    transformers sequence-classification model's base model; None when there is none to be found."""
    from preflab.models.attention import unwrap

    base = unwrap(model)
    if isinstance(base, LastTokenRewardModel):
        return base.backbone
    inner = getattr(base, "base_model", None)
    return inner if isinstance(inner, nn.Module) and inner is not base else None


def sequence_outputs(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None,
                     last_index: Tensor | None = None) -> Tensor:
    """[N, D] head outputs at each row's last real token (right-padded rows), in float32 or float64.

    attention_mask None: the rows are sent without a mask, exact for right-padded rows of a causal decoder (a real
    token never attends to the later pads; check with right_padding_needs_no_mask(reward_backbone(model))), and
    transformers builds no padding mask from it (each 2-D mask costs device reads inside the model's forward). A
    sequence-classification model then pools as with the mask (the rightmost token that is not pad_token_id, found
    from input_ids on the device); LastTokenRewardModel takes `last_index` [N] (last_real_token of the host's mask).
    """
    if isinstance(model, LastTokenRewardModel) or isinstance(getattr(model, "module", None), LastTokenRewardModel):
        out = model(input_ids, attention_mask) if attention_mask is not None else model(input_ids, None, last_index)
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return out if out.dtype == torch.float64 else out.float()


def reward_model_from_config(config, num_outputs: int, pad_token_id: int | None, seed: int = 0,
                             last_token_head: bool = False) -> nn.Module:
    """A randomly initialised reward model for `config` (tests and builtin tiny models)."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    config = type(config).from_dict(config.to_dict())
    config.num_labels, config.pad_token_id = num_outputs, pad_token_id
    torch.manual_seed(seed)
    if not last_token_head:
        try:
            return AutoModelForSequenceClassification.from_config(config).float()
        except ValueError:  # no sequence-classification class for this architecture
            pass
    return LastTokenRewardModel(AutoModel.from_config(config), num_outputs).float()


def build_reward_model(name: str, num_outputs: int, tokenizer, *, dtype: str = "float32",
                       trust_remote_code: bool = False, allow_pickle: bool = False, seed: int = 0,
                       init_kwargs: dict | None = None) -> nn.Module:
    """A reward model with a fresh D-output head from a builtin name, hub name or local directory.

    A directory saved by preflab (or any sequence-classification checkpoint with D labels) keeps its head.
    dtype: the weights' dtype (`load_dtype`; "auto": the checkpoint's); init_kwargs: further from_pretrained
    arguments (`model_init_kwargs`, e.g. revision, attn_implementation; a `dtype` there wins).
    """
    from preflab.models.load import BUILTIN, _init_kwargs, check_weights_safe

    if not name:
        raise ConfigError("model_name_or_path is empty; give a hub name, a local directory or builtin:tiny-llama.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if name in BUILTIN:
        from preflab.models.tiny import tiny_causal_lm

        model = reward_model_from_config(tiny_causal_lm(tokenizer, arch=BUILTIN[name], seed=seed).config,
                                         num_outputs, pad, seed)
        weights = _init_kwargs(init_kwargs, dtype)["dtype"]
        return model if weights in ("auto", torch.float32) else model.to(weights)
    check_weights_safe(name, allow_pickle)
    kwargs = {**_init_kwargs(init_kwargs, dtype), "trust_remote_code": trust_remote_code,
              "use_safetensors": None if allow_pickle else True}
    if Path(name, FALLBACK_FILE).is_file():
        saved = json.loads(Path(name, FALLBACK_FILE).read_text())["num_outputs"]
        if saved == num_outputs:
            return LastTokenRewardModel.from_pretrained(name, **kwargs)
        from transformers import AutoModel

        _say_fresh_head(name, saved, num_outputs)
        backbone = AutoModel.from_pretrained(name, **{**kwargs, "use_safetensors": True})
        torch.manual_seed(seed)
        return LastTokenRewardModel(backbone, num_outputs)
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code,
                                        **({"revision": kwargs["revision"]} if "revision" in kwargs else {}))
    if any(str(a).endswith("ForSequenceClassification") for a in (config.architectures or [])) \
            and config.num_labels != num_outputs:  # e.g. a GPM, attribute or 2-label classifier -> a BT head
        _say_fresh_head(name, config.num_labels, num_outputs)
        kwargs["ignore_mismatched_sizes"] = True
    config.num_labels, config.pad_token_id = num_outputs, pad
    torch.manual_seed(seed)  # a head the checkpoint lacks (a causal LM's) starts from `seed`, as TRL's set_seed
    try:
        return AutoModelForSequenceClassification.from_pretrained(name, config=config, **kwargs)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
    backbone = AutoModel.from_pretrained(name, **kwargs)
    torch.manual_seed(seed)
    return LastTokenRewardModel(backbone, num_outputs)


def _say_fresh_head(name: str, saved: int, wanted: int) -> None:
    print(f"preflab: note: {name} has a {saved}-output head and this run's head has {wanted} output(s): the backbone "
          "is kept and the head is initialised afresh.", flush=True)


def load_reward_model(path: str, allow_pickle: bool = False, trust_remote_code: bool = False) -> nn.Module:
    """A reward model saved by preflab (or any sequence-classification checkpoint), head and all, in eval mode;
    also a mid-run `checkpoint-<step>` of a `task: reward` run (see `load_reward_checkpoint`)."""
    from preflab.models.load import check_weights_safe

    check_weights_safe(path, allow_pickle)
    _refuse_other_run(path)
    if is_training_checkpoint(path):
        return load_reward_checkpoint(path, trust_remote_code).eval()
    if Path(path, FALLBACK_FILE).is_file():
        return LastTokenRewardModel.from_pretrained(path).eval()
    _check_holds_a_model(path)
    _refuse_tool_reward_model(path)
    from transformers import AutoModelForSequenceClassification

    model, info = AutoModelForSequenceClassification.from_pretrained(
        path, trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True,
        output_loading_info=True)
    untrained = sorted(k for k in info.get("missing_keys", ()) if k.split(".")[0] in ("score", "classifier"))
    if untrained:  # a policy (causal LM) or base model: its head would be random and every score noise
        kinds = ", ".join(getattr(model.config, "architectures", None) or ["?"])
        raise ConfigError(f"{path} has no trained reward head ({untrained[0]} is not in its weights; it is a "
                          f"{kinds} checkpoint), so its scores would come from a random head. Give a reward model "
                          "directory: a `task: reward` run's output_dir, or a sequence-classification checkpoint.")
    return model.eval()


def _check_holds_a_model(path) -> None:
    """A local directory without config.json is not a model: an em_mixture run (K component models), or another
    folder; a ConfigError saying what to give (transformers would end in a ValueError traceback)."""
    path = Path(path)
    if not path.is_dir() or (path / "config.json").is_file():
        return
    if (path / "mixture.json").is_file():
        components = json.loads((path / "mixture.json").read_text()).get("components") or []
        where = f" (e.g. {path / components[0]})" if components else ""
        raise ConfigError(f"{path} is a MaxMin em_mixture run: K reward models, one per user cluster, not one model. "
                          f"Give one component folder{where}; as an online judge use `maxmin:{path}` (or "
                          f"`maxmin_pointwise:{path}`); in Python preflab.reward_models.maxmin_train."
                          "load_reward_mixture.")
    inside = sorted(str(p) for p in path.iterdir() if (p / "config.json").is_file())
    raise ConfigError(f"{path} holds no model (no config.json)" + (f"; these folders in it do: {inside[:4]}"
                      if inside else "") + "; give a reward model directory: a `task: reward` run's output_dir, "
                      "its checkpoint-<step>, or a sequence-classification checkpoint.")


def _refuse_other_run(path) -> None:
    """The output of a policy, VLM or diffusion run (its own config.yaml's task, preflab.eval.run_files.run_task) is
    refused before transformers loads it: as a sequence classifier it printed its missing-key lists (the score head)
    before the refusal of a random head. A model without a run's config of its own (a reward model saved inside
    another run's folder, a hub checkpoint) and a recipe's folder are left to the checks that follow."""
    from preflab.eval.run_files import EVAL_TASKS, run_task

    task = run_task(path)
    if task is not None and task != "reward" and any(task in tasks for tasks in EVAL_TASKS.values()):
        raise ConfigError(f"{path} is a task: {task} run, not a reward model; give a reward model directory: a "
                          "`task: reward` run's output_dir, its checkpoint-<step>, or a sequence-classification "
                          "checkpoint.")


def _refuse_tool_reward_model(path) -> None:
    """A Themis run's model (a causal LM and value_head.safetensors, config `preflab_reward: {head: themis}`) scores
    through its tool-calling inference loop, not as a sequence classifier: loaded as one it read as "no trained
    reward head ... a random head", though its value head is trained. A ConfigError naming what scores it."""
    config = Path(path) / "config.json"
    info = json.loads(config.read_text()).get(REWARD_CONFIG_KEY) if config.is_file() else None
    if isinstance(info, dict) and info.get("head") == "themis":
        raise ConfigError(f"{path} is a Themis tool-augmented reward model (a causal LM with a value head, "
                          "value_head.safetensors): it scores by generating its tool calls and rationale, which "
                          "pairwise eval and online judges do not run. Load it with preflab.reward_models.themis."
                          "ThemisModel.from_pretrained and score with score_with_tools (the Themis run's summary.json, "
                          "beside with_traces/ and without_traces/, holds their held-out pairwise accuracy).")


def is_training_checkpoint(path) -> bool:
    """A `checkpoint-<step>` folder: the trained parameters + trainer_state.json, no config.json."""
    path = Path(path)
    return (not (path / "config.json").is_file() and (path / "model.safetensors").is_file()
            and (path / "trainer_state.json").is_file())


def load_reward_checkpoint(path, trust_remote_code: bool = False) -> nn.Module:
    """The reward model of a mid-run checkpoint: the base model of the run's saved config with a head of the
    checkpoint's width, the checkpoint's parameters loaded over it. The head description is the finished run's
    (config.json beside the checkpoint); without one a 1-output head is BT and a wider one is refused."""
    from safetensors.torch import load_file

    from preflab.eval.run_files import tokenizer_near
    from preflab.models.run_config import run_config, run_seed

    path = Path(path)
    cfg = run_config(path)
    base = cfg.get("model_name_or_path")
    if cfg.get("task") != "reward" or not base:
        raise ConfigError(f"{path} is a training checkpoint without a saved task: reward config naming its base "
                          "model; evaluate the final run directory.")
    weights = load_file(str(path / "model.safetensors"))
    if cfg.get("use_peft"):
        weights = {k.replace(".modules_to_save.default.", "."): v for k, v in weights.items()}  # PEFT's head copy
    head = [v for k, v in weights.items() if k.split(".")[-2:] == ["score", "weight"]]
    if len(head) != 1:
        raise ConfigError(f"{path}/model.safetensors has no single score.weight (the reward head); evaluate the final "
                          "run directory.")
    num_outputs = head[0].shape[0]
    finished = path.parent / "config.json"
    info = json.loads(finished.read_text()).get(REWARD_CONFIG_KEY) if finished.is_file() else None
    if info is None and num_outputs == 1 and cfg.get("reward_head", "bt") == "bt":  # a run killed before its end
        info = _bt_info_of_run(cfg)
    if info is None and num_outputs != 1:
        raise ConfigError(f"{path} has a {num_outputs}-output head and the run has no config.json saying what it "
                          "is (GPM, attributes); evaluate the final run directory.")
    tokenizer = tokenizer_near(path, str(base), trust_remote_code)
    model = build_reward_model(str(base), num_outputs, tokenizer, dtype=cfg.get("load_dtype") or "float32",
                               trust_remote_code=trust_remote_code, seed=run_seed(cfg),
                               init_kwargs=cfg.get("model_init_kwargs"))
    _check_trained_architecture(path, model, base)
    if cfg.get("use_peft"):  # the checkpoint holds the adapters and the head: merged over the base, as at save
        return _merged_lora_checkpoint(path, model, weights, cfg, info)
    _copy_weights(weights, dict(model.named_parameters()),
                  f"{path}/model.safetensors does not match the base model {base!r} with a {num_outputs}-output head",
                  "was the run trained from another model?", path / "model.safetensors")
    set_reward_config(model, info or {"head": "bt", "tau": 1.0})
    return model


def _check_trained_architecture(path: Path, model: nn.Module, base) -> None:
    """A ConfigError naming both when the reward model rebuilt from the run config's base differs in architecture
    from the one checkpoint `path` was trained as (its trainer_state.json "model_config": preflab.checkpoint.
    model_architecture): its weights would run through another computation (a recipe that trains a reward model it
    built itself under a builtin name). A checkpoint without that record (an older preflab) is not checked here; its
    names and shapes still are (_copy_weights)."""
    from preflab.checkpoint import architecture_differences, model_architecture

    state = json.loads((path / "trainer_state.json").read_text())
    trained = state.get("model_config") if isinstance(state, dict) else None
    differences = architecture_differences(model_architecture(model), trained) if isinstance(trained, dict) else []
    if differences:
        raise ConfigError(f"{path} was trained as a reward model whose config ({path / 'trainer_state.json'}, "
                          f"model_config) differs from the one its run config's base {base!r} builds: "
                          f"{'; '.join(differences[:4])}; evaluate the final run directory (its config.json).")


def _bt_info_of_run(cfg: dict) -> dict:
    """The BT head description a run's saved config gives (its tau and center_rewards_coefficient), for the
    checkpoints of a run that has no config.json yet (killed or still running)."""
    from preflab.reward_models.bt import BTHead

    tau = (cfg.get("reward_head_params") or {}).get("tau", 1.0)
    return BTHead(tau=float(tau), center_rewards_coefficient=cfg.get("center_rewards_coefficient")).to_config()


def _copy_weights(weights: dict, params: dict, mismatch: str, hint: str, source: Path) -> None:
    """A checkpoint's tensors copied into the model's parameters of the same names, in place; a ConfigError
    (`mismatch`, the names only one side has, then `hint`) when the two sets of names differ; a PreflabError naming
    both shapes when a tensor's shape differs (preflab.checkpoint.check_weight_shapes: copy_ would broadcast it)."""
    if set(weights) != set(params):
        extra, missing = sorted(set(weights) - set(params)), sorted(set(params) - set(weights))
        raise ConfigError(f"{mismatch} (only in the checkpoint: {extra[:2]}, only in the model: {missing[:2]}); "
                          f"{hint}")
    from preflab.checkpoint import check_weight_shapes

    check_weight_shapes(weights, params, str(source), "the reward model rebuilt from the run's config")
    with torch.no_grad():
        for key, value in weights.items():
            params[key].copy_(value)


def _merged_lora_checkpoint(path: Path, model: nn.Module, weights: dict, cfg: dict, info: dict | None) -> nn.Module:
    """A LoRA reward run's checkpoint (adapter and head parameters of the PEFT model, as RewardRun trains it:
    preflab.reward_models.train.reward_model_for_run) loaded over its base model, then merged, as the run saves its
    final model."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(
        r=int(cfg.get("lora_r", 16)), lora_alpha=cfg.get("lora_alpha", 32), lora_dropout=cfg.get("lora_dropout", 0.05),
        task_type="SEQ_CLS", target_modules=cfg.get("lora_target_modules", "all-linear")))
    params = {k.replace(".modules_to_save.default.", "."): p for k, p in peft_model.named_parameters()
              if p.requires_grad}
    _copy_weights(weights, params, f"{path}/model.safetensors does not match the LoRA adapters of the run's config",
                  "was the run trained with other lora_* options? Evaluate the final run directory.",
                  path / "model.safetensors")
    merged = peft_model.merge_and_unload()
    set_reward_config(merged, info or {"head": "bt", "tau": 1.0})
    return merged


def reward_tokenizer(path, trust_remote_code: bool = False):
    """The tokenizer saved with a reward model directory (or, for a checkpoint-<step>, in its run directory)."""
    from preflab.eval.run_files import tokenizer_near

    path = Path(path)
    if is_training_checkpoint(path):
        from preflab.models.run_config import run_config

        return tokenizer_near(path, run_config(path).get("model_name_or_path"), trust_remote_code)
    from preflab.models.load import load_tokenizer

    return load_tokenizer(str(path), trust_remote_code)


def reward_config(model: nn.Module) -> dict:
    """The head description stored in the model config ({} for a plain sequence-classification model)."""
    return dict(getattr(_unwrap(model).config, REWARD_CONFIG_KEY, None) or {})


def set_reward_config(model: nn.Module, info: dict) -> None:
    setattr(_unwrap(model).config, REWARD_CONFIG_KEY, dict(info))


def head_from_config(info: dict):
    """The pairwise head described by a model config's `preflab_reward` entry ({} -> a BT head)."""
    from preflab.reward_models.bt import BTHead
    from preflab.reward_models.gpm import GPMHead

    kind = info.get("head", "bt")
    if kind == "gpm":
        return GPMHead(dim=int(info["dim"]), tau=float(info.get("tau", 0.1)), normalize=bool(info.get("normalize",
                                                                                                        True)))
    if kind == "bt":
        return BTHead(tau=float(info.get("tau", 1.0)), center_rewards_coefficient=info.get("center_rewards_coefficient"))
    if kind == "multi_objective":
        raise ConfigError(f"the model is an attribute (DPA) reward model ({info.get('attributes')}), which has no "
                          "pairwise score: evaluate it with `preflab eval DIR --task reward --data ROWS` on rated rows "
                          "and pairs with a direction (preflab.reward_models.attribute_eval.evaluate_attribute_model); "
                          "to rank responses score them along a direction, "
                          "preflab.reward_models.interface.RewardModel.from_pretrained(DIR, direction=[...]).")
    raise ConfigError(f"the model's config names reward head {kind!r}, which has no pairwise score; "
                      "use preflab.reward_models.multi_objective for attribute heads.")


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model
