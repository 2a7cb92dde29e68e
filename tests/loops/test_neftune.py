"""NEFTune (neftune_noise_alpha; Jain et al. 2023, arXiv:2310.05914) as transformers' Trainer runs it for TRL:
the same noise as transformers' own hook for the same seed, none in eval mode, L as TRL's padded batch has it, a run
that it changes, an exact resume, and the runs it is refused for (preflab.neftune_options)."""
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.models.neftune import NEFTuneHook, add_neftune_hook, neftune_bound

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_run import run, synthetic_pairs  # noqa: E402


def _transformers_noise(embedding: nn.Embedding, ids: torch.Tensor, alpha: float, seed: int) -> torch.Tensor:
    from transformers.integrations.neftune import neftune_post_forward_hook

    embedding.neftune_noise_alpha = alpha
    try:
        torch.manual_seed(seed)
        return neftune_post_forward_hook(embedding, (ids,), embedding(ids))
    finally:
        del embedding.neftune_noise_alpha


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_noise_is_transformers_hooks_noise_for_the_same_seed(dtype):
    embedding = nn.Embedding(50, 12).to(dtype)
    ids = torch.randint(0, 50, (3, 7))
    want = _transformers_noise(embedding, ids, 5.0, seed=11)
    handle = embedding.register_forward_hook(NEFTuneHook(5.0))
    torch.manual_seed(11)
    got = embedding(ids)
    handle.remove()
    assert got.dtype == dtype and torch.equal(got, want)
    clean = embedding(ids)
    assert not torch.equal(got, clean)
    bound = neftune_bound(5.0, 7, 12)  # L = the row length (dim 1), d = the hidden size (dim 2)
    assert bound == pytest.approx(5.0 / math.sqrt(7 * 12), rel=1e-7)
    assert (got.float() - clean.float()).abs().max().item() <= bound * (1 + 2 ** -7)


def test_no_noise_in_eval_mode_and_the_hook_comes_off():
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm(tiny_tokenizer(), seed=0)
    ids = torch.tensor([[1, 5, 9, 13]])
    clean = model(ids).logits
    handle = add_neftune_hook(model, 5.0)
    model.eval()
    assert torch.equal(model(ids).logits, clean)  # eval mode: the embeddings are untouched
    model.train()
    assert not torch.equal(model(ids).logits, clean)
    handle.remove()
    assert torch.equal(model(ids).logits, clean)


def _seen_lengths(trainer) -> list[int]:
    seen = []
    trainer.policy.get_input_embeddings().register_forward_hook(
        lambda m, i, o: seen.append(o.size(1)) if m.training else None)
    return seen


def test_a_run_with_alpha_differs_sees_trls_padded_length_and_resumes_exactly(tmp_path):
    base = dict(layout="padded", max_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, seed=3)
    _, plain = run(tmp_path / "plain", **base)
    summary, noisy = run(tmp_path / "noisy", neftune_noise_alpha=5.0, save_steps=1, **base)
    w_plain, w_noisy = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "noisy"))
    assert max((w_plain[k] - w_noisy[k]).abs().max().item() for k in w_plain) > 1e-6
    assert noisy.policy.get_input_embeddings()._forward_hooks == {}  # removed at the end of train()
    # resumed from checkpoint-1: step 2 draws the same noise (the checkpoint's torch RNG state), so the same weights
    run(tmp_path / "noisy", neftune_noise_alpha=5.0, save_steps=1,
        resume_from_checkpoint=str(tmp_path / "noisy" / "checkpoint-1"), **base)
    w_resumed = load_file(str(tmp_path / "noisy" / "model.safetensors"))
    assert max((w_noisy[k] - w_resumed[k]).abs().max().item() for k in w_noisy) <= 1e-7


def test_L_is_the_padded_chosen_rejected_batch_width(tmp_path):
    """TRL's DPOTrainer embeds [chosen; rejected] padded to the longest prompt + completion: layout padded's rows."""
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", layout="padded",
                                output_dir=str(tmp_path), per_device_train_batch_size=32, max_steps=1,
                                neftune_noise_alpha=5.0, disable_tqdm=True, use_cpu=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    pairs = synthetic_pairs(32)
    trainer = Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=pairs)
    seen = _seen_lengths(trainer)
    trainer.train()
    width = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
    assert seen == [width]


@pytest.mark.parametrize("options, match", [
    ({"layout": "prefix_shared"}, "Set layout: padded"),
    ({"layout": "prefix_packed"}, "Set layout: padded"),
    ({"task": "sft", "packing": True}, "Set packing: false"),
    ({"task": "online", "online_task": "dataset", "reward_funcs": "x"}, "not to task: online"),
    ({"task": "diffusion"}, "not to task: diffusion"),
    ({"neftune_noise_alpha": 0.0}, "neftune_noise_alpha"),
])
def test_runs_whose_row_length_is_not_trls_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x", "neftune_noise_alpha": 5.0,
                          **options})


def test_an_unpaired_or_listwise_loss_type_is_refused_when_training_starts():
    """KTO's [completion; mismatched] rows are one forward in preflab, two in TRL's KTOTrainer (another L); the driver
    refuses by the run's batch kind before the first step."""
    from preflab.loops.kinds import kind_for
    from preflab.neftune_options import neftune_kind_refusal

    kinds = {loss: kind_for(config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x",
                                              "layout": "padded", "loss_type": loss}).objective()).name
             for loss in ("sigmoid", "kto", "rrhf")}
    assert kinds == {"sigmoid": "pairs", "kto": "unpaired", "rrhf": "lists"}
    assert neftune_kind_refusal(5.0, "pairs") is None and neftune_kind_refusal(5.0, "sft") is None
    assert "reads unpaired batches" in neftune_kind_refusal(5.0, "unpaired")
    assert "reads lists batches" in neftune_kind_refusal(5.0, "lists")
    assert neftune_kind_refusal(None, "unpaired") is None


def _recording(monkeypatch) -> list:
    """The [B, L, d] shapes the hook adds noise to (preflab.models.neftune.noisy_embeddings, still run)."""
    import preflab.models.neftune as neftune

    shapes, original = [], neftune.noisy_embeddings
    monkeypatch.setattr(neftune, "noisy_embeddings",
                        lambda e, alpha: (shapes.append(tuple(e.shape)), original(e, alpha))[1])
    return shapes


def test_sft_rows_get_the_noise_on_their_padded_batch(tmp_path, monkeypatch):
    """task: sft without packing: each training forward is the padded [B, longest prompt + completion] batch, as
    TRL's SFTTrainer's; the run's weights move with the noise."""
    import yaml

    from preflab.loops.sft import SFTTrainer

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    torch.set_num_threads(1)
    base = {**yaml.safe_load((root / "examples/sft.yaml").read_text()), "max_steps": 2, "save_steps": 0,
            "eval_steps": 0, "logging_steps": 1, "disable_tqdm": True, "use_cpu": True, "packing": False,
            "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "learning_rate": 1e-2}
    shapes = _recording(monkeypatch)
    SFTTrainer(config_from_dict({**base, "output_dir": str(tmp_path / "plain")})).train()
    assert shapes == []
    trainer = SFTTrainer(config_from_dict({**base, "neftune_noise_alpha": 5.0, "output_dir": str(tmp_path / "noisy")}))
    widths = []
    for step in range(2):
        for mb in trainer.micro_batches(step):
            widths.append((mb.layout.input_ids.shape[0], mb.layout.input_ids.shape[1]))
    trainer.train()
    assert [s[:2] for s in shapes] == widths and all(b == 2 for b, _ in widths)
    plain, noisy = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("plain", "noisy"))
    assert max((plain[k] - noisy[k]).abs().max().item() for k in plain) > 1e-6


def test_a_reward_run_noises_its_chosen_rejected_forward_and_not_its_evaluation(tmp_path, monkeypatch):
    import json

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reward_models"))
    from reward_synthetic import marker_rows

    from preflab.reward_models.train import train_reward

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(12, seed=0)))
    shapes = _recording(monkeypatch)
    rows = {}
    for name, extra in (("plain", {}), ("noisy", {"neftune_noise_alpha": 5.0})):
        train_reward(config_from_dict({"task": "reward", "model_name_or_path": "builtin:tiny-llama",
                                       "dataset_name": str(data), "eval_dataset_name": str(data),
                                       "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2,
                                       "logging_steps": 1, "use_cpu": True, "seed": 0, "disable_tqdm": True,
                                       "eval_on_start": True, "output_dir": str(tmp_path / name), **extra}))
        rows[name] = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    assert len(shapes) == 2 and all(s[0] == 8 for s in shapes)  # one [chosen; rejected] forward per step, as TRL
    assert rows["plain"][0]["eval_loss"] == rows["noisy"][0]["eval_loss"]  # step 0: evaluation sees no noise
    assert rows["plain"][-1]["eval_loss"] != rows["noisy"][-1]["eval_loss"]  # training did


@pytest.mark.parametrize("precompute, noisy_forwards", [(False, 2), (True, 1)])
def test_a_lora_policys_adapters_off_reference_is_noisy_unless_precomputed(tmp_path, monkeypatch, precompute,
                                                                             noisy_forwards):
    """As TRL's DPOTrainer with a PEFT model: the adapters-off reference forward runs in training mode through the
    same embedding module, so it gets noise of its own; a precomputed reference is scored before the hook is added."""
    from preflab.loops.offline import Trainer
    from preflab.models.load import add_lora
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", layout="padded",
                                precompute_ref_log_probs=precompute, output_dir=str(tmp_path),
                                per_device_train_batch_size=4, max_steps=2, neftune_noise_alpha=5.0,
                                disable_tqdm=True, use_cpu=True))
    tok = tiny_tokenizer()
    policy = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
    trainer = Trainer(cfg, policy=policy, tokenizer=tok, train_data=synthetic_pairs(8))
    shapes = _recording(monkeypatch)
    trainer.train()
    assert len(shapes) == 2 * noisy_forwards and all(s[0] == 8 for s in shapes)
