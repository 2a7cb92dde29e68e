"""TrainingRun's callbacks: transformers TrainerCallback objects receive the events in Trainer's order."""
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

from preflab.config import config_from_dict
from preflab.loops.offline import Trainer
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def _record(self, name, args, state, control, **kwargs):
        extra = sorted(kwargs)
        self.events.append((name, state.global_step, extra))

    def on_train_begin(self, args, state, control, **kwargs):
        assert state.max_steps == 3 and args.max_steps == 3  # args is the TrainConfig
        self._record("train_begin", args, state, control, **kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        self._record("step_end", args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        assert logs["step"] == state.global_step and "loss" in logs
        self._record("log", args, state, control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        assert "eval_loss" in metrics
        self._record("evaluate", args, state, control)

    def on_save(self, args, state, control, checkpoint=None, **kwargs):
        assert checkpoint.name == f"checkpoint-{state.global_step}"
        self._record("save", args, state, control)

    def on_train_end(self, args, state, control, **kwargs):
        self._record("train_end", args, state, control, **kwargs)


def test_callbacks_get_trainer_events_in_order(tmp_path):
    torch.set_num_threads(1)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic",
                                output_dir=str(tmp_path), learning_rate=1e-3, per_device_train_batch_size=4,
                                max_steps=3, logging_steps=2, eval_steps=2, save_steps=2, disable_tqdm=True,
                                use_cpu=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, arch="llama", seed=0)
    recorder = Recorder()
    data = synthetic_pairs()
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=data[:24], eval_data=data[24:],
            callbacks=[recorder]).train()
    assert [(e, s) for e, s, _ in recorder.events] == [
        ("train_begin", 0), ("step_end", 1), ("step_end", 2), ("log", 2), ("evaluate", 2), ("save", 2),
        # the last step, off both schedules: evaluated then saved, as transformers' DefaultFlowCallback and
        # _maybe_log_save_evaluate do (user trial 12: it was not saved)
        ("step_end", 3), ("log", 3), ("evaluate", 3), ("save", 3), ("train_end", 3)]


def test_several_stateful_callbacks_of_one_class_are_restored_in_order():
    """callback_states saves a list for several callbacks of one class (transformers' TrainerState layout);
    restore_callback_states gives each its own saved attributes, in order, and says which start afresh."""
    from transformers import EarlyStoppingCallback

    from preflab.loops.callback_state import callback_states, restore_callback_states

    saved_from = [EarlyStoppingCallback(early_stopping_patience=3), EarlyStoppingCallback(early_stopping_patience=5)]
    saved_from[0].early_stopping_patience_counter, saved_from[1].early_stopping_patience_counter = 1, 2
    saved = callback_states(saved_from)
    assert [s["attributes"]["early_stopping_patience_counter"] for s in saved["EarlyStoppingCallback"]] == [1, 2]
    now = [EarlyStoppingCallback(early_stopping_patience=3), EarlyStoppingCallback(early_stopping_patience=5),
           EarlyStoppingCallback(early_stopping_patience=7)]
    notes = []
    assert restore_callback_states(now, saved, note=notes.append) == 2
    assert [cb.early_stopping_patience_counter for cb in now] == [1, 2, 0]
    assert notes == ["preflab: note: callbacks at resume: EarlyStoppingCallback start afresh (the checkpoint holds "
                     "no state for them)."]


def test_control_flags_a_callback_sets_hold_for_its_step_only():
    """transformers' _new_step: should_log / should_evaluate / should_save are cleared after the step that acted on
    them; should_training_stop stays."""
    from types import SimpleNamespace

    from transformers import TrainerControl

    from preflab.loops.callback_state import CallbackEvents

    run = CallbackEvents()
    run.callbacks = [object()]
    run.accelerator = SimpleNamespace(num_processes=1)
    run._cb_control = TrainerControl(should_save=True, should_evaluate=True, should_training_stop=True)
    assert run.control_flags() == {"should_log": False, "should_evaluate": True, "should_save": True,
                                   "should_training_stop": True}
    assert run.control_flags() == {"should_log": False, "should_evaluate": False, "should_save": False,
                                   "should_training_stop": True}


def test_a_run_without_callbacks_reads_and_writes_their_state_without_importing_transformers_trainer():
    """callback_states / restore_callback_states with no callbacks (every `preflab train` run) import nothing:
    transformers.trainer_callback imports peft, which imports bitsandbytes where installed; at a run's first
    checkpoint that cost about 10 s on a 2-core CPU machine and printed bitsandbytes' kernel warning once per
    process (seen under 2 processes). With a stateful callback the state is read as before."""
    import subprocess

    code = ("import sys\nfrom preflab.loops.callback_state import callback_states, restore_callback_states\n"
            "assert callback_states([]) == {} and callback_states(None) == {}\n"
            "assert restore_callback_states([], {}) == 0\n"
            "print(sorted(m for m in ('transformers.trainer_callback', 'peft', 'bitsandbytes') if m in sys.modules))\n"
            "from transformers import EarlyStoppingCallback\n"
            "cb = EarlyStoppingCallback(early_stopping_patience=3)\ncb.early_stopping_patience_counter = 2\n"
            "print(callback_states([cb])['EarlyStoppingCallback']['attributes'])\n")
    import preflab

    env = {"PYTHONPATH": str(Path(preflab.__file__).parents[1]), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["[]", "{'early_stopping_patience_counter': 2}"]
