"""The loop every trainer shares (offline, online, reward, diffusion): order, step, log, evaluate, checkpoint,
resume, summary.

A subclass says what a step is made of and what to save; the loop itself is written once:

    class MyRun(TrainingRun):
        def micro_batches(self, step) -> list        # this rank's micro-batches (each with row_ids, num_tokens)
        def forward(self, mb) -> ObjectiveOutput     # loss of one micro-batch
        def evaluate(self) -> dict                   # eval_* metrics ({} when there is no eval data)
        def write_model(self)                        # final weights + tokenizer into self.out (save_model stages it)
        def write_card(self, summary)                # README.md beside the weights
    and sets: cfg, accelerator, plan, total_steps, params, extra_params, optimizer, scheduler, sync_module
    (the DDP-wrapped module), checkpoint_module (whose trainable parameters a checkpoint holds), data_report.

Used by preflab.loops.offline.Trainer (policies, and task: sft / vlm through it), preflab.loops.diffusion
(DiffusionRun), preflab.online.run.OnlineRun and preflab.reward_models.reward_run.RewardRun (reward models).
A trainer builds what it sets with make_accelerator (preflab.loops.launch: processes, engine, output_dir), make_plan
(preflab.loops.batches) and make_optimizer (preflab.loops.optimizer). What a resume may change is checked in
preflab.loops.resume and preflab.resume_check; transformers callbacks (`callbacks`) are called through
preflab.loops.callback_state.CallbackEvents.
"""
from __future__ import annotations

import gc
import json
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from safetensors import SafetensorError

from preflab.checkpoint import (load_checkpoint, model_architecture, refuse_model_only, resume_checkpoint, rng_parts,
                                save_checkpoint, share_run_files, what_is_kept, write_failure, write_timeline)
from preflab.data.eval_set import no_eval_set_for_best
from preflab.deepspeed_checkpoint import (check_checkpointable, check_deepspeed_resume, deepspeed_reads,
                                          is_deepspeed_checkpoint, load_deepspeed_checkpoint,
                                          save_deepspeed_checkpoint)
from preflab.errors import ConfigError, NonFiniteError, PreflabError, WriteFailed
from preflab.final_save import staged_final_save
from preflab.best_model_options import (saves_best, sharded_best_model_problem, sharded_model_only_problem,
                                        trl_save_default_note, writes_checkpoints)
from preflab.config_trl import trl_epochs_default_note
from preflab.launch_paths import config_launch_record, save_run_config
from preflab.loops.best_model import BestModel, load_best_weights, remove_all_but_best
from preflab.loops.callback_state import CallbackEvents, callback_states, restore_callback_states
from preflab.loops.device_cache import cpu_note, emptying_forward
from preflab.loops.launch import deepspeed_stage, gather_full_states, is_sharded, sharding_engine
from preflab.loops.optimizer import follow_schedule, step_on_evaluation
from preflab.loops.resume import earlier_run_note, no_checkpoint_to_resume, resume_requested
from preflab.models.attention import refuse_flex_training_on_cpu
from preflab.models.neftune import RankNoise, add_neftune_hook
from preflab.neftune_options import neftune_kind_refusal
from preflab.objectives._panels import declared_panels
from preflab.online_options import greedy_eval_notes
from preflab.optimizer_options import sharded_optimizer_problem
from preflab.peak_memory import peak_memory_record, process_peak, reset_process_peak
from preflab.sharding_options import sharded_activation_offload_problem
from preflab.plugins import user_code
from preflab.rank_agreement import ranks_agree
from preflab.quiet import progress_bars_off
from preflab.report.panel_data import write_panel_data
from preflab.resume_check import (check_checkpoint_version, check_resume_code, check_resume_data, check_saved_config,
                                   checkpoint_identity)
from preflab.resume_verify import plain_reads, verify_rank_reads
from preflab.rundir import claims_released_on_error, release_output_dir
from preflab.runlog import (MetricsLog, Progress, average_results, distributed_environment, environment,
                            finished_summary, start_trackers, write_summary, zero_gradient_note)
from preflab.sharded_checkpoint import (is_sharded_checkpoint, load_sharded_checkpoint, save_sharded_checkpoint,
                                        sharded_reads)
from preflab.step import optimizer_step, window_from_json, window_to_json
from preflab.stop_signal import Terminated, stop_deferred, stop_requested


class BuildReleasesClaim(type):
    """The metaclass of every run kind: building a run (`Kind(...)`, the whole __init__ chain of a subclass, code
    after its super().__init__ included) is a claims_released_on_error block, so a build that raises after
    make_accelerator locked output_dir releases that lock and re-raises its error unchanged; a build that succeeds
    keeps the lock until train() ends. Without it a failed build in a notebook left output_dir locked by the
    notebook's process: later runs into that folder, from the shell or the notebook, were refused while it lived."""

    def __call__(cls, *args, **kwargs):
        with claims_released_on_error():
            return super().__call__(*args, **kwargs)


class TrainingRun(CallbackEvents, metaclass=BuildReleasesClaim):
    extra_params: list = []
    final_state_dict: dict | None = None  # the gathered full weights under FSDP / DeepSpeed (see gather_full_state)
    # modules trained outside the policy that the sharding engine owns (preflab.loops.engine_extras), by name
    # ("objective", "producer"): their parameters are in sync_module, so the engine's checkpoint holds them and
    # checkpoint_extras has none; final_extra_states holds their full state dicts gathered at the end
    extra_modules: dict = {}
    final_extra_states: dict = {}
    data_report: dict = {}
    step: int = 0  # the global step just finished (evaluate() reads it)
    # what a micro-batch's num_tokens counts: the throughput metrics are num_<unit> and <unit>_per_second (TRL's
    # num_tokens / tokens_per_second for text; a diffusion run counts images)
    throughput_unit: str = "tokens"
    # what checkpoint_module is, as a refusal names it ("the policy's"); RewardRun: "reward model"
    trained_model: str = "policy"
    # True: each step also logs step_time, TRL 1.16 GRPOTrainer's wall seconds of an optimizer step (its
    # training_step over the accumulation window: generation on a round's first step, forward, backward; here the
    # update too), averaged over the window's steps (OnlineRun sets it for the trainers TRL runs as GRPOTrainer)
    logs_step_time: bool = False
    # False (the Python API's save_model=False, preflab.online.api): the final weights are not written; summary.json,
    # metrics and checkpoints are. summary.json's final_model_saved says which.
    save_final_model: bool = True
    # the first failure of a main-only write (main_writes) held on the main process until the ranks' next agreement
    # (_agree_on_held_writes); held only while train() runs on several processes
    _held_write_failure: Exception | None = None
    _holds_write_failures: bool = False
    # the wall clock of the run's timings (runtime_s, step_time, <unit>_per_second, train_<unit>_per_second): a test
    # sets another on the instance to time a run exactly (tests/loops/test_run_costs.py)
    clock = staticmethod(time.perf_counter)

    # ------------------------------------------------------------------ hooks (see the module docstring)
    def before_train(self) -> None:
        """Work after resume and before the first step (e.g. precomputing reference log-probs)."""

    def summary_extras(self) -> dict:
        return {}

    def data_position(self) -> dict | None:
        """Where the training data stands after the steps done, saved with every checkpoint (a streaming run's
        stream position, preflab.loops.streaming); None when the order is a function of (seed, step) alone."""
        return None

    def restore_data_position(self, saved: dict | None, step: int) -> None:
        """Continue the training data from `saved` (data_position() of the checkpoint at `step`)."""

    def beside_checkpoint(self, step: int) -> dict:
        """Files of this run's own that checkpoint-<step> needs beside it (an online run's round and judge state),
        written by the main process before the checkpoint; returns the keys its trainer_state.json records of them.
        Called (main process only) after the save's collectives (the ranks' RNG states) or, under FSDP / DeepSpeed,
        inside an agreement before the collective save, so that its failure stops every rank with its error. None by
        default."""
        return {}

    def checkpoint_record(self) -> dict:
        """Keys this trainer adds to every checkpoint's trainer_state.json, for readers of a checkpoint other than
        resume (which restores from the weights and the data order alone): a ppd run's user table layout, which
        `preflab eval` of its checkpoint-N reads (DiffusionRun.checkpoint_record). {} by default."""
        return {}

    def training_examples(self) -> list | None:
        """The examples the steps draw from (train_data), fingerprinted into every checkpoint and compared at
        resume (preflab.data.fingerprint); None where the run reads its data as it goes (a stream)."""
        return getattr(self, "train_data", None)

    def data_fingerprint(self) -> str | None:
        if not hasattr(self, "_data_fingerprint"):
            from preflab.data.fingerprint import training_data_fingerprint

            self._data_fingerprint = training_data_fingerprint(self.training_examples())
        return self._data_fingerprint

    def write_card(self, summary: dict) -> None:
        pass

    def restored_extras(self, path: Path, step: int, note=None) -> dict:
        """The checkpoint_extras that checkpoint `path` (at `step`) is read into, on resume and for the best model
        at the end: all of them. A trainer whose checkpoints may lack some by design (a synced reference, from a
        run without sync_ref_model: preflab.loops.ref_sync) leaves those out, saying so through `note`."""
        return self.checkpoint_extras()

    def checkpoint_extras(self) -> dict:
        """Tensors the step updates outside checkpoint_module, by name: the objective's state (parameters and
        buffers) when it is a module, else extra_params by position. Saved with every checkpoint, restored on
        resume and, with load_best_model_at_end, from the best checkpoint (_load_best_at_end)."""
        objective = getattr(self, "objective", None)
        if self.extra_modules:  # inside the engine's module: its checkpoint holds them
            return {}
        if isinstance(objective, torch.nn.Module) and list(objective.state_dict()):
            return {f"objective.{k}": v for k, v in objective.state_dict().items()}
        return {f"extra_params.{i}": p for i, p in enumerate(self.extra_params)}

    def save_objective_state(self) -> None:
        """An objective with its own trained tensors (an nn.Module with state: SparsePO's token masks) has them
        written beside the final model as its `state_file` (safetensors, its state_dict's names, so
        objective.load_state_dict reads them back): they are part of what the run learned (the SparsePO paper plots
        the masks), not only resume state. With load_best_model_at_end they are the best checkpoint's
        (_load_best_at_end restored them first)."""
        objective = getattr(self, "objective", None)
        if not isinstance(objective, torch.nn.Module) or not list(objective.state_dict()):
            return
        from safetensors.torch import save_file

        state = self.final_extra_states.get("objective") or objective.state_dict()  # gathered under an engine
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(self.out / objective.state_file))

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from_checkpoint=None) -> dict:
        """Run the loop; output_dir's lock (taken by make_accelerator) is released at the end, error or not. An
        interrupt (KeyboardInterrupt, the CLI's SIGTERM) leaves with `preflab_output_dir` set on it.
        resume_from_checkpoint (TRL's trainer.train argument) must be the config's: the run was set up for it (the
        output folder's note, the checks of sharded engines) when it was built."""
        try:
            if resume_from_checkpoint is not None and resume_from_checkpoint != self.cfg.resume_from_checkpoint:
                raise ConfigError(
                    f"train(resume_from_checkpoint={resume_from_checkpoint!r}): preflab reads resume_from_checkpoint "
                    f"from the config (this one has {self.cfg.resume_from_checkpoint!r}), which sets the run up for "
                    "it. Set it there (resume_from_checkpoint: true, or a checkpoint-N path), build the trainer "
                    "again and call train().")
            note = earlier_run_note(self.cfg)  # here, not at the build: only a run that starts replaces the other
            if note and self.accelerator.is_main_process:
                print(note, flush=True)
            self._inside_train = True
            return self._train()
        except KeyboardInterrupt as err:  # Ctrl-C / SIGTERM: the CLI names this folder's latest checkpoint
            err.preflab_output_dir = Path(self.cfg.output_dir)
            raise
        except (OSError, SafetensorError) as err:  # a full disk or a read-only folder while writing metrics, the
            failure = self._failed_write(err)     # model (safetensors' own error type), the summary
            if failure is None:
                raise
            raise failure from err
        finally:
            self._inside_train = False
            self._holds_write_failures, self._held_write_failure = False, None
            if getattr(self, "_neftune_handle", None) is not None:  # the model leaves train() as it came
                self._neftune_handle.remove()
                self._neftune_handle = None
            if self.accelerator.is_main_process:
                release_output_dir(self.cfg.output_dir)

    def no_eval_metrics(self) -> dict:
        """What evaluate() gives on a run without an eval set: {} inside train() (its evaluations then log nothing),
        a ConfigError when called from Python (a notebook's `run.evaluate()` got {} and looked like an evaluation
        that measured nothing; TRL's Trainer.evaluate raises too)."""
        if getattr(self, "_inside_train", False):
            return {}
        raise ConfigError(f"evaluate(): this {type(self).__name__} has no eval set, so there is nothing to evaluate. "
                          "Give one when building it (eval_data=rows in Python, or eval_dataset_name / "
                          "eval_fraction in the config), or evaluate the saved model with `preflab eval "
                          f"{self.cfg.output_dir} --data FILE`.")

    def _failed_write(self, err: Exception) -> PreflabError | None:
        """What a run says of a write that failed (a full disk or a read-only folder while writing metrics, the
        model: safetensors' own error type, the summary): the file, the reason, what output_dir keeps and what to
        do; None when `err` is no failed write."""
        failure = write_failure(err)
        if failure is None:
            return None
        return WriteFailed(f"{failure.filename or self.cfg.output_dir}: {failure.strerror or failure}. "
                           f"{what_is_kept(self.cfg.output_dir)} Free disk space or fix the folder's "
                           "permissions, then run again.")

    @contextmanager
    def _agreed(self, what: str, values: tuple[float, ...] | None = None) -> Iterator[list]:
        """A block the main process writes in while the other ranks wait for it, in place of a barrier after it
        (preflab.rank_agreement.ranks_agree: one all-reduce of a failure flag): a write that fails on the main
        process (a full disk) stops every rank at once with the main's error, said as train() says a failed write
        (_failed_write: the file, what output_dir keeps), instead of the other ranks waiting at the barrier until
        the launcher or the collective's timeout kills them. One process: the block's error as train() raises it.
        values: this rank's numbers, carried to every rank by the same all-reduce (ranks_agree): the list the block
        gets holds every rank's after it."""
        with ranks_agree(what, values) as shared:
            try:
                yield shared
            except (OSError, SafetensorError) as err:
                failure = self._failed_write(err)
                if failure is None:
                    raise
                raise failure from err

    @contextmanager
    def main_writes(self) -> Iterator[None]:
        """A file the main process alone writes while the ranks go on together (a metrics.jsonl row,
        pair_margins.jsonl and eval_samples.jsonl at an evaluation, an online round's rounds/<r>.jsonl). With several
        processes inside train() its failure (a full disk, a read-only file; a tracker's error) is held on the main
        process, the first one, and raised at the ranks' next agreement (_agree_on_held_writes: at the end of the step,
        where the step's barrier stood, and after the final evaluation), so that every rank stops with it there. Raised
        at once, the main process left alone and the other ranks waited in the step's next collective until the
        launcher or the collective's timeout killed them, saying nothing. Until the agreement the main process goes on
        through the same collectives as the others (an evaluation, the step's all-reduces), so they stay paired; no
        collective of its own. One process, or outside train(): raised at once."""
        try:
            yield
        except Exception as err:  # noqa: BLE001 - held for the other ranks, raised at the agreement
            if not self._holds_write_failures:
                raise
            if self._held_write_failure is None:
                self._held_write_failure = err

    def _agree_on_held_writes(self, when: str, values: tuple[float, ...] | None = None) -> list:
        """Every rank learns whether a main-only write failed since the last agreement (main_writes) and all raise the
        main's error, said as train() says a failed write (the file, what output_dir keeps): one all-reduce of a
        failure flag (_agreed), in place of the barrier that stood at the end of every step. values: this rank's
        numbers carried by that all-reduce; returns every rank's, in rank order ([] without values)."""
        with self._agreed(f"the main process could not write the run's files {when}", values) as shared:
            held, self._held_write_failure = self._held_write_failure, None
            if held is not None:
                raise held
        return shared

    def _log(self, log, row: dict) -> None:
        """A metrics.jsonl row (and report_to's trackers) from the main process: its failure held (main_writes)."""
        with self.main_writes():
            log.write(row)

    def _add_neftune(self) -> None:
        """neftune_noise_alpha: NEFTune's hook on the trained model's input embeddings for the steps of this train()
        (preflab.models.neftune; transformers adds it at the start of Trainer.train and removes it at the end). Its
        noise is drawn only in training mode, so evaluation and the reference (a separate model, or a precomputed
        one) are clean; a LoRA policy's adapters-off reference forward, which runs in training mode, is noisy as in
        TRL's DPOTrainer with a PEFT model. Several processes: rank r's noise comes from generators of its own
        (preflab.models.neftune.RankNoise: seeded by seed, rank, step and forward), so the ranks draw independent
        noise (transformers' ranks share one seed and draw the same noise for batches of the same shape)."""
        alpha = self.cfg.neftune_noise_alpha
        if alpha is not None:
            acc = self.accelerator
            generators = (RankNoise(self.cfg.seed, acc.process_index, lambda: self.step)
                          if acc.num_processes > 1 else None)
            self._neftune_handle = add_neftune_hook(acc.unwrap_model(self.checkpoint_module), alpha, generators)

    def _training_forward(self):
        """self.forward, under activation_offloading with the tensors it saves for backward kept in host memory
        (preflab.models.activation_offload; the trained module's parameters and buffers stay where they are).
        Refused under FSDP and DeepSpeed, whose gathered parameters it would copy to the host whole; on a CPU it
        saves no memory (said once)."""
        if not self.cfg.activation_offloading:
            return self.forward
        from preflab.models.activation_offload import module_tensors, offloaded_forward

        acc = self.accelerator
        refusal = sharded_activation_offload_problem(self.cfg, sharding_engine(acc) if is_sharded(acc) else None)
        if refusal:
            raise ConfigError(refusal)
        if acc.device.type == "cpu" and self.main:
            print("preflab: note: activation_offloading on the CPU copies each saved activation within host memory: "
                  "the same losses and gradients, no memory saved (it offloads from a GPU).", flush=True)
        kept = module_tensors(acc.unwrap_model(self.checkpoint_module)) + list(self.params) + list(self.extra_params)
        return offloaded_forward(self.forward, kept)

    def _train(self) -> dict:
        """The outline: refuse what the model cannot train on this device and what the engine cannot save, resume or
        start, then every optimizer step (its metrics row, evaluation and checkpoint when due, a callback's stop),
        then the final evaluation, the best model and summary.json with the weights."""
        cfg, acc = self.cfg, self.accelerator
        self.out, self.main = Path(cfg.output_dir), acc.is_main_process
        self._holds_write_failures, self._held_write_failure = acc.num_processes > 1, None
        # every run kind (offline, sft, vlm, online, reward, diffusion) passes here once, before resume, before_train
        # (the reference precompute) and the first step: a FlexAttention model on the CPU would otherwise fail in
        # step 1's backward after minutes of compiling. Here, not in each constructor: one place for every run kind,
        # and a run built only to evaluate (preflab eval --task vlm: VisionTrainer.evaluate) runs no backward.
        # (OnlineRun, built only to train, also refuses in its constructor: before its "before" evaluation.)
        refuse_flex_training_on_cpu(self.checkpoint_module, acc.device, self.trained_model)
        self._check_engine_can_save()
        # this run's peak memory, not an earlier run's in the same process (a notebook: preflab.peak_memory)
        self._peak_since = reset_process_peak(acc.device)
        refusal = neftune_kind_refusal(cfg.neftune_noise_alpha, getattr(getattr(self, "kind", None), "name", None))
        if refusal:  # an unpaired or ranked-list loss type's rows (preflab.neftune_options)
            raise ConfigError(refusal)
        for note in (trl_epochs_default_note(cfg, self.total_steps),  # TRL trains 3 epochs by default
                     trl_save_default_note(cfg, self.total_steps)):  # TRL checkpoints every 500 steps by default
            if note and self.main:
                print(note, flush=True)
        # push_to_hub: the main process creates the repository; its failure (no token, no network) is agreed (one
        # all-reduce, only when push_to_hub is set), where the other ranks went on into the first step and waited
        with self._agreed("the main process could not start push_to_hub") if cfg.push_to_hub else nullcontext():
            self.hub = self._hub_pusher()
        if self.main:  # a GRPO run's greedy eval_reward: said when it trains, not at every config load (preflab eval)
            for said in greedy_eval_notes(cfg):
                print(f"preflab: note: {said}", file=sys.stderr, flush=True)
        self.best = BestModel(cfg.metric_for_best_model, cfg.greater_is_better)
        start_step = self._begin()
        if self.finished is not None:  # resumed at the last step of a run that had finished: nothing to train
            if self.main:
                print(f"preflab: note: {self.out} finished at step {start_step} (its summary.json, from the same "
                      "timeline as the checkpoint resumed): nothing to train; summary.json, the final model and "
                      "config.yaml are kept as they are. Raise max_steps to train on.", flush=True)
            return self.finished
        self._add_neftune()  # after before_train: a precomputed reference is scored without noise, as in TRL
        log = self.metrics_log
        bar = Progress(self.total_steps, start_step, self.main and not cfg.disable_tqdm, self.throughput_unit)
        self.checkpoint_module.train()
        self.step = start_step
        self.emit("on_train_begin")
        self._evaluate_on_start(start_step, log)
        # num_tokens (TRL: cumulative over the run) and the non-finite steps continue from a resumed checkpoint's
        # a checkpoint saved inside a logging window carries its steps: the resumed run's next row averages the
        # same steps as the uninterrupted run's (preflab.step.window_to_json)
        bad_in_row, window, last = 0, window_from_json(self.resumed_totals.get("log_window")), {}
        tokens_total, nonfinite = self.resumed_totals["num_tokens"], list(self.resumed_totals["nonfinite"])
        tokens_this_run = 0  # tokens_per_second: of this process's run only
        # train_tokens_per_second: over the wall seconds inside this run's optimizer steps only (the step's batches,
        # forward, backward, update and its token count), not its evaluations, saves, logging or callbacks, which
        # tokens_per_second (over the run's whole time, as transformers' Trainer) counts
        train_seconds = 0.0
        # runlog.zero_gradient_note: asked of a fresh run's first logging window only (a run that converged can
        # reach an exactly zero gradient later: egpo on the built-in game does)
        zero_gradient_unsaid = self._deepspeed_engine() is None and start_step == 0
        overflow_steps = 0  # fp16 GradScaler overflows (the scaler skipped the update and lowered its scale)
        evaluated = (None, {})  # (step, metrics) of the latest evaluation
        stopped_early = None  # {"step", "max_steps"} when a callback's control.should_training_stop ended the run
        started = self.clock()
        forward = emptying_forward(self._training_forward(), cfg.torch_empty_cache_steps, lambda: self.step)
        if cfg.torch_empty_cache_steps and acc.device.type == "cpu" and self.main:
            print(cpu_note(cfg.torch_empty_cache_steps), flush=True)
        # SIGTERM inside the steps of a run that saves checkpoints: a checkpoint at the end of the step under way,
        # then Terminated (preflab.stop_signal); elsewhere, and with save_steps 0, it stops at once as before
        with stop_deferred() if writes_checkpoints(cfg) else nullcontext():
            for step in range(start_step, self.total_steps):
                step_started = self.clock()
                mbs = self.micro_batches(step)
                # the rate this step's update uses: what transformers' Trainer logs (read before the scheduler
                # advances)
                learning_rate = self.scheduler.get_last_lr()[0]
                result = optimizer_step(mbs, forward, self.params, self.optimizer, self.scheduler, acc,
                                        cfg.max_grad_norm, sync_module=self.sync_module, extra_params=self.extra_params)
                if self.logs_step_time:  # a host clock after the step's one device read: no sync of its own
                    result.metrics["step_time"] = self.clock() - step_started
                    result.metric_counts["step_time"] = 1.0  # TRL's log(): the plain mean of the window's steps
                tokens = self._step_tokens(result, mbs)
                train_seconds += self.clock() - step_started
                tokens_total += tokens
                tokens_this_run += tokens
                bar.update(result, tokens)
                if result.skipped:
                    bad_in_row += 1
                    self._record_nonfinite(step + 1, result, bad_in_row, nonfinite, tokens_total, log)
                else:
                    bad_in_row = 0
                    overflow_steps += result.overflow
                window.append(result)
                self.step = step + 1
                self.emit("on_step_end")
                asked = self.control_flags()
                if self._log_due(step + 1) or asked["should_log"]:
                    last = {"step": step + 1, "learning_rate": learning_rate,
                            f"num_{self.throughput_unit}": tokens_total, **average_results(window),
                            **self.progress(step + 1),
                            f"{self.throughput_unit}_per_second": tokens_this_run / max(self.clock() - started, 1e-9),
                            f"train_{self.throughput_unit}_per_second": tokens_this_run / max(train_seconds, 1e-9)}
                    self._log(log, last)
                    self.emit("on_log", logs=dict(last))
                    said = zero_gradient_note(window, step + 1) if zero_gradient_unsaid else None
                    zero_gradient_unsaid = False
                    if said and self.main:
                        print(said, flush=True)
                    window = []
                evaluation, save = self._evaluate_if_due(step + 1, asked, log)
                if evaluation is not None:
                    evaluated = evaluation
                # the step's barrier: the ranks agree on the main's held write failures (one all-reduce; a save step
                # has one more, the save's own, so that no checkpoint is written after a failed write)
                # ... and on a SIGTERM any rank has had (preflab.stop_signal), carried by the same all-reduce: every
                # rank saves this step's checkpoint and stops here, within the scheduler's grace period
                shared = self._agree_on_held_writes(f"at step {step + 1}", (float(stop_requested()),))
                terminated = any(flag for flag, in shared)
                if save or terminated:
                    self.best.note_checkpoint(self.out, step + 1)
                    self._save_agreed(step + 1, {"nonfinite": nonfinite, "num_tokens": tokens_total,
                                                 "log_window": window_to_json(window)})
                if terminated:
                    stop = Terminated()
                    stop.checkpointed = True  # the CLI says no step is lost (preflab.cli.interrupted_message)
                    raise stop
                if asked["should_training_stop"] or self.control_flags()["should_training_stop"]:
                    stopped_early = {"step": step + 1, "max_steps": self.total_steps}
                    if self.main:
                        final = ("load_best_model_at_end: the final model is the best checkpoint's"
                                 if self.cfg.load_best_model_at_end else f"the final model is step {step + 1}'s")
                        print(f"preflab: note: a callback set control.should_training_stop at step {step + 1} of "
                              f"{self.total_steps}: training stops there ({final}).")
                    break
        bar.close()
        end = self.step  # total_steps, or the step a callback stopped the run at
        final_eval = evaluated[1] if evaluated[0] == end else self._evaluate_at_end(log)  # not run twice
        # one all-reduce per train(), which also brings every rank's peak memory so far (preflab.peak_memory) to all
        measure, peak, reserved = process_peak(acc.device)
        peaks = self._agree_on_held_writes("at the final evaluation", (peak, -1.0 if reserved is None else reserved))
        peak_memory = peak_memory_record(measure, acc.device.type, [(p, r if r >= 0 else None) for p, r in peaks],
                                         self._peak_since)
        self._load_best_at_end()
        best = {**self.best.state_dict(), "metric_for_best_model": self.best.key} if self.best.key else {}
        summary = {"global_step": end, "timeline": self.timeline,
                   **({"stopped_early": stopped_early} if stopped_early else {}), **best,
                   "train_examples_seen": (end - start_step) * self.plan.global_batch,
                   "resumed_from_step": start_step or None, "final_metrics": {**last, **final_eval},
                   "nonfinite_steps": nonfinite, "fp16_overflow_steps": overflow_steps,
                   "unused_rows_per_epoch": self.plan.unused_rows_per_epoch,
                   "data": self.data_report, **self.summary_extras(),
                   "runtime_s": self.clock() - started, "train_step_seconds": train_seconds,
                   "peak_memory": peak_memory,
                   "environment": {**environment(), **distributed_environment(acc)}}
        self._finish(summary)
        return summary

    # ------------------------------------------------------------------ the loop's phases
    def _check_engine_can_save(self) -> None:
        """Under a sharding engine (FSDP, DeepSpeed): refuse load_best_model_at_end, and what its checkpoints cannot
        hold when the run writes or resumes them (before the first step, not at the first save)."""
        cfg, acc = self.cfg, self.accelerator
        engine = sharding_engine(acc) if is_sharded(acc) else None
        refusal = (sharded_optimizer_problem(getattr(cfg, "optim", "adamw_torch_fused"), engine)
                   or sharded_best_model_problem(cfg, engine))
        if refusal:
            raise ConfigError(refusal)
        if is_sharded(acc) and (writes_checkpoints(cfg) or resume_requested(cfg)):
            self._check_sharded_extras()
            self._check_sharded_model_only()
            if self._deepspeed_engine() is not None:
                check_checkpointable(self._deepspeed_engine())

    def _begin(self) -> int:
        """Resume (or start afresh), put this run on output_dir's timeline.json, run before_train, write
        config.yaml and metric_panels.json (the panels the objective declares for its own metrics, as data:
        `preflab report` imports no code a run names) and open metrics.jsonl (self.metrics_log); returns the step the
        loop starts from."""
        objective = getattr(self, "objective", None)
        panels = declared_panels(objective)  # a malformed declaration is refused before any work
        start_step = self._maybe_resume()
        self.finished = finished_summary(self.out, start_step, self.total_steps, self.timeline[:-1])
        if self.finished is not None:  # _train returns it: nothing written, nothing trained
            return start_step
        self.accelerator.wait_for_everyone()  # every rank has read timeline.json before the main process replaces it
        # the main's writes here are agreed (one all-reduce each, twice per train()): a failed one stops every rank
        # with its error, where the others went on into before_train's or the first step's collectives and waited
        with self._agreed("the main process could not write timeline.json"):
            if self.main:
                self.out.mkdir(parents=True, exist_ok=True)
                write_timeline(self.out, self.timeline)
        self.before_train()
        # where the run started and the absolute paths of its relative local paths (preflab.launch_paths): beside
        # config.yaml, and in every checkpoint's trainer_state.json
        self.launch = config_launch_record(self.cfg)
        cfg, acc = self.cfg, self.accelerator
        with self._agreed("the main process could not write config.yaml, metric_panels.json and metrics.jsonl"):
            if self.main:
                save_run_config(cfg, self.out, self.launch)
                write_panel_data(self.out, objective, panels)
            # metrics.jsonl (main process): an earlier run's rows after the resumed step are dropped; report_to's
            # trackers start (a wandb without a login fails here)
            self.metrics_log = MetricsLog(self.out, self.main, resume_step=start_step or None,
                                          tracker=start_trackers(acc, cfg, self.out) if self.main else None)
        return start_step

    def _step_tokens(self, result, mbs) -> int:
        """All ranks' tokens of the step: summed in the step's own all-reduce (no read of its own), else here."""
        tokens = result.num_tokens
        if tokens is None:
            tokens = sum(mb.num_tokens for mb in mbs)
            acc = self.accelerator
            if acc.num_processes > 1:
                tokens = int(acc.reduce(torch.tensor(tokens, device=acc.device), reduction="sum").item())
        return tokens

    def _record_nonfinite(self, step: int, result, bad_in_row: int, nonfinite: list, tokens_total: int, log) -> None:
        """Optimizer step `step` (1-based) was skipped as non-finite: added to `nonfinite` and metrics.jsonl; the
        max_nonfinite_steps-th in a row saves a checkpoint (the weights from before the first bad step) and raises
        NonFiniteError."""
        cfg = self.cfg
        what = "weights" if result.nonfinite_weights else "loss_or_grad"
        nonfinite.append({"step": step, "row_ids": result.row_ids, "nonfinite": what})
        self._log(log, {"step": step, "nonfinite": True, "nonfinite_what": what, "row_ids": result.row_ids})
        if bad_in_row >= cfg.max_nonfinite_steps:
            # agreed: a failed write stops every rank with the main's error (the others raised NonFiniteError
            # naming a checkpoint that was not written); its path on every rank (the main returns it)
            path = self._save_agreed(step, {"nonfinite": nonfinite, "num_tokens": tokens_total},
                                     f"the save of the weights before the non-finite steps at step {step} failed",
                                     announced=False) or self.out / f"checkpoint-{step}"
            cause = ("the update would have made the weights inf/NaN (rolled back; is learning_rate "
                     f"{cfg.learning_rate:g} far too large?)" if result.nonfinite_weights else
                     "the loss or gradient norm was inf/NaN")
            fix = "Lower the learning rate or check the data."
            if step == bad_in_row and not result.nonfinite_weights:  # no update ever applied: the starting weights
                fix = (f"Every step from the first was non-finite on the starting weights (no update was applied, so "
                       f"the learning rate is not the cause): check the objective (loss_type {cfg.loss_type}; "
                       "`preflab lab check` runs its contract) and the data.")
            raise NonFiniteError(
                f"{bad_in_row} non-finite steps in a row (last: {cause}; rows {result.row_ids}); the weights "
                f"are those from before the first bad step, saved in {path}. {fix}")

    def _evaluate_if_due(self, step: int, asked: dict, log) -> tuple[tuple | None, bool]:
        """After optimizer step `step` (1-based): evaluate when due (eval_steps, a callback's should_evaluate, the
        last step where the best model depends on it), and whether to save a checkpoint (save_steps, should_save;
        with save_strategy: best, a new best). Returns ((step, metrics), None when not evaluated; save)."""
        cfg = self.cfg
        # transformers' DefaultFlowCallback at the last step: evaluate (eval_strategy steps) and save (save_strategy
        # steps), in that order (its _maybe_log_save_evaluate), so a TRL run's last checkpoint-N exists here too (a
        # resume that extends the run starts from it, not from the last multiple of save_steps) and holds the last
        # step's evaluation; the last step's evaluation competes for the best (the run's final evaluation, after the
        # loop, is then this one)
        last = step == self.total_steps
        best_at_end = last and (saves_best(cfg) or cfg.load_best_model_at_end)
        save = ((cfg.save_steps and (step % cfg.save_steps == 0 or last))
                or asked["should_save"])
        due = (cfg.eval_steps and (step % cfg.eval_steps == 0 or last)) or (best_at_end and saves_best(cfg))
        if not ((due and not self._eval_delayed(step)) or asked["should_evaluate"]):
            return None, save
        metrics = self.evaluate()
        new_best = False
        if metrics:  # with `epoch`, as transformers' log() adds it to every row (eval rows too)
            self._log(log, {"step": step, **self.progress(step), **metrics})
            self.emit("on_evaluate", metrics=dict(metrics))
            # after on_evaluate (transformers)
            same = self._same_on_every_rank(metrics)
            new_best = self.best.update(same, step)
            step_on_evaluation(self.scheduler, same, self.best.key)  # reduce_lr_on_plateau (transformers' _evaluate)
        if saves_best(cfg):  # transformers: should_save = is_new_best_metric at an evaluation
            if not metrics:
                raise no_eval_set_for_best(f"the evaluation at step {step} gave no metrics (no eval set)")
            save = new_best
        return (step, metrics), save

    def _evaluate_on_start(self, step: int, log) -> None:
        """eval_on_start (transformers' TrainingArguments.eval_on_start): one evaluation of the starting weights
        before the first optimizer step, as Trainer._inner_training_loop runs it right after on_train_begin. Its row
        is logged at the run's starting step: 0, or on a resumed run the checkpoint's step (transformers evaluates
        there again, at state.global_step). It emits on_evaluate (Trainer.evaluate does) but does not compete for
        the best model: transformers' eval_on_start goes through Trainer._evaluate, which does not call
        _determine_best_metric (only _maybe_log_save_evaluate does), and saves no checkpoint."""
        if not self.cfg.eval_on_start:
            return
        metrics = self.evaluate()
        if not metrics:  # the config check refuses these configs; a run built in code (the Python API) may get here
            raise ConfigError("eval_on_start: true, but this run's evaluation gives no metrics (no eval set), so "
                              "there is no starting model's evaluation to log; give it an eval set or remove "
                              "eval_on_start.")
        self._log(log, {"step": step, **self.progress(step), **metrics})
        self.emit("on_evaluate", metrics=dict(metrics))

    def _same_on_every_rank(self, metrics: dict) -> dict:
        """`metrics` with metric_for_best_model's value the main process's on every rank, so every rank takes the
        same best-model (and early-stopping) decisions."""
        key, acc = self.best.key, self.accelerator
        if key is None or key not in metrics or acc.num_processes == 1:
            return metrics
        from accelerate.utils import broadcast

        value = broadcast(torch.tensor([float(metrics[key])], dtype=torch.float64, device=acc.device), from_process=0)
        return {**metrics, key: float(value.item())}

    def _eval_delayed(self, step: int) -> bool:
        """eval_delay (transformers' TrainingArguments.eval_delay, read by its DefaultFlowCallback): no scheduled
        evaluation after step `step` while step < eval_delay, or with eval_strategy epoch while the epoch reached
        (step / steps per epoch) < eval_delay. The end-of-run evaluation waits too; eval_on_start and a callback's
        should_evaluate do not (transformers checks eval_delay only for the schedule)."""
        delay = getattr(self.cfg, "eval_delay", 0)
        if not delay:
            return False
        reached = self.progress(step)["epoch"] if self.cfg.eval_strategy == "epoch" else step
        return reached < delay

    def _evaluate_at_end(self, log) -> dict:
        """The final evaluation, after the last step (self.step), when that step was not just evaluated (and
        eval_delay has passed)."""
        if self._eval_delayed(self.step):
            return {}
        final_eval = self.evaluate()
        if final_eval:
            self._log(log, {"step": self.step, **self.progress(self.step), **final_eval})
            self.emit("on_evaluate", metrics=dict(final_eval))
        return final_eval

    def _load_best_at_end(self) -> None:
        """load_best_model_at_end: the best checkpoint's weights become the final model, and its extras (every
        checkpoint_extras tensor: an objective's own parameters, an extras producer's) replace the last step's on
        every rank, so what save_model writes beside the model is the same step's (with save_total_limit 1, only
        that checkpoint is kept, as transformers)."""
        cfg, acc = self.cfg, self.accelerator
        if cfg.load_best_model_at_end and self.best.best_model_checkpoint is not None:
            # no barrier before the load: the best checkpoint's save was agreed by every rank (_save_agreed) once
            # written; the main's removal of the others is agreed instead (a failure stops every rank)
            load_best_weights(self.best.best_model_checkpoint, acc.unwrap_model(self.checkpoint_module),
                              self.restored_extras(Path(self.best.best_model_checkpoint), self.best.best_global_step))
            with self._agreed("the main process could not keep only the best checkpoint"):
                if self.main:
                    print(f"preflab: {self.best.loaded_note()}")
                    if cfg.save_total_limit == 1:  # transformers: only the best checkpoint is left
                        remove_all_but_best(self.out, self.timeline, self.best.best_model_checkpoint)

    def _finish(self, summary: dict) -> None:
        """Gather the weights under a sharding engine, write the model, summary.json and the card (main process),
        on_train_end, and end accelerate's training (its trackers only, when a recipe's next stage keeps the
        process group; otherwise the DDP wrapper is dropped first: _drop_ddp_wrapper)."""
        acc = self.accelerator
        # sharded engines: every rank takes part in gathering the full weights; save_model may read them
        if is_sharded(acc):
            self.final_state_dict, *extra = gather_full_states(acc, self.sync_module,
                                                               [self.checkpoint_module, *self.extra_modules.values()])
            self.final_extra_states = dict(zip(self.extra_modules, extra))
        else:
            self.final_state_dict = None
        if not self.save_final_model:
            summary["final_model_saved"] = False
        # the other ranks wait for the main's final files (one all-reduce per train()): before, they returned from
        # train() while the main still wrote, and a failed write stopped the main alone
        with self._agreed("the main process could not write the final model and summary.json"):
            if self.main:
                if self.save_final_model:
                    self.save_model()
                else:
                    share_run_files(self.out)
                write_summary(self.out, summary)
                self.write_card(summary)
        self.emit("on_train_end")
        if getattr(acc, "preflab_keeps_process_group", False):  # the next stage of a recipe uses it
            for tracker in acc.trackers:
                tracker.finish()
        else:
            self._drop_ddp_wrapper()
            acc.end_training()
        if getattr(self, "hub", None) is not None:  # last: the model, summary, card and trackers' files are written
            if self.save_final_model:
                self.hub.push_final(self.out)
            else:
                print(f"preflab: note: push_to_hub: this run saves no final model, so nothing of {self.out} is "
                      f"uploaded at the end (hub_strategy {self.cfg.hub_strategy}).", flush=True)

    def write_model(self) -> None:
        """Write the final model into self.out (each kind of run its own: weights, tokenizer or processor, a
        pipeline's folders). Called only by save_model, which points self.out at a staging folder meanwhile."""
        raise NotImplementedError(f"{type(self).__name__} has no write_model")

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """The final model (write_model) and an objective's own trained tensors (save_objective_state) into
        output_dir (default: the run's), as train() writes them at its end and transformers' Trainer.save_model
        does when called after train(): from the main process only (elsewhere nothing). Every file is written into
        a fresh folder inside output_dir first and then renamed onto its place (preflab.final_save.
        staged_final_save), so a save that fails or is killed part way leaves the previous files byte for byte and
        no truncated model.safetensors; output_dir is marked incomplete until the last file is in place, and every
        preflab loader refuses it meanwhile ("final model incomplete: ..."). self.out points at that folder while the writers run. The files get the
        umask's mode (share_run_files: safetensors writes 0600) like the run's other files."""
        if not self.accelerator.is_main_process:
            return
        run_out = self.__dict__.get("out")  # set by train(); a save before train() writes to the config's folder
        target = Path(output_dir if output_dir is not None else run_out or self.cfg.output_dir)
        with staged_final_save(target) as stage:
            self.out = stage
            try:
                with progress_bars_off(bool(getattr(self.cfg, "disable_tqdm", False))):  # save_pretrained's "Writing model shards" bar
                    self.write_model()
                self.save_objective_state()
            finally:
                if run_out is None:
                    del self.out
                else:
                    self.out = run_out
        share_run_files(target)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None,
                    revision=None, private=None, **card_fields):
        """transformers' Trainer.push_to_hub, called after train() (TRL's scripts do): upload output_dir's final
        model folder (preflab.hub_push.push_run's files) to hub_model_id (else output_dir's name), from the main
        process (None elsewhere); returns the repo_id. token / revision / private: over the config's. Model card
        fields (TRL's dataset_name, tags, ...) are not written into preflab's card: said once. Uploads block."""
        from preflab.hub_push import HubPusher, push_run

        if not self.accelerator.is_main_process:
            return None
        if card_fields:
            print(f"preflab: note: push_to_hub({', '.join(sorted(card_fields))}=...): preflab's model card "
                  "(README.md) is its own and is uploaded as written.", flush=True)
        cfg = self.cfg
        pusher = getattr(self, "hub", None) or HubPusher.from_config(cfg)
        repo = pusher.repo_id if pusher is not None and pusher.repo_id else cfg.hub_model_id
        return push_run(cfg.output_dir, repo, private if private is not None else cfg.hub_private_repo,
                        revision if revision is not None else cfg.hub_revision,
                        token if token is not None else cfg.hub_token, message=commit_message or "End of training",
                        from_python=True)

    def _hub_pusher(self):
        """push_to_hub: the main process's HubPusher, its repository created now (a bad token or name fails before
        the first step, as transformers' Trainer creates it when built); None elsewhere. hub options set without
        push_to_hub upload nothing: said once."""
        from preflab.config_defaults import set_options
        from preflab.hub_push import HubPusher

        cfg = self.cfg
        if not self.main:
            return None
        if not cfg.push_to_hub:
            unused = set_options(cfg, ("hub_model_id", "hub_strategy", "hub_private_repo", "hub_token",
                                       "hub_revision"))
            if unused:
                print(f"preflab: note: {', '.join(unused)} without push_to_hub: true: nothing is uploaded during "
                      "training (trainer.push_to_hub() or `preflab push OUTPUT_DIR` uploads afterwards).", flush=True)
            return None
        pusher = HubPusher.from_config(cfg)
        repo = pusher.create_repo()
        print(f"preflab: push_to_hub: uploading to https://huggingface.co/{repo} (hub_strategy "
              f"{cfg.hub_strategy}).", flush=True)
        return pusher

    def _drop_ddp_wrapper(self) -> None:
        """Before accelerate's end_training closes the process group of a DDP run (several processes, no sharding
        engine): every attribute of this run that holds the prepared module (sync_module: the DDP wrapper, or
        torch.compile's module around it under accelerate's dynamo_backend; the offline and online runs' scorer, the
        reward run's model and checkpoint_module) holds the module inside the wrapper instead, and the wrapper is
        freed now (gc.collect: the first DDP wrapper of a process can be held by a reference cycle that torch's lazy
        imports leave in its constructor). The wrapper's reducer holds the process group, which end_training only
        removes from torch's registry (gloo's shutdown does nothing): a finished run kept to interpreter exit (a
        script's module-level `trainer = Trainer(...); trainer.train()`) kept the group's C++ object, worker threads
        and sockets alive until Python's finalization, where freeing them can abort the process (SIGABRT, "terminate
        called without an active exception"). Use after train() (evaluate, score) runs the same module, without the
        wrapper's communication. One process, FSDP2 and DeepSpeed: nothing changes (no DDP wrapper; a sharding
        engine's parameters hold the group themselves, see docs/scaling.md). accelerate's own list of prepared
        models holds the unwrapped module under DDP (it is listed before it is wrapped)."""
        prepared = self.sync_module
        wrapper = getattr(prepared, "_orig_mod", prepared)
        if not isinstance(wrapper, torch.nn.parallel.DistributedDataParallel):
            return
        module = self.accelerator.unwrap_model(wrapper)
        for name in [name for name, value in vars(self).items() if value is prepared or value is wrapper]:
            setattr(self, name, module)
        del prepared, wrapper
        gc.collect()

    def progress(self, step: int) -> dict:
        """Where the run is after `step` optimizer steps, in each metrics row: TRL's `epoch` (passes over the data)."""
        return {"epoch": step / self.plan.steps_per_epoch}

    def _log_due(self, step: int) -> bool:
        """A metrics row after optimizer step `step` (1-based): every logging_steps, at the last step, and after the
        first step with logging_first_step (transformers' DefaultFlowCallback: global_step == 1; a resumed run
        past step 1 does not log its first step again)."""
        cfg = self.cfg
        return (step % cfg.logging_steps == 0 or step == self.total_steps
                or (step == 1 and cfg.logging_first_step))

    # ------------------------------------------------------------------ persistence
    def _save(self, step: int, state: dict) -> Path | None:
        """checkpoint-<step>: under FSDP2 every rank writes its shards (preflab.sharded_checkpoint), under DeepSpeed
        its ZeRO partition (preflab.deepspeed_checkpoint); otherwise the main process writes the full tensors
        (returns None on the other ranks)."""
        acc = self.accelerator
        position = self.data_position()  # streaming: where the data stream stands
        if position is not None:
            state = {**state, "data_position": position}
        state = {**state, "stateful_callbacks": callback_states(self.callbacks)}  # EarlyStopping's patience counter
        state = {**state, **self.best.state_dict(), "config": self.cfg.to_dict(),
                 "launch": getattr(self, "launch", None) or config_launch_record(self.cfg),
                 "timeline": self.timeline,
                 "world_size": acc.num_processes, "engine": sharding_engine(acc),
                 "data_fingerprint": self.data_fingerprint(), "user_code": user_code(self.cfg.to_dict()),
                 # the positions max_length was capped at (models.load.cap_max_length): a resume caps alike
                 "model_positions": getattr(self.cfg, "model_positions", None),
                 # the trained model's own architecture: its eval rebuilds this, not model_name_or_path's
                 "model_config": model_architecture(acc.unwrap_model(self.checkpoint_module)),
                 **self.checkpoint_record(), **checkpoint_identity()}
        if is_sharded(acc):
            self._check_sharded_extras()
            self._check_sharded_model_only()
            if type(self).beside_checkpoint is not TrainingRun.beside_checkpoint:  # a run's own files: agreed first
                with self._agreed(f"the save at step {step} failed"):  # (one all-reduce more per save)
                    state = {**state, **(self.beside_checkpoint(step) if self.main else {})}
            if self._deepspeed_engine() is not None:
                return save_deepspeed_checkpoint(self.out, step, self._deepspeed_engine(), self.scheduler, state,
                                                 self.main, self.cfg.save_total_limit)
            return save_sharded_checkpoint(self.out, step, self.sync_module, self.optimizer, self.scheduler, state,
                                           self.main, self.cfg.save_total_limit)
        model_only = bool(self.cfg.save_only_model)
        rank_rngs = self._rank_rngs() if acc.num_processes > 1 and not model_only else None  # collective
        if not self.main:
            return None
        state = {**state, **self.beside_checkpoint(step)}  # after the collective: a failure here leaves none unpaired
        return save_checkpoint(self.out, step, acc.unwrap_model(self.checkpoint_module),
                               self.optimizer, self.scheduler, state,
                               self.cfg.save_total_limit, extra_tensors=self.checkpoint_extras(),
                               model_only=model_only, rank_rngs=rank_rngs)

    def _save_agreed(self, step: int, state: dict, what: str | None = None, announced: bool = True) -> Path | None:
        """A step's save (checkpoint-<step>: _save; its upload under push_to_hub, as hub_strategy says, from the
        main process; on_save), agreed by every rank (_agreed: one all-reduce per save): when the main process's
        single-file checkpoint write fails (a full disk), every rank stops at once with its error (the checkpoint,
        what is kept; the .tmp folder is removed by save_checkpoint), said as `what` (default: the save at step N
        failed). FSDP2 and DeepSpeed save collectively and agree inside (preflab.sharded_checkpoint): that save is
        outside the block, whose error is already the same on every rank; the upload and on_save are inside.
        announced False (the save before a NonFiniteError): neither upload nor on_save."""
        sharded = is_sharded(self.accelerator)
        path = self._save(step, state) if sharded else None
        with self._agreed(what or f"the save at step {step} failed"):
            if not sharded:
                path = self._save(step, state)
            if announced and getattr(self, "hub", None) is not None:  # the main process's pusher (None elsewhere)
                self.hub.push_checkpoint(path, step)
            if announced:
                self.emit("on_save", checkpoint=path)
        return path

    def _rank_rngs(self) -> list:
        """Every rank's RNG states (preflab.checkpoint.rng_parts), in rank order, gathered to every rank: the main
        process writes them into the checkpoint as rng-rank<r>, so each rank resumes its own stream (the streams part
        ways when the ranks draw different amounts: CUDA dropout on batches of other shapes, a callback's draws)."""
        from accelerate.utils import gather_object

        return gather_object([rng_parts()])

    def _deepspeed_engine(self):
        """The DeepSpeedEngine accelerate prepared, None without DeepSpeed."""
        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        return wrapped.engine if wrapped is not None else None

    def _check_sharded_extras(self) -> None:
        if self.checkpoint_extras():
            engine = sharding_engine(self.accelerator)
            raise ConfigError(
                f"objective {getattr(self.cfg, 'loss_type', '?')!r} has parameters of its own (outside the model); "
                "preflab's sharded checkpoints (FSDP2, DeepSpeed) hold the model and its optimizer state only. Set "
                f"save_steps: 0 and no resume_from_checkpoint under {engine}, or train with "
                "examples/accelerate/ddp.yaml.")

    def _check_sharded_model_only(self) -> None:
        refusal = sharded_model_only_problem(self.cfg, sharding_engine(self.accelerator))
        if refusal:
            raise ConfigError(refusal)

    def _verify_for_resume(self, path: Path) -> None:
        """Check the files of checkpoint `path` this rank will read against its COMPLETE marker, each file hashed
        by one rank only (preflab.resume_verify); collective, every rank raises the same PreflabError naming the
        damaged file. Where this rank's reads cannot be worked out (a checkpoint this run will refuse, a broken
        safetensors header) it counts as reading every file, which the ranks then share."""
        try:
            if is_deepspeed_checkpoint(path):
                reads = deepspeed_reads(path, self.accelerator.process_index)
            elif is_sharded_checkpoint(path):
                reads = sharded_reads(path, self.sync_module, self.optimizer)
            else:
                reads = plain_reads(path)
        except Exception:  # noqa: BLE001 - only the choice of files to check; the load reports its own errors
            reads = plain_reads(path)
        verify_rank_reads(path, reads)

    def _maybe_resume(self) -> int:
        """Restore the checkpoint resume_from_checkpoint names (true: the newest intact one of output_dir's
        timeline, see preflab.checkpoint) and set this run's timeline; returns the step to start from."""
        run_id = uuid.uuid4().hex[:12]
        self.timeline = [[run_id, 0]]
        self.resumed_totals = {"num_tokens": 0, "nonfinite": []}
        if not resume_requested(self.cfg):
            return 0
        spec = self.cfg.resume_from_checkpoint
        say = print if self.main else (lambda *a, **k: None)
        if spec in (True, "true", "latest"):
            path = resume_checkpoint(self.out, warn=say, verify=self._verify_for_resume)
            if path is None:
                raise PreflabError(no_checkpoint_to_resume(self.out))
        else:
            path = Path(spec)
            self._verify_for_resume(path)
        saved = json.loads((path / "trainer_state.json").read_text())
        refuse_model_only(path, saved)
        step = int(saved["global_step"])
        if step > self.total_steps:
            raise ConfigError(f"resume_from_checkpoint: {path} is at step {step}, beyond this run's last step "
                              f"{self.total_steps} (max_steps / num_train_epochs); raise max_steps to {step} or more.")
        acc = self.accelerator
        check_deepspeed_resume(saved, path, sharding_engine(acc), deepspeed_stage(acc), acc.num_processes)
        check_checkpoint_version(saved, path, note=say)
        check_saved_config(saved, self.cfg, path, acc.num_processes, note=say)
        check_resume_data(saved, self.data_fingerprint(), self.cfg, path, note=say)
        check_resume_code(saved, path, self.cfg, note=say)
        saved_world = saved.get("world_size", "an unrecorded number of")
        if saved.get("world_size", acc.num_processes) != acc.num_processes:
            say(f"preflab: note: {path} was written on {saved_world} process(es); resuming on "
                f"{acc.num_processes}.")
        if is_deepspeed_checkpoint(path):  # the same ZeRO stage and world size (checked above)
            if self.checkpoint_extras():
                self._check_sharded_extras()
            state = load_deepspeed_checkpoint(path, self._deepspeed_engine(), self.scheduler)
        elif is_sharded_checkpoint(path):  # any world size: DCP reshards
            if self.checkpoint_extras():  # this run keeps them outside any engine's module (one process, DDP)
                raise ConfigError(
                    f"resume_from_checkpoint: {path} was written under {saved.get('engine', 'FSDP2')}, whose "
                    f"checkpoint holds {getattr(self.cfg, 'loss_type', '?')}'s parameters outside the model inside "
                    "the engine's module (preflab.loops.engine_extras); this run (no sharding engine, "
                    f"{acc.num_processes} process(es)) keeps them outside it and would not restore them. Resume it "
                    "under the engine that wrote it (any number of processes), or start this run again without "
                    "resume_from_checkpoint.")
            state = load_sharded_checkpoint(path, self.sync_module, self.optimizer, self.scheduler)
        elif is_sharded(acc):
            raise ConfigError(
                f"resume_from_checkpoint: {path} holds full tensors written on {saved_world} process(es) without "
                f"sharding ({saved.get('engine', 'one process or DDP')}); this run shards them with "
                f"{sharding_engine(acc)} on {acc.num_processes} processes, and preflab resumes a full-tensor "
                "checkpoint only without sharding. Resume it with examples/accelerate/ddp.yaml or one process, or "
                "start this run again without resume_from_checkpoint.")
        else:
            state = load_checkpoint(path, acc.unwrap_model(self.checkpoint_module), self.optimizer,
                                    self.scheduler, extra_tensors=self.restored_extras(path, step, say), verify=False)
        moved = follow_schedule(self.scheduler)
        if moved is not None:  # max_steps / num_train_epochs changed: the checkpoint's rate was another schedule's
            say(f"preflab: note: the learning-rate schedule follows this run's length ({self.total_steps} steps): "
                f"step {step + 1} trains at {moved[1]:.4g}, not at the checkpoint's {moved[0]:.4g}.")
        self.restore_data_position(state.get("data_position"), step)
        self.best.load_state_dict(state)  # best_metric / best_global_step / best_model_checkpoint continue
        restore_callback_states(self.callbacks, state.get("stateful_callbacks"), note=say)
        self.resumed_totals = {"num_tokens": int(state.get("num_tokens") or 0),
                               "nonfinite": [r for r in state.get("nonfinite") or [] if r.get("step", 0) <= step],
                               "log_window": state.get("log_window") or []}
        parent = state.get("timeline") if isinstance(state.get("timeline"), list) else [["legacy", 0]]
        self.timeline = [*parent, [run_id, step]]
        self.resumed_from = path  # runs that keep state beside their checkpoints read it from path's run folder
        say(f"preflab: resumed from {path} at step {step}")
        return step
