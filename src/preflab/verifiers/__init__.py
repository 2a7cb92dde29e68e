"""Rule-based reward functions in TRL 1.16 GRPO's signature, and the DSTC pair builder.

A reward function is called as `f(prompts=..., completions=..., **dataset_columns)` (TRL also passes
completion_ids and trainer_state) and returns one float per completion:

    from preflab.verifiers import vision_r1_rewards, OTCReward
    GRPOTrainer(..., reward_funcs=vision_r1_rewards(adaptive=True))          # format + precision + recall
    GRPOTrainer(..., reward_funcs=[OTCReward(mode="grpo", c=3.0)])

- Vision-R1 (arXiv:2503.18013): `vision_r1_format`, `vision_r1_precision`, `vision_r1_recall`.
- OTC (arXiv:2504.14870): `OTCReward` (modes "ppo" and "grpo"), `otc_ppo_tool_reward`, `otc_grpo_tool_reward`.
- DSTC (arXiv:2411.13611): `preflab.verifiers.dstc` (`minimax_select`, `execution_matrix`, `dstc_pair`,
  `build_dstc_dataset`); a data builder, not a reward function.
"""
from preflab.verifiers.otc import OptimalToolCallTracker, OTCReward, otc_grpo_tool_reward, otc_ppo_tool_reward
from preflab.verifiers.vision_r1 import vision_r1_format, vision_r1_precision, vision_r1_recall, vision_r1_rewards

__all__ = [
    "OTCReward", "OptimalToolCallTracker", "otc_grpo_tool_reward", "otc_ppo_tool_reward",
    "vision_r1_format", "vision_r1_precision", "vision_r1_recall", "vision_r1_rewards",
]
