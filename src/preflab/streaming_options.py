"""The options that streaming: true cannot honour (streaming_conflicts, run by TrainConfig.check), and the tasks
that stream (see preflab.loops.streaming for how a stream is read, ordered and resumed).

A module of the config layer (beside preflab.config, not in preflab/loops): preflab.loops.streaming reads rows with the SFT and preference
trainers' row builders, which import the offline Trainer and so preflab.config."""
from __future__ import annotations

STREAMING_TASKS = ("dpo", "sft")


def streaming_conflicts(cfg) -> list[str]:
    """One line per option that streaming cannot honour (TrainConfig.check)."""
    if not cfg.streaming:
        from preflab.config_defaults import drop_hint

        return [f"streaming_shuffle_buffer applies with streaming: true; remove it{drop_hint(['streaming_shuffle_buffer'])}"
                ", or set streaming: true."] if cfg.streaming_shuffle_buffer else []
    out = []
    if cfg.task not in STREAMING_TASKS:
        out.append(f"streaming: true applies to task: {' | '.join(STREAMING_TASKS)}, not task: {cfg.task}; read the "
                   "data whole (streaming: false).")
    if cfg.max_steps <= 0:
        out.append("streaming: true needs max_steps (a stream has no length, so num_train_epochs cannot set the run's "
                   "length); set max_steps.")
    if cfg.eval_fraction:
        out.append(f"eval_fraction={cfg.eval_fraction} cannot hold rows out of a stream; give the eval set as "
                   "eval_dataset_name (read whole), or set eval_fraction: 0.")
    if cfg.precompute_ref_log_probs:
        out.append("precompute_ref_log_probs scores the whole training set before training, which streaming: true "
                   "does not hold; set precompute_ref_log_probs: false.")
    if cfg.eval_strategy == "epoch":
        out.append("eval_strategy: epoch needs the epoch length, which a stream does not know; use eval_steps.")
    if cfg.save_strategy == "epoch":
        out.append("save_strategy: epoch needs the epoch length, which a stream does not know; use save_steps.")
    if cfg.packing and cfg.packing_strategy != "bfd":
        out.append(f"packing_strategy: {cfg.packing_strategy} cuts and joins rows across the whole dataset before "
                   "batching (TRL's pack_dataset), which a stream read row by row cannot; set streaming: false or "
                   "packing_strategy: bfd.")
    if cfg.group_by_length:
        out.append("group_by_length needs every row's length before the first step, which a stream does not hold "
                   "(transformers ignores it for an IterableDataset); set streaming: false or remove group_by_length.")
    if cfg.dataset_num_proc and cfg.dataset_num_proc > 1:
        out.append(f"dataset_num_proc={cfg.dataset_num_proc} tokenizes data read whole; with streaming: true each "
                   "process tokenizes rows one at a time as the steps need them; remove dataset_num_proc.")
    return out
