"""HyPO with the paper's data split (preflab.online.hypo_offline): DPO on offline pairs, the reverse-KL term on fresh samples.

- the KL term's RLOO gradient, averaged exactly over every k-tuple of samples of a categorical policy, is the true
  gradient of KL(pi || pi_ref) (exact enumeration; no Monte Carlo tolerance);
- with lam = 0 a run is the plain offline DPO run on the same pairs, bit for bit (its DPO term reads the offline
  pairs in the offline order; sampling and scoring the fresh samples change nothing else);
- the samples are the current policy's: the online log-probs are the policy's sequence log-probs of samples that
  the step's weights draw with the step's seed;
- a run stopped at step N and resumed ends with the uninterrupted run's weights;
- invalid combinations are refused with ConfigError.
"""
import itertools
import json
from pathlib import Path

import pytest
import torch

from preflab.cli import main
from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.online.hypo_offline import HyPOTrainer
from preflab.loops.offline import Trainer
from preflab.objectives import PairBatch, get_objective

ROOT = Path(__file__).resolve().parents[2]
PAIRS = str(ROOT / "examples" / "data" / "loud_echo_pairs.jsonl")
F64 = dict(dtype=torch.float64)


def cfg_of(out, **over):
    base = dict(model_name_or_path="builtin:tiny-llama", dataset_name=PAIRS, eval_fraction=0, loss_type="hypo",
                beta=0.1, lam=0.5, hypo_online_samples=3, max_completion_length=12, learning_rate=3e-3,
                lr_scheduler_type="constant", per_device_train_batch_size=4, max_steps=4, max_length=64,
                logging_steps=1, seed=0, disable_tqdm=True, use_cpu=True, output_dir=str(out))
    if over.get("loss_type", "hypo") != "hypo":
        base.pop("lam")
        base.pop("hypo_online_samples")  # read by loss_type hypo only (refused elsewhere)
    return config_from_dict({**base, **over})


def weights(run):
    return {k: v.detach().clone() for k, v in run.policy.state_dict().items()}


@pytest.mark.parametrize("K, k", [(4, 2), (5, 3)])
def test_rloo_gradient_is_exactly_the_reverse_kl_gradient_in_expectation(K, k):
    """E over all K^k sample tuples (weights prod pi(y_i)) of the objective's KL-term gradient = d KL / d z."""
    g = torch.Generator().manual_seed(K)
    z = torch.randn(K, generator=g, **F64).requires_grad_(True)
    log_ref = torch.log_softmax(torch.randn(K, generator=g, **F64), -1)
    logp = torch.log_softmax(z, -1)
    p = logp.exp().detach()
    kl = (p * (logp.detach() - log_ref)).sum()
    exact = p * (logp.detach() - log_ref - kl)          # closed form of d KL(softmax(z) || ref) / dz
    tuples = torch.tensor(list(itertools.product(range(K), repeat=k)))   # [K^k, k]
    weight = p[tuples].prod(-1)                                          # P(tuple)
    n = len(tuples)
    const = torch.full((n,), -3.0, **F64)  # the DPO sides: constants, no gradient to z
    batch = PairBatch.from_sums(const, const - 1, const, const - 0.5,
                                extras={"online_policy_logps": logp[tuples], "online_ref_logps": log_ref[tuples]})
    lam = 0.7
    out = get_objective("hypo", beta=0.1, lam=lam)(batch)
    dpo = get_objective("dpo", beta=0.1)(batch).losses.detach()
    expected_loss = (weight * (out.losses - dpo)).sum()                  # lam * E[KL estimate]
    (grad,) = torch.autograd.grad(expected_loss, z)
    torch.testing.assert_close(grad, lam * exact, rtol=0, atol=1e-13)
    torch.testing.assert_close(expected_loss.detach(), lam * kl, rtol=0, atol=1e-13)  # the value is unbiased too


def test_lam_zero_is_the_offline_dpo_run_bit_for_bit(tmp_path):
    dpo = Trainer(cfg_of(tmp_path / "dpo", loss_type="dpo"))
    dpo.train()
    hypo = HyPOTrainer(cfg_of(tmp_path / "hypo", lam=0.0))
    summary = hypo.train()
    a, b = weights(dpo), weights(hypo)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["hypo"]["online_samples_per_prompt"] == 3
    # the KL term does act when lam > 0: same pairs, different weights
    kl = HyPOTrainer(cfg_of(tmp_path / "kl", lam=0.5))
    kl.train()
    assert max(float((a[k] - kl.policy.state_dict()[k]).abs().max()) for k in a) > 1e-4
    rows = [json.loads(x) for x in (tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()]
    assert all("kl/online" in r for r in rows if "loss" in r)


def test_online_terms_are_the_step_policys_samples_and_log_probs(tmp_path):
    """At step s: the samples are what the current weights draw with the step's seed (k per prompt of the step's
    offline batch), and online_policy_logps / online_ref_logps are the sequence log-probs under policy / reference."""
    from preflab.generate import generate_ids
    from preflab.loops.rollout import full_distribution

    run = HyPOTrainer(cfg_of(tmp_path / "r", max_steps=2))
    run.train()                                              # the weights moved: the policy differs from the ref
    mb = run.micro_batches(2)[0]
    prompts = [list(run.train_data[i].prompt_ids) for i in mb.index]
    with full_distribution(run.policy):
        direct = generate_ids(run.policy, [p for p in prompts for _ in range(3)], eos_id=run.tokenizer.eos_token_id,
                              pad_id=run.pad_id, max_new_tokens=12, do_sample=True, batch_size=len(prompts) * 3,
                              seed=run._seed(2))
    assert [c for i in mb.index for c in run._samples[i]] == direct
    batch = run.score(mb.layout, positions=mb.index)

    def seq_logp(model, prompt, completion):
        ids = torch.tensor([prompt + completion])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].double()
        return torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt):, None]).sum()

    with torch.no_grad():
        pol = torch.stack([torch.stack([seq_logp(run.policy, p, c) for c in run._samples[i]])
                           for i, p in zip(mb.index, prompts)])
        ref = torch.stack([torch.stack([seq_logp(run.ref, p, c) for c in run._samples[i]])
                           for i, p in zip(mb.index, prompts)])
    torch.testing.assert_close(batch.extras["online_policy_logps"].double(), pol, rtol=0, atol=1e-4)
    torch.testing.assert_close(batch.extras["online_ref_logps"].double(), ref, rtol=0, atol=1e-4)
    assert batch.extras["online_policy_logps"].requires_grad and not batch.extras["online_ref_logps"].requires_grad
    assert float((pol - ref).abs().max()) > 1e-3


def test_resume_gives_the_uninterrupted_weights(tmp_path, stop_at_step):
    full = HyPOTrainer(cfg_of(tmp_path / "full", max_steps=5))
    full.train()
    cut = HyPOTrainer(cfg_of(tmp_path / "cut", max_steps=5, save_steps=2))
    with stop_at_step(cut, 3):
        cut.train()
    assert (tmp_path / "cut" / "checkpoint-2").is_dir()
    resumed = HyPOTrainer(cfg_of(tmp_path / "cut", max_steps=5, save_steps=2, resume_from_checkpoint=True))
    summary = resumed.train()
    assert summary["resumed_from_step"] == 2
    a, b = weights(full), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("over, match", [
    (dict(temperature=0.7), "temperature"),
    (dict(top_p=0.9), "top_p"),
    (dict(max_completion_length=None), "max_completion_length"),
    (dict(precompute_ref_log_probs=True), "precompute_ref_log_probs"),
    (dict(task="sft"), "task: dpo"),
])
def test_refusals(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        HyPOTrainer(cfg_of(tmp_path, **over))


def test_the_plain_offline_trainer_still_refuses_hypo_and_names_the_way_to_run_it(tmp_path):
    with pytest.raises(ConfigError, match="with gradient") as err:
        Trainer(cfg_of(tmp_path))
    assert "loss_type: hypo, hypo_online_samples" in str(err.value)


def test_one_sample_per_prompt_is_refused_by_the_config(tmp_path):
    with pytest.raises(ConfigError, match="hypo_online_samples"):
        cfg_of(tmp_path, hypo_online_samples=1)


def test_cli_trains_hypo_and_refuses_online_columns_in_the_data(tmp_path, capsys):
    code = main(["train", str(ROOT / "examples" / "hypo_offline.yaml"), f"dataset_name={PAIRS}", "max_steps=2",
                 "eval_fraction=0", "eval_steps=0", "save_steps=0", f"output_dir={tmp_path / 'ok'}",
                 "disable_tqdm=true"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["hypo"]["online_samples_per_prompt"] == 4
    rows = [json.loads(x) for x in Path(PAIRS).read_text().splitlines()[:16]]
    data = tmp_path / "cols.jsonl"
    data.write_text("".join(json.dumps({**r, "online_policy_logps": [-5.0, -6.0]}) + "\n" for r in rows))
    code = main(["train", str(ROOT / "examples" / "hypo_offline.yaml"), f"dataset_name={data}", "max_steps=1",
                 "eval_fraction=0", f"output_dir={tmp_path / 'bad'}", "disable_tqdm=true"])
    err = capsys.readouterr().err
    assert code == 2 and "online_policy_logps" in err and "Remove the column" in err, err


def test_the_former_online_recipe_name_still_names_the_online_pairs_recipe(tmp_path, capsys):
    from preflab.online.trainers import RENAMED, TRAINERS

    assert TRAINERS["hypo"] == TRAINERS["hypo_online_pairs"] and RENAMED["hypo"][0] == "hypo_online_pairs"
    cfg = config_from_dict(dict(task="online", online_task="demo", model_name_or_path="builtin:demo-sft", trainer="hypo", max_steps=1,
                                output_dir=str(tmp_path)))
    assert cfg.loss_type == "hypo"
    assert "examples/hypo_offline.yaml" in RENAMED["hypo"][1] and "loss_type: hypo" in RENAMED["hypo"][1]


def test_accumulation_draws_the_same_samples_and_matches_one_big_batch(tmp_path):
    """2 micro-batches of 2 pairs = 1 batch of 4: the samples depend on (seed, step, weights), not on the split."""
    sgd_like = dict(max_steps=3, adam_epsilon=1.0, learning_rate=0.1)  # Adam near g = 0 would amplify float32 noise
    one = HyPOTrainer(cfg_of(tmp_path / "one", **sgd_like))
    start = weights(one)
    one.train()
    two = HyPOTrainer(cfg_of(tmp_path / "two", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             **sgd_like))
    two.train()
    assert one._samples == two._samples and one._samples_step == two._samples_step == 2
    a, b = weights(one), weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4
