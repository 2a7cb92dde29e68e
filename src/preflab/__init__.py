"""preflab: preference optimization for generative models.

The DPO family of objectives, reward and preference models, online and self-play loops, an exact tabular lab,
and diagnostics that say whether alignment worked. See README.md and DESIGN.md.
"""
from preflab.errors import ConfigError, DataError, PreflabError

__version__ = "0.2.0"
__all__ = ["PreflabError", "ConfigError", "DataError", "__version__"]

# TRL 1.16's distillation defaults where preflab's own task: sft + teacher differs (config_trl.GKD_CONFIG_DEFAULTS,
# DISTILLATION_CONFIG_DEFAULTS; docs/distillation.md, "TRL's defaults"): written out, the run is TRL's
_GKD = ("task: sft, teacher_model_name_or_path and GKDConfig's defaults written out: lmbda: 0.5, beta: 0.5, "
        "temperature: 0.9, max_new_tokens: 128 (preflab's own are lmbda 0, beta 1.0, temperature 1.0; a config with "
        "max_new_tokens gets GKDConfig's for those it leaves out), seq_kd: false (the divergence at "
        "divergence_temperature: 1.0, as GKDTrainer scores it)")
_DISTILLATION = ("task: sft, teacher_model_name_or_path and DistillationConfig's defaults written out: lmbda: 1 (its "
                 "trainer samples every completion), max_completion_length: 512, learning_rate: 1e-06, "
                 "disable_dropout: false (preflab's own are lmbda 0, learning_rate 2e-05, disable_dropout true; beta: "
                 "1.0 and temperature: 1.0 are the same)")
# TRL's trainer and config classes -> how the same run is written in preflab (said by `from preflab import X`)
_TRL_CLASSES = {
    "DPOTrainer": "", "DPOConfig": "", "CPOTrainer": "loss_type: cpo (or simpo, alphapo)",
    "CPOConfig": "loss_type: cpo (or simpo, alphapo)", "ORPOTrainer": "loss_type: orpo", "ORPOConfig": "loss_type: orpo",
    "KTOTrainer": "loss_type: kto", "KTOConfig": "loss_type: kto", "SFTTrainer": "task: sft", "SFTConfig": "task: sft",
    "RewardTrainer": "task: reward", "RewardConfig": "task: reward", "GRPOTrainer": "task: online, trainer: grpo",
    "GRPOConfig": "task: online, trainer: grpo", "OnlineDPOTrainer": "task: online, trainer: online_dpo",
    "OnlineDPOConfig": "task: online, trainer: online_dpo", "RLOOTrainer": "task: online, trainer: rloo",
    "RLOOConfig": "task: online, trainer: rloo",
    "GKDTrainer": _GKD, "GKDConfig": _GKD, "DistillationTrainer": _DISTILLATION, "DistillationConfig": _DISTILLATION,
}
_GROUP_RECIPES = "task: online with trainer: grpo, dapo, dr_grpo, bnpo, gspo, cispo, sapo, luspo, vespo or rloo"
# TRL trainers (1.16, experimental, or removed by 1.16) that preflab does not have -> what to use instead
_TRL_ABSENT = {
    "PPO": f"PPO is not a preflab recipe (the online RL recipes are {_GROUP_RECIPES}).",
    "XPO": "XPO (exploratory preference optimization) is not a preflab recipe; online DPO on judged samples of the "
           "policy is task: online, trainer: online_dpo.",
    "NashMD": "preflab's Nash-MD (trainer: nash_md) runs on the built-in preference game only (task: online, "
              "online_task: game); on text, the self-play recipes are task: online with trainer: sppo or gpo.",
    "BCO": "TRL's unpaired BCO trainer is not in preflab; on preference pairs BCO is loss_type: bco_pair, and "
           "unpaired (prompt, completion, label) rows train with loss_type: kto.",
    "PRM": "process reward models (step-wise labels) are not trained by preflab; task: reward trains a reward model "
           "on preference pairs.",
    "TPO": "TRL's TPO (triple preference optimization) is not in preflab; preflab's trainer: tpo is another method, "
           "Tree Preference Optimization (Liao et al. 2024).",
}


def __getattr__(name: str):
    base = name.removesuffix("Trainer") if name.endswith("Trainer") else name.removesuffix("Config")
    if base in _TRL_ABSENT and name != base:
        raise ImportError(f"preflab has no {name}: {_TRL_ABSENT[base]}")
    if name in _TRL_CLASSES:
        setting = f" with {_TRL_CLASSES[name]}" if _TRL_CLASSES[name] else ""
        raise ImportError(
            f"preflab has no TRL-style {name}: a run is one config. Write your TRL arguments as a YAML config"
            f"{setting} (plus model_name_or_path and dataset_name) and run `preflab train config.yaml`; a saved "
            "TRL config (`args.to_dict()`) loads, each TRL key kept, noted or refused with the reason. From Python: "
            "cfg = preflab.config.config_from_dict({**args.to_dict(), ...}) (with eval_dataset=: any "
            "eval_dataset_name, which then names the eval rows), then preflab.loops.offline.Trainer(cfg, policy=..., "
            "ref=..., tokenizer=..., train_data=..., eval_data=...).train() (task: sft: preflab.loops.sft.SFTTrainer, with a teacher preflab.loops.distill.DistillTrainer; task: reward: preflab.reward_models.train."
            "train_reward(cfg); task: online: preflab.online.run.OnlineRun(cfg).train()). "
            "docs/configuration.md: 'Coming from TRL'.")
    raise AttributeError(f"module 'preflab' has no attribute {name!r}")
