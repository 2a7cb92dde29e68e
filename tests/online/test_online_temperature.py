"""TRL 1.16's GRPOTrainer and RLOOTrainer score at the sampling temperature: the policy's, the round-start policy's
and the reference's per-token log-probs and the entropies are of softmax(logits / temperature) (their fused LM head
is built with `temperature`). preflab's online run does the same for those recipes (TEMPERATURE_SCORED), in its
chunked LM head (no [B, T, V] logits); every other recipe (online DPO: TRL scores it untempered) stays at 1."""
import types

import pytest
import torch

from preflab.config import config_from_dict
from preflab.data.layout import padded
from preflab.errors import ConfigError
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from preflab.online.run import OnlineRun, scoring_temperature
from preflab.online.tasks import Task
from preflab.scoring.head import LMHead, backbone_and_head
from preflab.scoring.lm import LogProbScorer, token_entropy

T = 0.7
PROMPTS = [f"say {w}\n" for w in ("abc", "de", "fgh", "ij")]


def _full_logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """[len(completion), V] float32 logits of model.forward predicting the completion's tokens (full logits)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) + len(completion) - 1].float()


def _tempered(model, prompt, completion, temperature=T) -> tuple[torch.Tensor, torch.Tensor]:
    """(log_softmax(logits / T) at the completion's tokens, entropy of softmax(logits / T)) per token."""
    logprobs = torch.log_softmax(_full_logits(model, prompt, completion) / temperature, -1)
    lp = logprobs.gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)
    return lp, -(logprobs.exp() * logprobs).sum(-1)


def _sequences(tok):
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    return [(enc("say abc\n"), enc("abcab")), (enc("hi\n"), enc("dd")), (enc("a long prompt\n"), enc("xyzzy e"))]


@pytest.mark.parametrize("chunk_tokens", [None, 3])  # one head chunk; several (each recomputed in backward)
def test_the_scorer_at_a_temperature_is_log_softmax_of_the_full_logits_over_it(chunk_tokens):
    torch.manual_seed(0)
    tok = tiny_tokenizer("char")
    model = tiny_causal_lm(tok, hidden_size=32, seed=1)
    seqs = _sequences(tok)
    layout = padded(seqs, tok.pad_token_id)
    scores = LogProbScorer(model, chunk_tokens, temperature=T)(layout, want_token_stats=True)
    plain = LogProbScorer(model, chunk_tokens)(layout, want_token_stats=True)
    for i, (p, c) in enumerate(seqs):
        lp, entropy = _tempered(model, p, c)
        m = layout.response_mask[i]
        assert torch.allclose(scores.token_logps[i][m], lp, atol=1e-5)
        assert torch.allclose(scores.token_stats[i][m][:, 1], entropy, atol=1e-5)   # the entropy metric's / mask's
        # the untempered scorer is log_softmax(logits): another number at T != 1 (the test can tell them apart)
        assert torch.allclose(plain.token_logps[i][m], _tempered(model, p, c, 1.0)[0], atol=1e-5)
        assert (plain.token_logps[i][m] - lp).abs().max() > 1e-2
    # temperature 1 is the scorer of before, float for float (the head itself, nothing divided)
    one = LogProbScorer(model, chunk_tokens, temperature=1.0)(layout, want_token_stats=True)
    assert torch.equal(one.token_logps, plain.token_logps) and torch.equal(one.token_stats, plain.token_stats)
    head = backbone_and_head(model)[1]
    assert head.tempered(1.0) is head
    # the entropy bonus's differentiable entropies, through the tempered head
    with_hidden = LogProbScorer(model, chunk_tokens, temperature=T)(layout)
    bonus = token_entropy(with_hidden, layout, head.tempered(T), chunk_tokens)
    assert torch.allclose(bonus, scores.token_stats[..., 1], atol=1e-5)


def test_a_tempered_head_divides_after_the_model_types_soft_cap_and_refuses_a_non_positive_temperature():
    """TRL's fused head: z * logit_scale, soft-cap, then / temperature."""
    proj = torch.nn.Linear(4, 6, bias=False)
    h = torch.randn(3, 4) * 10
    z = proj(h).float()
    capped = LMHead(proj, ("softcap", 2.0), "gemma2")
    assert torch.allclose(capped.tempered(0.5)(h), 2.0 * torch.tanh(z / 2.0) / 0.5)
    assert torch.allclose(LMHead(proj, ("scale", 3.0)).tempered(T)(h), z * 3.0 / T)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="temperature"):
            capped.tempered(bad)


def _run(tmp_path, trainer, **over):
    tok = tiny_tokenizer("char")
    cfg = config_from_dict(dict(
        task="online", trainer=trainer, online_task="dataset", dataset_name="unused", reward_funcs="x",
        model_name_or_path="builtin:tiny-llama", learning_rate=1e-2, max_steps=2, num_generations=3,
        prompts_per_generation=2, steps_per_generation=1, num_iterations=2, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_completion_length=6, beta=0.04, epsilon_high=0.28, temperature=T,
        logging_steps=1, disable_tqdm=True, use_cpu=True, seed=3, output_dir=str(tmp_path), **over))
    judge = lambda prompts, completions, **kw: [float(len(set(c))) for c in completions]  # noqa: E731
    # a reference of its own (another seed): the KL term is not 0 at the first step
    policy, ref = tiny_causal_lm(tok, hidden_size=32, seed=1), tiny_causal_lm(tok, hidden_size=32, seed=2)
    return OnlineRun(cfg, policy=policy, ref=ref, tokenizer=tok, task=Task(PROMPTS, [judge])), policy, ref


@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_the_rounds_reference_and_old_policy_log_probs_are_tempered(tmp_path, trainer):
    torch.set_num_threads(1)
    run, policy, ref = _run(tmp_path, trainer)
    assert run.score_temperature == T
    exs = [e for mb in run.micro_batches(0) for e in mb.examples]
    assert exs
    for e in exs:
        for k, c in enumerate(e.completions):
            if e.prev is not None:  # the round-start policy's (num_iterations 2)
                assert torch.allclose(torch.tensor(e.prev[k]), _tempered(policy, e.prompt_ids, c)[0], atol=1e-5)
            assert torch.allclose(torch.tensor(e.ref[k]), _tempered(ref, e.prompt_ids, c)[0], atol=1e-5)


def test_a_grpo_steps_loss_equals_trls_compute_loss_on_tempered_log_probs(tmp_path):
    """The micro-batch's loss and entropy metric equal TRL 1.16's GRPOTrainer._compute_loss fed what its fused LM head
    gives at `temperature` (log_softmax(logits / T) of policy, old policy and reference; the entropy of
    softmax(logits / T)), and not what it gives untempered."""
    from test_grpo_trl_options import _trl_trainer
    from trl.trainer.grpo_trainer import GRPOTrainer

    torch.set_num_threads(1)
    run, policy, ref = _run(tmp_path, "grpo")
    mbs = run.micro_batches(0)
    assert len(mbs) == 1
    mb = mbs[0]
    out = run.forward(mb)
    assert any(a != 0 for e in mb.examples for a in e.extras["advantages"])

    def trl(temperature):
        rows = [(e.prompt_ids, c) for e in mb.examples for c in e.completions]
        width = max(len(c) for _, c in rows)
        lp, old, rf, ent = (torch.zeros(len(rows), width, dtype=torch.float64) for _ in range(4))
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (p, c) in enumerate(rows):
            n = len(c)
            lp[i, :n], ent[i, :n] = (x.double() for x in _tempered(policy, p, c, temperature))
            rf[i, :n] = _tempered(ref, p, c, temperature)[0].double()
            mask[i, :n] = True
        old = lp.clone()  # the round-start policy is the policy at the round's first step
        adv = torch.tensor([a for e in mb.examples for a in e.extras["advantages"]], dtype=torch.float64)
        trainer = _trl_trainer(lp, ent, "grpo", 0.04, 1.0, None, run.cfg.max_completion_length)
        inputs = {"prompt_ids": torch.ones(len(rows), 1, dtype=torch.long),
                  "prompt_mask": torch.ones(len(rows), 1, dtype=torch.long),
                  "completion_ids": torch.ones(len(rows), width, dtype=torch.long), "completion_mask": mask.long(),
                  "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": rf,
                  "num_items_in_batch": mask.sum().double()}
        loss = GRPOTrainer._compute_loss(trainer, None, inputs)
        return float(loss), float((ent * mask).sum() / mask.sum())

    want_loss, want_entropy = trl(T)
    assert float(out.loss.detach()) == pytest.approx(want_loss, abs=1e-6)
    assert float(out.metrics["entropy"]) == pytest.approx(want_entropy, abs=1e-5)
    untempered_loss, untempered_entropy = trl(1.0)
    assert abs(untempered_loss - want_loss) > 1e-4 and abs(untempered_entropy - want_entropy) > 1e-3


def test_only_trls_grpo_and_rloo_recipes_score_at_the_temperature(tmp_path):
    from preflab.config_trl_methods import GRPO_TRAINERS
    from preflab.online_recipes import TEMPERATURE_SCORED, TRAINERS

    assert set(TEMPERATURE_SCORED) == set(GRPO_TRAINERS)   # GRPOConfig's loss types + RLOOConfig
    for trainer in TRAINERS:  # (spo and tpo, preflab's own group recipes, and every pair recipe: 1)
        cfg = types.SimpleNamespace(trainer=trainer, temperature=T)
        assert scoring_temperature(cfg) == (T if trainer in GRPO_TRAINERS else 1.0), trainer
    grpo = config_from_dict(dict(task="online", trainer="grpo", online_task="dataset", dataset_name="unused",
                                 reward_funcs="x", model_name_or_path="builtin:tiny-llama", max_steps=1,
                                 output_dir=str(tmp_path)))
    assert grpo.temperature == 1.0 and scoring_temperature(grpo) == 1.0   # TRL's default: scored as before


def test_an_end_to_end_grpo_run_at_a_temperature_trains_other_weights_than_untempered_scoring(tmp_path, monkeypatch):
    """`preflab train` (the CLI) on a tiny grpo config at temperature 0.7: the scoring temperature reaches the update
    (the same run scored at 1 ends with other weights), and the first logged entropy is the tempered one."""
    import json

    import yaml
    from safetensors.torch import load_file

    import preflab.online.run as online_run
    from preflab.cli import main

    torch.set_num_threads(1)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp_path / "rewards.py").write_text("def e_count(prompts, completions, **kw):\n"
                                         "    return [c.count('e') - 0.01 * len(c) for c in completions]\n")

    def train(name):
        config = dict(task="online", trainer="grpo", online_task="dataset", dataset_name=str(data),
                      reward_funcs=[f"{tmp_path / 'rewards.py'}:e_count"], model_name_or_path="builtin:tiny-llama",
                      learning_rate=3e-3, max_steps=2, num_iterations=2, num_generations=4, prompts_per_generation=4,
                      per_device_train_batch_size=4, max_completion_length=6, temperature=T, beta=0.04,
                      logging_steps=1, disable_tqdm=True, use_cpu=True, seed=5, output_dir=str(tmp_path / name))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        assert main(["train", str(path)]) in (0, None)
        return load_file(str(tmp_path / name / "model.safetensors"))

    tempered = train("tempered")
    monkeypatch.setattr(online_run, "scoring_temperature", lambda cfg: 1.0)
    untempered = train("untempered")
    assert any(not torch.equal(tempered[k], untempered[k]) for k in tempered)
    first = lambda name: json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])  # noqa: E731
    assert first("tempered")["entropy"] != pytest.approx(first("untempered")["entropy"], abs=1e-3)


def test_the_entropy_bonus_is_the_entropy_of_the_tempered_distribution(tmp_path):
    """entropy_coef's H (logged entropy_bonus/entropy) is the token mean over the micro-batch's completions of the
    entropy of softmax(logits / T), the distribution the run samples and scores (TRL 1.16's fused head returns it at
    the temperature), not of softmax(logits) (mutation-mx round)."""
    torch.set_num_threads(1)
    run, policy, _ = _run(tmp_path, "grpo", entropy_coef=0.1)
    mb = run.micro_batches(0)[0]
    out = run.forward(mb)
    rows = [(e.prompt_ids, c) for e in mb.examples for c in e.completions]
    with torch.no_grad():
        tempered = torch.cat([_tempered(policy, p, c)[1] for p, c in rows])
        plain = torch.cat([_tempered(policy, p, c, 1.0)[1] for p, c in rows])
    got = float(out.metrics["entropy_bonus/entropy"])
    assert got == pytest.approx(float(tempered.mean()), abs=1e-5)
    assert abs(got - float(plain.mean())) > 1e-3
