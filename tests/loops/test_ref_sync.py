"""TR-DPO reference syncing (sync_ref_model; preflab.loops.ref_sync): the soft update by hand, the next step's DPO loss
against the new reference, alpha = 1, exact resume, a checkpoint without a synced reference, and the refusals."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from preflab.config import TrainConfig, config_from_dict
from preflab.errors import ConfigError
from preflab.loops.offline import Trainer
from preflab.loops.ref_sync import PREFIX, check_ref_sync
from preflab.models.load import frozen_copy
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from tiny_run import synthetic_pairs  # noqa: E402

SCRIPT = Path(__file__).parent / "ref_sync_run.py"
BASE = dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", learning_rate=1e-2,
            per_device_train_batch_size=4, logging_steps=1, disable_tqdm=True, use_cpu=True, layout="padded")


class Snapshots:
    """A transformers-style callback: the policy's and the reference's parameters after every optimizer step (it
    runs after the ReferenceSync callback, which the trainer puts first)."""

    def __init__(self):
        self.policy, self.ref = {}, {}

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        policy = run.policy
        if hasattr(policy, "merge_and_unload"):  # LoRA: its merged weights, by peft's own merge, on a copy
            import copy

            policy = copy.deepcopy(policy).merge_and_unload()
        self.policy[state.global_step] = {k: v.detach().clone() for k, v in policy.named_parameters()}
        self.ref[state.global_step] = {k: v.detach().clone() for k, v in run.ref.named_parameters()}


def trainer(out, callbacks=(), ref_dtype=None, lora=False, lora_ref=False, **overrides):
    """lora: the policy gets LoRA adapters (r 4, all linear layers) and no reference model (its adapters-off base);
    lora_ref: and a given reference model (a copy of the base)."""
    torch.set_num_threads(1)
    if lora:
        overrides = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, **overrides}
    cfg = config_from_dict({**BASE, "output_dir": str(out), **overrides})
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    ref = frozen_copy(policy)
    if ref_dtype is not None:
        ref = ref.to(ref_dtype)
    if lora:
        from preflab.models.load import add_lora

        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules)
        ref = ref if lora_ref else None
    run = Trainer(cfg, policy=policy, ref=ref, tokenizer=tok, train_data=synthetic_pairs(32), callbacks=list(callbacks))
    for cb in callbacks:
        cb.run = run
    return run


def rows(out):
    return [r for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def sequence_logp(model, prompt, response) -> float:
    """log pi(response | prompt) summed, from one plain forward of prompt + response (no preflab scoring)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logps = F.log_softmax(model(ids).logits[0, :-1].double(), -1)
    targets = ids[0, 1:]
    return sum(logps[t, targets[t]].item() for t in range(len(prompt) - 1, ids.shape[1] - 1))


def dpo_loss_by_hand(policy, ref, pairs, beta) -> float:
    """mean over pairs of -log sigmoid(beta * ((pc - rc) - (pr - rr))) (Rafailov et al., 2023, Eq. 7)."""
    total = 0.0
    for p in pairs:
        logits = beta * ((sequence_logp(policy, p.prompt_ids, p.chosen_ids) - sequence_logp(ref, p.prompt_ids,
                                                                                            p.chosen_ids))
                         - (sequence_logp(policy, p.prompt_ids, p.rejected_ids) - sequence_logp(ref, p.prompt_ids,
                                                                                               p.rejected_ids)))
        total += -F.logsigmoid(torch.tensor(logits, dtype=torch.float64)).item()
    return total / len(pairs)


def model_with(weights: dict):
    model = tiny_causal_lm(tiny_tokenizer(), seed=0)
    model.load_state_dict(weights, strict=False)  # parameters only (the buffers are the model's own)
    return model.eval()


def test_sync_after_step_tau_is_the_soft_update_by_hand_and_step_tau_plus_1_is_dpo_against_it(tmp_path):
    """tau = 2, alpha = 0.6: after step 1 the reference is untouched; after step 2 every parameter equals
    0.6 * policy + 0.4 * old reference computed by hand (float32, tolerance 0) and differs from the old one; step 3's
    logged loss is DPO computed by hand (plain forwards, float64) with the step-2 policy against the new reference,
    not against the old one."""
    snaps = Snapshots()
    run = trainer(tmp_path / "run", [snaps], sync_ref_model=True, ref_model_sync_steps=2, max_steps=3)
    initial = {k: v.detach().clone() for k, v in run.ref.named_parameters()}
    summary = run.train()
    assert summary["ref_model_sync"] == {"alpha": 0.6, "every": 2, "syncs": 1, "last_sync_step": 2}
    assert all(torch.equal(snaps.ref[1][k], initial[k]) for k in initial)  # no sync after step 1
    assert len(snaps.ref[2]) == len(initial) > 0
    for name, old in snaps.ref[1].items():
        want = snaps.policy[2][name].float() * 0.6 + old.float() * (1 - 0.6)
        assert torch.equal(snaps.ref[2][name], want), name
    assert any(not torch.equal(snaps.ref[2][k], initial[k]) for k in initial)
    assert all(torch.equal(snaps.ref[3][k], snaps.ref[2][k]) for k in initial)  # no sync after step 3
    pairs = [run.train_data[i] for mb in run.micro_batches(2) for i in mb.index]  # step 3's batch
    step3 = rows(tmp_path / "run")[2]
    assert step3["step"] == 3
    new = dpo_loss_by_hand(model_with(snaps.policy[2]), model_with(snaps.ref[2]), pairs, run.cfg.beta)
    old = dpo_loss_by_hand(model_with(snaps.policy[2]), model_with(initial), pairs, run.cfg.beta)
    assert step3["loss"] == pytest.approx(new, abs=2e-6)
    assert abs(new - old) > 1e-4  # the check tells the two references apart


def test_alpha_one_makes_the_reference_the_policy_so_the_next_step_starts_at_log_2(tmp_path):
    """alpha = 1 (the hard update): right after step 2's sync the reference equals the policy bit for bit, so at
    step 3 every pair's DPO logit is 0: loss = log 2 and margins 0 exactly (float32)."""
    snaps = Snapshots()
    run = trainer(tmp_path / "run", [snaps], sync_ref_model=True, ref_model_mixup_alpha=1.0, ref_model_sync_steps=2,
                  max_steps=3)
    run.train()
    assert all(torch.equal(snaps.ref[2][k], snaps.policy[2][k]) for k in snaps.policy[2])
    got = rows(tmp_path / "run")
    assert got[1]["loss"] != pytest.approx(math.log(2), abs=1e-4)  # step 2: still against the starting reference
    assert got[2]["loss"] == float(torch.tensor(math.log(2), dtype=torch.float32))
    assert got[2]["rewards/margins"] == 0.0 and got[2]["rewards/chosen"] == 0.0


def test_a_bfloat16_reference_gets_the_float32_mix_rounded_once(tmp_path):
    """Mixed precision: a bfloat16 reference beside the float32 policy is mixed in float32 and rounded once to
    bfloat16 (TRL rounds twice, in the reference's dtype)."""
    snaps = Snapshots()
    run = trainer(tmp_path / "run", [snaps], ref_dtype=torch.bfloat16, sync_ref_model=True, ref_model_sync_steps=1,
                  max_steps=1)
    before = {k: v.detach().clone() for k, v in run.ref.named_parameters()}
    run.train()
    for name, old in before.items():
        assert snaps.ref[1][name].dtype == torch.bfloat16
        want = (snaps.policy[1][name].float() * 0.6 + old.float() * (1 - 0.6)).to(torch.bfloat16)
        assert torch.equal(snaps.ref[1][name], want), name


@pytest.mark.parametrize("lora", [False, True])
def test_resume_restores_the_synced_reference_and_continues_bit_identically(tmp_path, stop_at_step, lora):
    """Interrupted after step 3 (checkpoint-3 holds the reference synced at step 2), resumed to step 5 (another sync
    at step 4): the losses of every step and the final weights equal the uninterrupted run's exactly."""
    opts = dict(sync_ref_model=True, ref_model_sync_steps=2, max_steps=5, save_steps=3, lora=lora)
    snaps = Snapshots()
    trainer(tmp_path / "whole", [snaps], **opts).train()
    cut = trainer(tmp_path / "cut", **opts)
    with stop_at_step(cut, 3):
        cut.train()
    saved = load_file(str(tmp_path / "cut" / "checkpoint-3" / "extra.safetensors"))
    assert {k[len(PREFIX):] for k in saved} == set(snaps.ref[3])
    assert all(torch.equal(saved[PREFIX + k], v) for k, v in snaps.ref[3].items())
    assert any(not torch.equal(saved[PREFIX + k], snaps.ref[1][k]) for k in snaps.ref[1])  # it moved at step 2
    summary = trainer(tmp_path / "cut", **opts, resume_from_checkpoint=True).train()
    assert summary["resumed_from_step"] == 3 and summary["ref_model_sync"]["syncs"] == 1  # step 4's
    assert [r["loss"] for r in rows(tmp_path / "cut")] == [r["loss"] for r in rows(tmp_path / "whole")]
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(str(tmp_path / "whole" / name)), load_file(str(tmp_path / "cut" / name))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_without_a_synced_reference(tmp_path, stop_at_step, capsys):
    """checkpoint-2 of a run without sync_ref_model, resumed with it (tau = 3): refused as a config change without
    allow_config_change; with it, the reference continues from the starting one (the one that run trained against),
    said in a note, and the run equals an uninterrupted syncing run bit for bit (no sync was due before step 3)."""
    plain = trainer(tmp_path / "cut", max_steps=4, save_steps=2)
    with stop_at_step(plain, 2):
        plain.train()
    opts = dict(sync_ref_model=True, ref_model_sync_steps=3, max_steps=4)
    with pytest.raises(ConfigError, match="sync_ref_model"):
        trainer(tmp_path / "cut", **opts, save_steps=2, resume_from_checkpoint=True).train()
    capsys.readouterr()
    trainer(tmp_path / "cut", **opts, save_steps=2, resume_from_checkpoint=True, allow_config_change=True).train()
    assert "holds no synced reference" in capsys.readouterr().out
    trainer(tmp_path / "whole", **opts).train()
    assert [r["loss"] for r in rows(tmp_path / "cut")] == [r["loss"] for r in rows(tmp_path / "whole")]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "cut" /
                                                                                   "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides, match", [
    (dict(precompute_ref_log_probs=True), "precompute_ref_log_probs"),
    (dict(use_peft=True, load_in_4bit=True), "quantized base"),
    (dict(ref_model_mixup_alpha=0.0), r"in \(0, 1\]"),
    (dict(ref_model_mixup_alpha=1.5), r"in \(0, 1\]"),
    (dict(ref_model_sync_steps=0), ">= 1"),
    (dict(task="online", online_task="demo"), "refresh_reference_every"),
])
def test_config_refusals(overrides, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**{**BASE, "output_dir": str(tmp_path), "sync_ref_model": True, **overrides})


def test_alpha_or_steps_without_sync_ref_model_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="only applies with sync_ref_model: true"):
        TrainConfig(**BASE, output_dir=str(tmp_path), ref_model_mixup_alpha=0.5)
    TrainConfig(**BASE, output_dir=str(tmp_path), ref_model_mixup_alpha=0.6, ref_model_sync_steps=512)  # TRL's
    # with LoRA the reference is a separate copy of the base, so its dtype applies (without sync it is refused)
    TrainConfig(**BASE, output_dir=str(tmp_path), use_peft=True, sync_ref_model=True, ref_load_dtype="float32")
    with pytest.raises(ConfigError, match="ref_load_dtype has no effect with use_peft"):
        TrainConfig(**BASE, output_dir=str(tmp_path), use_peft=True, ref_load_dtype="float32")


def test_trl_dpoconfig_keys_reach_the_config(tmp_path):
    cfg = config_from_dict({**BASE, "output_dir": str(tmp_path), "sync_ref_model": True,
                            "ref_model_mixup_alpha": 0.9, "ref_model_sync_steps": 64})
    assert (cfg.sync_ref_model, cfg.ref_model_mixup_alpha, cfg.ref_model_sync_steps) == (True, 0.9, 64)


def test_trainer_refusals(tmp_path):
    with pytest.raises(ConfigError, match="reference-free"):
        trainer(tmp_path / "a", sync_ref_model=True, loss_type="simpo", max_steps=1)
    engine = SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=True)
    cfg = TrainConfig(**BASE, output_dir=str(tmp_path / "b"), sync_ref_model=True)
    with pytest.raises(ConfigError, match="not supported under FSDP2"):
        check_ref_sync(cfg, cfg.objective(), engine)
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    other = tiny_causal_lm(tok, arch="gpt2", seed=0)
    with pytest.raises(ConfigError, match="not the policy's"):
        Trainer(TrainConfig(**BASE, output_dir=str(tmp_path / "c"), sync_ref_model=True, max_steps=1),
                policy=policy, ref=other, tokenizer=tok, train_data=synthetic_pairs(8))


@pytest.mark.slow
def test_two_processes_hold_identical_references_after_a_sync(tmp_path, accelerate_launch):
    """DDP on CPU, 2 processes x batch 2: after the syncs at steps 2 and 4 both ranks' references are equal bit for
    bit, and equal (float tolerance) the one-process batch-4 run's reference. The finished run (kept to interpreter
    exit by the script, as a user's script keeps it) holds no DDP wrapper and the process group is closed, on each
    rank; scoring after train() still works: the two ranks' step-0 losses average to the one-process one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", str(SCRIPT), str(tmp_path / "two"), "2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "4"], env=env, check=True, timeout=300)
    r0, r1 = (load_file(str(tmp_path / "two" / f"reference-rank{r}.safetensors")) for r in (0, 1))
    one = load_file(str(tmp_path / "one" / "reference-rank0.safetensors"))
    assert r0.keys() == r1.keys() == one.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert max((r0[k] - one[k]).abs().max().item() for k in r0) < 1e-5
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ref_model_sync"]["syncs"] == 2
    after = [json.loads((tmp_path / "two" / f"after-train-rank{r}.json").read_text()) for r in (0, 1)]
    alone = json.loads((tmp_path / "one" / "after-train-rank0.json").read_text())
    for facts in [*after, alone]:
        assert facts["live_ddp_wrappers"] == 0 and not facts["process_group_open"], facts
    assert after[0]["loss_after_train"] != after[1]["loss_after_train"]  # each rank scored its own rows
    assert abs((after[0]["loss_after_train"] + after[1]["loss_after_train"]) / 2 - alone["loss_after_train"]) < 1e-5


@pytest.mark.parametrize("lora_ref", [False, True])
def test_lora_syncs_its_merged_weights_into_a_copy_of_its_base(tmp_path, lora_ref):
    """LoRA (TRL refuses it, huggingface/trl#3108): the reference is a frozen copy of the base (the adapters-off
    reference it replaces); after step 2 every parameter equals 0.6 * the policy's weights merged by peft's own
    merge_and_unload + 0.4 * the base, exactly; the base inside the policy is untouched. lora_ref: the same with a
    given reference model (ref_model_name_or_path)."""
    snaps = Snapshots()
    run = trainer(tmp_path / "run", [snaps], lora=True, lora_ref=lora_ref, sync_ref_model=True,
                  ref_model_sync_steps=2, max_steps=2)
    base = {k: v.detach().clone() for k, v in tiny_causal_lm(tiny_tokenizer(), seed=0).named_parameters()}
    assert run.ref is not None and not run.ref_is_base
    run.train()
    assert {k for k, _ in run.ref.named_parameters()} == set(base)
    assert all(torch.equal(snaps.ref[1][k], base[k]) for k in base)  # before the first sync: the base itself
    for name, old in snaps.ref[1].items():
        want = snaps.policy[2][name].float() * 0.6 + old.float() * (1 - 0.6)
        assert torch.equal(snaps.ref[2][name], want), name
    moved = [k for k in base if not torch.equal(snaps.policy[2][k], base[k])]
    assert moved and all("proj" in k for k in moved)  # the adapters trained the projections only
    inner = dict(run.policy.get_base_model().named_parameters())
    assert all(torch.equal(inner[k.replace("proj.weight", "proj.base_layer.weight")], base[k]) for k in moved)


def test_lora_before_the_first_sync_trains_as_the_adapters_off_reference(tmp_path):
    """Until the first sync the base copy scores as the adapters-off policy did: the same losses as a LoRA run
    without sync_ref_model."""
    trainer(tmp_path / "sync", lora=True, sync_ref_model=True, ref_model_sync_steps=100, max_steps=3).train()
    trainer(tmp_path / "plain", lora=True, max_steps=3).train()
    assert [r["loss"] for r in rows(tmp_path / "sync")] == pytest.approx([r["loss"] for r in rows(tmp_path /
                                                                                                "plain")], abs=1e-6)
