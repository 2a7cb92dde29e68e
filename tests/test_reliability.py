"""Nothing lost, nothing unsafe: checkpoints under kills and full disks, safe loading, local model paths."""
import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from preflab.cli import main
from preflab.errors import PreflabError, UnsafeLoadError
from preflab.models.load import load_causal_lm
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = ROOT / "tests" / "loops" / "tiny_run.py"
sys.path.insert(0, str(TINY_RUN.parent))
from tiny_run import run  # noqa: E402


def _model_and_optimizer():
    model = tiny_causal_lm(vocab_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def test_half_written_checkpoints_are_never_latest(tmp_path):
    model, opt, sched = _model_and_optimizer()
    save_checkpoint(tmp_path, 3, model, opt, sched, {})
    (tmp_path / "checkpoint-9").mkdir()  # a kill between mkdir and the marker
    (tmp_path / "checkpoint-9" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".tmp-checkpoint-12-999").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-3"
    state = load_checkpoint(latest_checkpoint(tmp_path), model, opt, sched)
    assert state["global_step"] == 3


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, opt, sched, {})
    before = load_file(str(tmp_path / "checkpoint-1" / "model.safetensors"))
    import preflab.checkpoint as ck

    real = ck.save_file

    def full_disk(tensors, path, *a, **k):
        if "optimizer" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", full_disk)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(PreflabError, match="No space left on device.*Earlier checkpoints are kept"):
        save_checkpoint(tmp_path, 2, model, opt, sched, {})
    assert list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    assert not list(tmp_path.glob(".tmp-*")), "the partial write must be cleaned up"
    after = load_file(str(tmp_path / "checkpoint-1" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_full_disk_at_the_first_checkpoint_says_no_earlier_one_exists(tmp_path, monkeypatch):
    """The first save failing said "Earlier checkpoints are kept ... then resume" with none there (chaos trial,
    diffusion on a 4 MB tmpfs); the message now names the latest checkpoint kept, or says there is none."""
    import preflab.checkpoint as ck

    model, opt, sched = _model_and_optimizer()

    def full_disk(tensors, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = ck.save_file
    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(PreflabError) as err:
        save_checkpoint(tmp_path, 1, model, opt, sched, {})
    assert str(err.value) == (f"could not write checkpoint {tmp_path / 'checkpoint-1'}: No space left on device. No "
                              "earlier checkpoint of this run exists, so its steps are lost; free disk space or fix "
                              "the permissions of output_dir, then start it again.")
    monkeypatch.setattr(ck, "save_file", real)
    save_checkpoint(tmp_path, 1, model, opt, sched, {})
    monkeypatch.setattr(ck, "save_file", full_disk)
    latest = tmp_path / "checkpoint-1"
    with pytest.raises(PreflabError, match=rf"Earlier checkpoints are kept \(the latest: {latest}\); free disk"):
        save_checkpoint(tmp_path, 2, model, opt, sched, {})


def test_a_full_disk_after_a_model_only_checkpoint_does_not_promise_a_resume(tmp_path, monkeypatch):
    """A failed save said "Earlier checkpoints are kept (the latest: checkpoint-1); ..., then resume" where
    checkpoint-1 was written with save_only_model, from which a resume is refused; the failed save now says what a
    failed run says of such a checkpoint (preflab.checkpoint.what_is_kept, one sentence for both)."""
    import preflab.checkpoint as ck

    model, opt, sched = _model_and_optimizer()
    save_checkpoint(tmp_path, 1, model, opt, sched, {}, model_only=True)

    def full_disk(tensors, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "save_file", full_disk)
    with pytest.raises(PreflabError) as err:
        save_checkpoint(tmp_path, 2, model, opt, sched, {}, model_only=True)
    latest = tmp_path / "checkpoint-1"
    assert str(err.value) == (f"could not write checkpoint {tmp_path / 'checkpoint-2'}: No space left on device. The "
                              f"latest finished checkpoint is {latest}; it holds the model weights only "
                              "(save_only_model: true), so training cannot resume from it; a new start begins again "
                              "at step 0. Then free disk space or fix the permissions of output_dir, and start it "
                              "again.")
    assert ck.what_is_kept(tmp_path) == (f"The latest finished checkpoint is {latest}; it holds the model weights "
                                         "only (save_only_model: true), so training cannot resume from it; a new "
                                         "start begins again at step 0.")


def test_an_interrupted_run_says_what_is_kept_in_the_words_a_failed_run_does(tmp_path):
    """preflab.cli.interrupted_message wrote the three cases (no checkpoint, model weights only, resumable) a second
    time beside preflab.checkpoint.what_is_kept, in other words (the model-only one with the step, the resumable one
    "the steps after it are lost"); it now ends with what_is_kept's sentence, so the two cannot drift apart."""
    from preflab.checkpoint import what_is_kept
    from preflab.cli import Terminated, interrupted_message

    model, opt, sched = _model_and_optimizer()
    err = Terminated()
    err.preflab_output_dir = tmp_path
    said = []
    for step, model_only in ((None, False), (1, True), (2, False)):
        if step is not None:
            save_checkpoint(tmp_path, step, model, opt, sched, {}, model_only=model_only)
        said.append(interrupted_message(err))
        assert said[-1] == f"preflab: terminated (SIGTERM). {what_is_kept(tmp_path)}"
    assert said[0].endswith("holds no finished checkpoint of this run (none was due yet, or save_steps is 0): its "
                            "steps are lost and a new start begins again at step 0.")
    assert "checkpoint-1; it holds the model weights only" in said[1] and "resume_from_checkpoint" not in said[1]
    assert said[2].endswith(f"{tmp_path / 'checkpoint-2'} (step 2); the steps after it are lost. Set "
                            "resume_from_checkpoint: true to continue from it.")


def test_a_failed_sharded_save_says_what_is_kept_as_the_single_file_save_does(tmp_path, monkeypatch):
    """The per-rank save (FSDP2, DeepSpeed: save_rank_checkpoint) promised "Earlier checkpoints are kept ... then
    resume" with none there; it now ends with the same sentence as save_checkpoint: none, or the latest by name.
    One process stands in for the ranks (barrier: nothing to wait for)."""
    import preflab.checkpoint as ck
    from preflab.sharded_checkpoint import save_rank_checkpoint

    model, opt, sched = _model_and_optimizer()

    def full_disk(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    def save(step, write):
        return save_rank_checkpoint(tmp_path, step, write, sched, {}, True)

    with pytest.raises(PreflabError) as err:
        save(1, full_disk)
    assert str(err.value) == (f"could not write sharded checkpoint {tmp_path / 'checkpoint-1'}: [Errno 28] No space "
                              "left on device. No earlier checkpoint of this run exists, so its steps are lost; free "
                              "disk space or fix the permissions of output_dir (every rank writes into it: it must be "
                              "one shared folder), then start it again.")
    assert not (tmp_path / ".tmp-checkpoint-1-sharded").exists()
    save_checkpoint(tmp_path, 1, model, opt, sched, {})
    with pytest.raises(PreflabError) as err:
        save(2, full_disk)
    assert str(err.value).endswith(f"Earlier checkpoints are kept (the latest: {tmp_path / 'checkpoint-1'}); free "
                                   "disk space or fix the permissions of output_dir (every rank writes into it: it "
                                   "must be one shared folder), then resume.")
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PreflabError, match="output_dir"):
        run(blocker / "run", max_steps=1)


def test_pickle_only_weights_refused_unless_allowed(tmp_path):
    model = tiny_causal_lm(vocab_size=64)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(UnsafeLoadError, match="allow_pickle"):
        load_causal_lm(str(tmp_path))
    loaded = load_causal_lm(str(tmp_path), allow_pickle=True)  # the user asked for it
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_train_from_local_model_directory(tmp_path):
    """The hub-name code path with a local directory: load, train, save, reload with plain transformers."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, seed=3)
    src = tmp_path / "local-model"
    model.save_pretrained(src, safe_serialization=True)
    tok.save_pretrained(src)
    out = tmp_path / "out"
    code = main(["train", str(ROOT / "examples" / "quickstart.yaml"), f"model_name_or_path={src}",
                 f"output_dir={out}", "max_steps=2", "per_device_train_batch_size=2", "eval_fraction=0",
                 "eval_steps=0", "save_steps=0", "disable_tqdm=true", "max_length=64"])
    assert code == 0
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(reloaded.lm_head.weight, saved["lm_head.weight"])
    assert not torch.equal(saved["lm_head.weight"], model.lm_head.weight), "training must change the weights"


@pytest.mark.slow
def test_random_kills_always_leave_a_loadable_checkpoint_and_exact_resume(tmp_path):
    steps = dict(max_steps=60, save_steps=1, save_total_limit=2)  # a checkpoint every step: kills hit writes
    run(tmp_path / "full", max_steps=60)
    out = tmp_path / "killed"
    args = [f"{k}={v}" for k, v in steps.items()]
    rng = random.Random(0)
    for attempt in range(3):
        extra = ["resume_from_checkpoint=true"] if latest_checkpoint(out) else []
        proc = subprocess.Popen([sys.executable, str(TINY_RUN), str(out), *args, *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start_count = len(list_checkpoints(out))
        deadline = time.time() + 120
        while len(list_checkpoints(out)) <= start_count and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in a step or a checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = latest_checkpoint(out)
        assert latest is not None
        model = tiny_causal_lm(tiny_tokenizer())
        state = json.loads((latest / "trainer_state.json").read_text())
        weights = load_file(str(latest / "model.safetensors"))
        assert set(weights) == {n for n, _ in model.named_parameters()}
        assert state["global_step"] >= 1
    summary, _ = run(out, resume_from_checkpoint=True, **steps)
    assert summary["resumed_from_step"] is not None
    full = load_file(str(tmp_path / "full" / "model.safetensors"))
    resumed = load_file(str(out / "model.safetensors"))
    assert max((full[k] - resumed[k]).abs().max().item() for k in full) <= 1e-6


def test_remote_code_never_runs_unless_asked(tmp_path):
    """A model directory whose config points at custom code: the code must not run. With a known model_type the
    native class is used; with an unknown one loading refuses and names trust_remote_code."""
    marker = tmp_path / "pwned"
    model = tiny_causal_lm(vocab_size=64)
    model.save_pretrained(tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel", "AutoConfig": "modeling_evil.EvilConfig"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    loaded = load_causal_lm(str(tmp_path))
    assert type(loaded).__name__ == "LlamaForCausalLM"
    config["model_type"] = "evil_arch"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="trust_remote_code"):
        load_causal_lm(str(tmp_path))
    assert not marker.exists(), "remote code ran without trust_remote_code"


def test_lora_training_saves_only_adapters_and_uses_the_base_as_reference(tmp_path):
    out = tmp_path / "lora"
    code = main(["train", str(ROOT / "examples" / "quickstart.yaml"), f"output_dir={out}", "use_peft=true",
                 "lora_r=4", "lora_alpha=8", "lora_dropout=0.0", "max_steps=2", "per_device_train_batch_size=2",
                 "eval_fraction=0", "eval_steps=0", "save_steps=0", "logging_steps=1", "disable_tqdm=true",
                 "learning_rate=1e-2", "max_length=64", "warmup_steps=0"])  # step 2 must move the policy
    assert code == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # step 1: adapters start at zero (B = 0), so the policy equals the adapter-free reference and DPO = ln 2
    assert rows[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    assert rows[1]["loss"] != pytest.approx(0.6931471805599453, abs=1e-5)
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert saved and all("lora" in k for k in saved)
