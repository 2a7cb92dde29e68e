"""The notebook user of the Python API (user trial 25): several runs in one Python process, each on a model object
and rows built in code. A run's results must not depend on what ran before it in the process (seeds, accelerate's
state, global settings), the process-wide settings a run does not own must be left as they were, and a DPO policy
passed without a reference is refused naming how to make one."""
import os
import warnings

import pytest
import torch


def _rows(n=8):
    return [{"prompt": f"what is {i} plus {i} ?", "chosen": f" the answer is {2 * i} .",
             "rejected": f" the dog ran {i}"} for i in range(n)]


def _model(tok, seed):
    """The user's own tiny GPT-2 (dropout 0.1, kept on below: training draws from the torch RNG)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=96,
                                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                      pad_token_id=tok.pad_token_id))


def _config(out, **overrides):
    from preflab.config import config_from_dict

    params = dict(model_name_or_path="my-gpt2", dataset_name="in-memory", output_dir=str(out), max_steps=3,
                  per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1, disable_tqdm=True,
                  use_cpu=True, report_to=[])
    return config_from_dict({**params, **overrides})


def _simpo_run(out, tok):
    """Run B: SimPO on a datasets.Dataset with dropout on (its steps draw from the RNG the seed sets)."""
    import datasets

    from preflab.loops.offline import Trainer

    policy = _model(tok, seed=1)
    summary = Trainer(_config(out, loss_type="simpo", seed=11, disable_dropout=False), policy=policy, tokenizer=tok,
                      train_data=datasets.Dataset.from_list(_rows())).train()
    return summary, {k: v.detach().clone() for k, v in policy.state_dict().items()}


def _process_settings():
    import transformers

    return dict(threads=torch.get_num_threads(), deterministic=torch.are_deterministic_algorithms_enabled(),
                filters=list(warnings.filters), verbosity=transformers.logging.get_verbosity(),
                grad=torch.is_grad_enabled(), dtype=torch.get_default_dtype(), fds=len(os.listdir("/proc/self/fd")))


def test_a_run_after_another_in_the_same_process_equals_it_run_first(tmp_path):
    """B (SimPO, dropout on), then A (DPO on a list of dicts, other seed, checkpoints, a callback, an eval set),
    then B again in a new folder: the second B's metrics and weights equal the first's exactly, so nothing A left
    in the process (RNG state, accelerate's state, the reference cache, a callback) reaches B. (By hand in this
    trial: B after A in one process and B alone in a fresh `python` process gave the same final_metrics.) A leaves
    the process-wide settings it does not own as it found them, and opens no file it does not close."""
    from transformers import TrainerCallback

    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer("whitespace")
    first, first_weights = _simpo_run(tmp_path / "b1", tok)

    class Stopper(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step >= 2

    before = _process_settings()
    policy = _model(tok, seed=0)
    a = Trainer(_config(tmp_path / "a", seed=7, save_steps=1, eval_steps=1), policy=policy, ref=frozen_copy(policy),
                tokenizer=tok, train_data=_rows(), eval_data=_rows(4), callbacks=[Stopper()])
    assert a.train()["global_step"] == 2
    assert _process_settings() == before

    second, second_weights = _simpo_run(tmp_path / "b2", tok)
    timings = ("tokens_per_second", "train_tokens_per_second")  # wall clocks, the only keys allowed to differ
    values = [{k: v for k, v in run["final_metrics"].items() if k not in timings} for run in (first, second)]
    assert values[0] == values[1] and len(values[0]) > 10
    assert first["final_metrics"]["loss"] > 0
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


def test_a_dpo_policy_without_a_reference_is_refused_naming_the_copy_to_pass(tmp_path):
    """TRL's DPOTrainer copies the model when ref_model is None; preflab builds no reference from a policy passed
    from Python and refuses, naming frozen_copy. Following the message trains: policy == reference, so the first
    step's loss is ln 2."""
    from preflab.errors import ConfigError
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("whitespace")
    policy = _model(tok, seed=0)
    with pytest.raises(ConfigError, match=r"none was given.*ref=preflab\.models\.load\.frozen_copy\(policy\)"):
        Trainer(_config(tmp_path / "no-ref", max_steps=1), policy=policy, tokenizer=tok, train_data=_rows())
    summary = Trainer(_config(tmp_path / "ref", max_steps=1), policy=policy, ref=frozen_copy(policy), tokenizer=tok,
                      train_data=_rows()).train()
    assert summary["final_metrics"]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)


def test_the_max_length_note_names_the_policy_passed_not_the_configs_name(tmp_path, capsys):
    """max_length above the given model's 96 positions is capped to 96; the note named model_name_or_path
    ('my-gpt2', which names nothing that was read), now the object passed."""
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer("whitespace")
    policy = _model(tok, seed=0)
    trainer = Trainer(_config(tmp_path / "run", max_steps=1), policy=policy, ref=frozen_copy(policy), tokenizer=tok,
                      train_data=_rows())
    assert trainer.cfg.max_length == 96
    assert ("max_length=1024 is above the 96 positions of the policy passed from Python (GPT2LMHeadModel); "
            "using max_length=96.") in capsys.readouterr().out


def test_a_config_without_model_and_dataset_names_tells_the_python_user_that_any_name_does(tmp_path):
    """A TRL user's DPOConfig has no model or dataset field; preflab's config needs both even when the trainer is
    given the objects, and the message said only to set them (as if a path were read). It now says that with
    policy= / train_data= they are names only; any string then trains on the objects given."""
    from preflab.config import config_from_dict
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        config_from_dict({"output_dir": str(tmp_path / "run")})
    assert "a trainer given policy=model reads nothing from model_name_or_path" in str(err.value)
    assert "a trainer given train_data=rows reads nothing from dataset_name" in str(err.value)


def test_a_trainer_that_fails_to_build_leaves_its_output_dir_unlocked(tmp_path):
    """A notebook cell's Trainer(...) that raised after locking output_dir (the DPO policy without a reference)
    left the lock held by the notebook's process until it ended: a `preflab train` into that folder from a shell was
    refused meanwhile. The failed build releases its claim; a build that succeeds keeps it until train() ends."""
    from preflab.errors import ConfigError
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_tokenizer
    from preflab.rundir import holds_lock

    tok = tiny_tokenizer("whitespace")
    policy = _model(tok, seed=0)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="needs a reference model"):
        Trainer(_config(out, max_steps=1), policy=policy, tokenizer=tok, train_data=_rows())
    assert not holds_lock(out) and not (out / ".preflab.lock").exists()
    trainer = Trainer(_config(out, max_steps=1), policy=policy, ref=frozen_copy(policy), tokenizer=tok,
                      train_data=_rows())
    assert holds_lock(out) and (out / ".preflab.lock").exists()
    trainer.train()
    assert not holds_lock(out) and not (out / ".preflab.lock").exists()
