"""The method of a TRL CPOConfig or ORPOConfig, which no field of an ORPOConfig names and whose `loss_type` means
something else in a CPOConfig (CPO's "sigmoid" is the reference-free CPO loss, not DPO's).

    method_from_trl_fields(raw, notes, errors)   # edits raw (loss_type, parameters) in place
    grpo_round_from_trl(raw, notes, errors)      # a saved GRPOConfig's round size (completions) in preflab's terms
    rlooconfig_trainer(raw, notes, errors)       # a saved RLOOConfig is trainer rloo
    grpoconfig_task_and_trainer(raw, notes)      # a saved GRPOConfig: task online, trainer its loss_type
    task_from_trl_fields(raw, notes)             # a saved RewardConfig / SFTConfig without `task`: its task

- CPOConfig: `cpo_alpha` or `simpo_gamma` in the config (every saved CPOConfig carries both). Its loss_type
  sigmoid (or none: CPOConfig's default) -> `cpo`; simpo -> `simpo`, or `alphapo` when `alpha` != 0 (TRL's
  CPOConfig(loss_type="alphapo") is saved as simpo with cpo_alpha 0 and `alpha`); hinge and ipo, CPO's
  reference-free forms, are refused (preflab's hinge and ipo are DPO's, against a reference model).
- ORPOConfig: a saved one (`args.to_dict()`: TrainingArguments' fields, ORPOConfig's `padding_value` and
  `is_encoder_decoder`) with no loss_type and none of DPOConfig's own fields -> `orpo`. Without TrainingArguments'
  fields (a trimmed dump) the same ORPO fields could be a TRL 0.2x DPOConfig's: refused, asking for loss_type.
- GRPOConfig: a saved one (TrainingArguments' dump fields, `num_generations`, `scale_rewards`,
  `importance_sampling_level` and a GRPOConfig `loss_type`) with no `task` -> `task: online`, and with no `trainer`
  -> `trainer: <loss_type>`, with a note.
- RewardConfig / SFTConfig: a saved one (TrainingArguments' dump fields) with no `task` -> `task: reward` (its own
  field `center_rewards_coefficient`, no `beta` or `loss_type`) or `task: sft` (`dataset_text_field`, `packing`,
  `completion_only_loss`; no teacher: a DistillationConfig / GKDConfig is config_trl's), with a note. Before, a
  RewardConfig dump trained a DPO policy on the pairs without a word (task's default), and an SFTConfig dump stopped
  on `shuffle_dataset only applies to task: online` without naming the task.
"""
from __future__ import annotations

from preflab.online_recipes import TRL_CONFIG_TRAINERS

CPO_MARKERS = ("cpo_alpha", "simpo_gamma")
CPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "simpo")  # TRL 1.16 CPOConfig (alphapo is saved as simpo)
TRL_CPO_DEFAULTS = {"beta": 0.1, "cpo_alpha": 1.0, "simpo_gamma": 0.5, "alpha": 0.0, "label_smoothing": 0.0}
# fields only TrainingArguments.to_dict() writes (no hand-written config sets them all)
DUMP_MARKERS = ("do_train", "do_predict", "log_level_replica", "logging_nan_inf_filter", "save_on_each_node",
                "skip_memory_metrics")
ORPO_MARKERS = ("padding_value", "is_encoder_decoder")  # ORPOConfig's, not DPOConfig 1.16's
# DPOConfig fields (1.16 and 0.2x) that an ORPOConfig does not have
DPO_ONLY = ("f_divergence_type", "f_alpha_divergence_coef", "loss_weights", "precompute_ref_log_probs",
            "sync_ref_model", "ref_model_init_kwargs", "reference_free", "use_weighting", "rpo_alpha", "discopop_tau",
            "ld_alpha", "label_smoothing", "ref_model", "ref_adapter_name", "force_use_ref_model", "padding_free",
            "truncation_mode", "ref_model_name_or_path")


REWARD_CONFIG_MARKERS = ("center_rewards_coefficient",)  # RewardConfig's own field (DPOConfig & co. have none)
SFT_CONFIG_MARKERS = ("dataset_text_field", "packing", "completion_only_loss")  # SFTConfig's (and its subclasses')


def task_from_trl_fields(raw: dict, notes: list) -> None:
    """The task of a saved TRL RewardConfig or SFTConfig dump that names none (module docstring)."""
    if "task" in raw or not all(k in raw for k in DUMP_MARKERS) or raw.get("teacher_model_name_or_path"):
        return
    if all(k in raw for k in REWARD_CONFIG_MARKERS) and "beta" not in raw and "loss_type" not in raw:
        raw["task"] = "reward"
        notes.append("a saved TRL RewardConfig (center_rewards_coefficient, no beta or loss_type) -> task: reward "
                     "(a Bradley-Terry reward model, as TRL's RewardTrainer).")
    elif all(k in raw for k in SFT_CONFIG_MARKERS) and "beta" not in raw:
        raw["task"] = "sft"
        notes.append("a saved TRL SFTConfig (dataset_text_field, packing, completion_only_loss) -> task: sft.")


GRPO_CONFIG_MARKERS = ("num_generations", "scale_rewards", "importance_sampling_level")  # GRPOConfig's (RLOOConfig
# has num_generations only)
GRPO_CONFIG_LOSS_TYPES = ("grpo", "dapo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's


def grpoconfig_task_and_trainer(raw: dict, notes: list) -> None:
    """A saved GRPOConfig (TrainingArguments' dump fields, GRPO_CONFIG_MARKERS, a GRPOConfig loss_type) is the
    group recipe its loss_type names: with no task it gets task: online, and an online one with no trainer gets
    trainer: <loss_type> (each with a note), as a saved RLOOConfig gets trainer: rloo. Before, such a dump without a
    task was told to remove num_generations and reward_funcs (they "only apply to task: online"), and with task:
    online it ran into trainer online_dpo's refusal of the loss_type."""
    loss = raw.get("loss_type")
    if not (isinstance(loss, str) and loss in GRPO_CONFIG_LOSS_TYPES and all(k in raw for k in DUMP_MARKERS)
            and all(k in raw for k in GRPO_CONFIG_MARKERS) and not any(k in raw for k in RLOO_FIELDS)):
        return
    if "task" not in raw:
        raw["task"] = "online"
        notes.append(f"a saved TRL GRPOConfig (num_generations, scale_rewards, importance_sampling_level, loss_type "
                     f"{loss}) -> task: online.")
    if raw["task"] == "online" and raw.get("trainer") is None:
        raw["trainer"] = loss
        notes.append(f"a saved TRL GRPOConfig with loss_type {loss} -> trainer: {loss} (preflab's group recipe of "
                     "that loss).")


def method_from_trl_fields(raw: dict, notes: list, errors: list) -> None:
    if raw.get("task", "dpo") != "dpo":
        return
    loss = raw.get("loss_type")
    if any(k in raw for k in CPO_MARKERS) and (loss is None or loss in CPO_LOSS_TYPES):
        _cpo(raw, loss or "sigmoid", notes, errors)
    elif loss is None and all(k in raw for k in ORPO_MARKERS) and not any(k in raw for k in DPO_ONLY):
        if all(k in raw for k in DUMP_MARKERS):
            raw["loss_type"] = "orpo"
            notes.append("a saved TRL ORPOConfig (padding_value, is_encoder_decoder, no loss_type, no DPOConfig "
                         f"field) -> loss_type: orpo with beta {raw.get('beta', 0.1)} (TRL's lambda).")
        else:
            errors.append("padding_value and is_encoder_decoder without loss_type: this could be a TRL ORPOConfig "
                          "(ORPO) or a TRL 0.2x DPOConfig (DPO, sigmoid), and they train different losses. Add "
                          "loss_type: orpo (an ORPOConfig) or loss_type: sigmoid (a DPOConfig).")


# the trainers of a TRL config with GRPOConfig's batch fields (RLOOConfig has the same generation_batch_size and
# steps_per_generation)
GRPO_TRAINERS = TRL_CONFIG_TRAINERS
RLOO_FIELDS = ("normalize_advantages", "reward_clip_range")  # RLOOConfig's own (a saved one carries both)


def rlooconfig_trainer(raw: dict, notes: list, errors: list) -> None:
    """A saved RLOOConfig (both of its own fields and TrainingArguments' dump fields) is trainer rloo: without a
    trainer it gets one (a note); with another trainer it is refused, since that trainer would run GRPO's or online
    DPO's loss with the RLOO fields unread. RLOOConfig's reward_clip_range tuple (its to_dict keeps it) is a list."""
    if isinstance(raw.get("reward_clip_range"), tuple):
        raw["reward_clip_range"] = list(raw["reward_clip_range"])
    if not all(k in raw for k in RLOO_FIELDS) or not all(k in raw for k in DUMP_MARKERS):
        return
    trainer = raw.get("trainer")
    if raw.get("task") != "online":
        errors.append("normalize_advantages and reward_clip_range: this is a saved TRL RLOOConfig (RLOO, an online "
                      f"recipe), but the config's task is {raw.get('task', 'dpo (the default)')!r}. Set task: online "
                      "(trainer: rloo is then taken from the RLOOConfig).")
    elif trainer is None:
        raw["trainer"] = "rloo"
        notes.append("a saved TRL RLOOConfig (normalize_advantages, reward_clip_range) -> trainer: rloo.")
        return
    elif trainer == "rloo":
        return
    else:
        errors.append(f"normalize_advantages and reward_clip_range: this is a saved TRL RLOOConfig, which trains "
                      f"RLOO (leave-one-out baseline), but the config names trainer {trainer!r}. Set trainer: rloo, "
                      "or remove normalize_advantages and reward_clip_range to run the other trainer.")
    for key in RLOO_FIELDS:
        raw.pop(key)


def grpo_round_from_trl(raw: dict, notes: list, errors: list) -> None:
    """A saved GRPOConfig's generation_batch_size counts the completions of one generation round (TRL computes it as
    per_device_train_batch_size x processes x steps_per_generation); preflab's option of that name is the prompts
    per generate() call, and its round is prompts_per_generation prompts x num_generations. A dump's value becomes
    prompts_per_generation = generation_batch_size / num_generations (TRL's round), generate() calls keep preflab's
    size. A hand-written config keeps preflab's meaning (docs/configuration.md, "Coming from TRL")."""
    if raw.get("task") != "online" or raw.get("trainer") not in GRPO_TRAINERS or not all(k in raw for k in
                                                                                        DUMP_MARKERS):
        return
    _grpo_steps_from_trl(raw, notes, errors)
    if "prompts_per_generation" in raw or not isinstance(raw.get("generation_batch_size"), int):
        return
    size, k = raw.pop("generation_batch_size"), raw.get("num_generations", 8)
    if not isinstance(k, int) or k < 1 or size % k:
        errors.append(f"generation_batch_size={size} (a saved GRPOConfig: completions per generation round) is not "
                      f"a multiple of num_generations={k}; set prompts_per_generation (prompts per round) instead.")
        return
    raw["prompts_per_generation"] = size // k
    notes.append(f"generation_batch_size: {size} (TRL: completions per round) -> prompts_per_generation: "
                 f"{size // k} (x num_generations {k}); each generate() call takes preflab's generation_batch_size.")


def grpo_batch_note(raw: dict, notes: list) -> None:
    """A hand-written GRPO config that sets TRL's batch keys but not prompts_per_generation: in TRL,
    per_device_train_batch_size counts *completions* and one optimizer step consumes one generation round of
    per_device_train_batch_size x gradient_accumulation_steps x processes of them; here it counts prompt groups
    (G completions each) per micro-batch, and a round is prompts_per_generation (default 32) prompts. Said once with
    the prompts_per_generation that gives TRL's round (one process), since the batch is otherwise silently larger."""
    if (raw.get("task") != "online" or raw.get("trainer") not in GRPO_TRAINERS or "prompts_per_generation" in raw
            or all(k in raw for k in DUMP_MARKERS) or "per_device_train_batch_size" not in raw):
        return
    b, gas = raw["per_device_train_batch_size"], raw.get("gradient_accumulation_steps", 1)
    k, spg = raw.get("num_generations", 8), raw.get("steps_per_generation", 1)
    if not all(isinstance(v, int) and v > 0 for v in (b, gas, k, spg)):
        return  # the type checks say what is wrong
    trl = b * gas  # TRL: completions per optimizer step on one process (its default steps_per_generation)
    ours = 32 * k // spg
    if trl == ours:
        return
    fix = f"prompts_per_generation: {trl * spg // k}" if (trl * spg) % k == 0 else \
        f"prompts_per_generation x num_generations = {trl * spg} completions per round"
    notes.append(f"per_device_train_batch_size: {b} counts prompts here (each with num_generations {k} completions, "
                 f"a micro-batch of {b * k} completions), and a round is prompts_per_generation 32 prompts "
                 f"({32 * k} completions) over steps_per_generation {spg} optimizer step(s): {ours} completions per "
                 f"step. TRL's GRPOConfig with these values takes {trl} per optimizer step (per process); for that, "
                 f"set {fix}.")


def grpo_generation_note(raw: dict, notes: list) -> None:
    """A hand-written GRPO-family or rloo config that writes GRPOConfig's generation_batch_size without
    prompts_per_generation, or steps_per_generation beside gradient_accumulation_steps > 1: both keep preflab's
    meaning (prompts per generate() call; optimizer steps per round), where TRL's are a round's completions and
    micro-batches per round, so the round and the updates per round differed from TRL's without a word (a saved
    GRPOConfig is translated instead: grpo_round_from_trl). Said once each, with the setting that gives TRL's."""
    if raw.get("task") != "online" or raw.get("trainer") not in GRPO_TRAINERS or all(k in raw for k in DUMP_MARKERS):
        return
    size, k = raw.get("generation_batch_size"), raw.get("num_generations", 8)
    if "prompts_per_generation" not in raw and isinstance(size, int) and isinstance(k, int) and size > 0 and k > 0:
        fix = (f"prompts_per_generation: {size // k}" if size % k == 0 else
               f"prompts_per_generation x num_generations = {size} completions")
        notes.append(f"generation_batch_size: {size} is preflab's prompts per generate() call; in TRL's GRPOConfig it "
                     f"is the completions of one generation round ({size} / num_generations {k}). A round here is "
                     f"prompts_per_generation prompts (default 32) x num_generations; for TRL's round set {fix}.")
    spg, gas = raw.get("steps_per_generation"), raw.get("gradient_accumulation_steps", 1)
    if isinstance(spg, int) and isinstance(gas, int) and gas > 1 and spg > 0:
        fix = (f"steps_per_generation: {spg // gas}" if spg % gas == 0 else
               f"steps_per_generation: N for N optimizer steps ({spg} / {gas} is not whole)")
        notes.append(f"steps_per_generation: {spg} counts optimizer steps per generation round here ({spg * gas} "
                     f"micro-batches with gradient_accumulation_steps {gas}); TRL's GRPOConfig counts micro-batches "
                     f"({spg} / {gas} optimizer steps per round). For TRL's round set {fix}.")


def _grpo_steps_from_trl(raw: dict, notes: list, errors: list) -> None:
    """A saved GRPOConfig's steps_per_generation counts micro-batches per generation round (GRPOTrainer regenerates
    every steps_per_generation x num_iterations training_step calls; its default is gradient_accumulation_steps: one
    optimizer step per round); preflab's counts optimizer steps. A dump with gradient_accumulation_steps G > 1 ran
    G optimizer steps per round here, each on 1/G of it, where TRL takes one: steps_per_generation / G."""
    spg, gas = raw.get("steps_per_generation"), raw.get("gradient_accumulation_steps", 1)
    if not isinstance(spg, int) or not isinstance(gas, int) or gas <= 1:
        return
    if spg % gas:
        errors.append(f"steps_per_generation={spg} (a saved GRPOConfig: micro-batches per generation round) is not a "
                      f"multiple of gradient_accumulation_steps={gas}, so TRL's rounds end inside an optimizer step, "
                      "which preflab does not do; set steps_per_generation (optimizer steps per round) yourself.")
        raw.pop("steps_per_generation")
        return
    raw["steps_per_generation"] = spg // gas
    notes.append(f"steps_per_generation: {spg} (TRL: micro-batches per round, gradient_accumulation_steps {gas}) -> "
                 f"steps_per_generation: {spg // gas} (optimizer steps per round).")


def _cpo(raw: dict, loss: str, notes: list, errors: list) -> None:
    """TRL CPOTrainer.cpo_loss (trl/experimental/cpo/cpo_trainer.py) onto preflab's cpo / simpo / alphapo."""
    alpha = raw.get("alpha", 0.0)
    if loss in ("hinge", "ipo"):
        errors.append(f"loss_type={loss!r} with {_given(raw)} is TRL CPOConfig's reference-free {loss} loss (on the "
                      "policy's log-probs alone), which preflab does not have; preflab's loss_type "
                      f"{loss} is DPO's, against a reference model. Use loss_type: cpo, simpo or alphapo, or remove "
                      f"{_given(raw)} to train DPO's {loss}.")
        _drop_markers(raw)
        return
    if loss == "sigmoid":
        if alpha not in (0, 0.0, None):
            errors.append(f"alpha={alpha} with loss_type sigmoid (TRL CPOConfig: AlphaPO's reward shape on summed "
                          "log-probs) is not in preflab; use loss_type: alphapo (length-normalised, TRL's "
                          "loss_type alphapo) or remove alpha.")
            _drop_markers(raw)
            return
        raw.pop("alpha", None)
        gamma = raw.pop("simpo_gamma", TRL_CPO_DEFAULTS["simpo_gamma"])
        if gamma != TRL_CPO_DEFAULTS["simpo_gamma"]:
            notes.append(f"simpo_gamma: {gamma} is not used by CPO's sigmoid loss (TRL ignores it too).")
        raw["loss_type"] = "cpo"
        notes.append("a TRL CPOConfig (cpo_alpha / simpo_gamma) with loss_type sigmoid -> loss_type: cpo (reference-"
                     "free CPO, TRL CPOTrainer's sigmoid; not DPO's sigmoid).")
        return
    if alpha not in (0, 0.0, None):  # simpo with a reward shape: TRL's alphapo
        raw["loss_type"] = "alphapo"
        notes.append(f"a TRL CPOConfig with loss_type simpo and alpha {alpha} -> loss_type: alphapo (TRL's AlphaPO).")
    else:
        raw.pop("alpha", None)
    _note_defaults(raw, notes)

def _given(raw: dict) -> str:
    return " / ".join(k for k in (*CPO_MARKERS, "alpha") if k in raw)


def _drop_markers(raw: dict) -> None:
    """After a refusal: the CPO parameters are not reported again as unknown keys."""
    for key in (*CPO_MARKERS, "alpha"):
        raw.pop(key, None)


def _note_defaults(raw: dict, notes: list) -> None:
    """A hand-written simpo / alphapo config with CPOConfig's fields but not all of them: preflab's objective
    defaults fill the rest (beta is TrainConfig's 0.1 either way); said where they differ from TRL's."""
    import dataclasses

    from preflab.objectives import objective_class

    ours = {f.name: f.default for f in dataclasses.fields(objective_class(raw["loss_type"]))}
    trl = TRL_CPO_DEFAULTS  # a TRL simpo config; TRL saves alphapo as simpo
    missing = [k for k in ("cpo_alpha", "simpo_gamma") if k not in raw and ours[k] != trl[k]]
    if missing:
        notes.append(f"loss_type {raw['loss_type']} with {_given(raw)} but no {' or '.join(missing)}: preflab's "
                     f"{raw['loss_type']} defaults apply ({', '.join(f'{k} {ours[k]}' for k in missing)}), not TRL "
                     f"CPOConfig's ({', '.join(f'{k} {trl[k]}' for k in missing)}); set them to choose.")
