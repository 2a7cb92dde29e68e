"""preflab: preference optimization for generative models.

The DPO family of objectives, reward and preference models, online and self-play loops, an exact tabular lab,
and diagnostics that say whether alignment worked. See README.md and DESIGN.md.
"""
from preflab.errors import ConfigError, DataError, PreflabError

__version__ = "0.2.0"
__all__ = ["PreflabError", "ConfigError", "DataError", "__version__"]

# TRL's trainer and config classes -> how the same run is written in preflab (said by `from preflab import X`)
_TRL_CLASSES = {
    "DPOTrainer": "", "DPOConfig": "", "CPOTrainer": "loss_type: cpo (or simpo, alphapo)",
    "CPOConfig": "loss_type: cpo (or simpo, alphapo)", "ORPOTrainer": "loss_type: orpo", "ORPOConfig": "loss_type: orpo",
    "KTOTrainer": "loss_type: kto", "KTOConfig": "loss_type: kto", "SFTTrainer": "task: sft", "SFTConfig": "task: sft",
    "RewardTrainer": "task: reward", "RewardConfig": "task: reward", "GRPOTrainer": "task: online, trainer: grpo",
    "GRPOConfig": "task: online, trainer: grpo", "OnlineDPOTrainer": "task: online, trainer: online_dpo",
    "OnlineDPOConfig": "task: online, trainer: online_dpo", "RLOOTrainer": "", "RLOOConfig": "",
}


def __getattr__(name: str):
    if name in _TRL_CLASSES:
        if name.startswith("RLOO"):
            raise ImportError(f"preflab has no {name}: RLOO is not a preflab recipe (the group recipes are task: "
                              "online with trainer: grpo, dapo, dr_grpo, bnpo or gspo).")
        setting = f" with {_TRL_CLASSES[name]}" if _TRL_CLASSES[name] else ""
        raise ImportError(
            f"preflab has no TRL-style {name}: a run is one config. Write your TRL arguments as a YAML config"
            f"{setting} (plus model_name_or_path and dataset_name) and run `preflab train config.yaml`; a saved "
            "TRL config (`args.to_dict()`) loads, each TRL key kept, noted or refused with the reason. From Python: "
            "cfg = preflab.config.config_from_dict({**args.to_dict(), ...}), then preflab.loops.offline.Trainer(cfg)"
            ".train() (task: sft: preflab.loops.sft.SFTTrainer; task: reward: preflab.reward_models.train."
            "train_reward(cfg); task: online: preflab.online.run.OnlineRun(cfg).train()). README: 'Coming from TRL'.")
    raise AttributeError(f"module 'preflab' has no attribute {name!r}")
