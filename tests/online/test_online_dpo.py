"""Online / iterative DPO and RSO on the demo task through the online run: true reward goes up; the reference
refresh makes iterative DPO (the round-2 loss starts at log 2 against pi_1)."""
import json
import math

import pytest

from preflab.demo.run import heldout_reward
from preflab.online.api import online_dpo

FAST = dict(num_iterations=3, num_generations=4, beta=0.5, learning_rate=3e-4, max_new_tokens=16, temperature=1.0,
            per_device_train_batch_size=16, epochs_per_iteration=2)


def rows_of(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("builder,loss", [("best_vs_worst", "sigmoid"), ("rso", "hinge")])
def test_online_dpo_raises_true_reward_on_heldout_prompts(sft_policy, tmp_path, builder, loss):
    policy, tok = sft_policy.model(), sft_policy.tokenizer
    seen = []

    def judge(prompts, completions, **kwargs):
        seen.extend(zip(prompts, completions))
        return sft_policy.judge(prompts, completions)

    summary = online_dpo(policy, tok, sft_policy.train_prompts[:64], judge, output_dir=str(tmp_path),
                         pair_builder=builder, loss_type=loss, **({"rso_num_samples": 4} if builder == "rso" else {}),
                         **FAST)
    after, _ = heldout_reward(policy, tok, sft_policy.heldout)
    # measured: 0.20 -> 0.96 (best_vs_worst + DPO), 0.20 -> 0.94 (RSO + hinge), 3 rounds of 64 prompts x 4
    assert after >= sft_policy.reward_before + 0.5, (sft_policy.reward_before, after)
    # the judge never saw the same (prompt, completion) twice; repeats were served from the cache
    assert len(seen) == len(set(seen))
    assert summary["judge"]["judge/calls"] == len(seen) and summary["judge"]["judge/cache_hits"] > 0
    assert summary["judge"]["judge/calls"] + summary["judge"]["judge/cache_hits"] == 3 * 64 * 4
    steps = rows_of(tmp_path)
    for key in ("kl", "reward", "reward_std", "completions/mean_length", "rewards/chosen", "rewards/margins",
                "rewards/accuracies", "logps/chosen", "pairs/ties_dropped"):
        assert key in steps[0], key
    # first step: policy = reference, so KL is 0 and the sigmoid loss is log 2 (hinge: 1); the reference log-probs
    # were computed in another batch layout, so float32 rounding may leave ~1e-8 (measured 1.7e-8 with rso pairs)
    assert abs(steps[0]["kl"]) < 1e-6
    assert math.isclose(steps[0]["loss"], math.log(2) if loss == "sigmoid" else 1.0, rel_tol=1e-5)
    rounds = [json.loads(x) for x in (tmp_path / "rounds" / "1.jsonl").read_text().splitlines()]
    assert len(rounds) == 64 and all(len(r["completions"]) == 4 for r in rounds)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "summary.json").exists()


def test_iterative_dpo_reference_is_the_previous_iterate(tmp_path):
    """refresh_reference_every = 1: every round's first step has policy = reference (kl 0, loss log 2);
    refresh 0: from round 2 on the reference is pi_0 and the first step's kl is not 0."""
    from test_online_run import tiny_cfg, tiny_run

    for refresh, trainer in ((1, "iterative_dpo"), (0, "online_dpo")):
        out = tmp_path / trainer
        run = tiny_run(tiny_cfg(out, trainer=trainer, refresh_reference_every=refresh, beta=0.5,
                                gradient_accumulation_steps=1, per_device_train_batch_size=3))
        run.train()
        rows = rows_of(out)
        firsts = [r for r in rows if "loss" in r and (r["step"] - 1) % 2 == 0]   # steps_per_generation = 2
        assert len(firsts) == 3
        for r in firsts[1:]:
            if refresh:
                assert r["kl"] == 0.0 and math.isclose(r["loss"], math.log(2), rel_tol=1e-6)
            else:
                assert r["kl"] != 0.0 and not math.isclose(r["loss"], math.log(2), rel_tol=1e-6)


def test_the_python_wrappers_defaults_are_not_written_options():
    """online_dpo / grpo_train fill in their own defaults (learning_rate, temperature, num_generations, ...): only
    the options the caller gave count as written (TrainConfig.written_options), so a wrapper default the chosen
    trainer does not read is never refused as if the user had written it."""
    from preflab.config import config_from_dict
    from preflab.online.api import (GRPO_NAMES, ONLINE_DPO_NAMES, grpo_options, online_options,
                                    written_by_user)

    given = {"max_new_tokens": 16, "epochs_per_iteration": 2, "beta": 0.2, "output_dir": "unused"}
    raw = online_options(["a", "b"], given, "online_dpo")
    raw.update(model_name_or_path="builtin:tiny-llama", dataset_name="(in memory)")
    cfg = config_from_dict(raw, written_by_user(given, raw, ONLINE_DPO_NAMES))
    assert cfg.written_options == {"max_completion_length", "num_iterations", "beta", "output_dir"}
    given = {"loss_type": "grpo", "prompts_per_step": 2}
    raw = grpo_options(given)
    assert written_by_user(given, raw, GRPO_NAMES) == {"trainer", "per_device_train_batch_size"}


def test_refresh_reference_every_two_refreshes_at_the_start_of_even_rounds(tmp_path):
    """refresh_reference_every = n copies the policy into the reference at the start of rounds n, 2n, ... (not
    round 0, whose reference is pi_0 already): with n = 2 over five rounds the first step of rounds 0, 2 and 4 has
    policy = reference (kl 0, sigmoid loss log 2), that of rounds 1 and 3 not, and the run counts two refreshes."""
    from test_online_run import tiny_cfg, tiny_run

    run = tiny_run(tiny_cfg(tmp_path, trainer="online_dpo", refresh_reference_every=2, beta=0.5, max_steps=10,
                            gradient_accumulation_steps=1, per_device_train_batch_size=3))
    run.train()
    firsts = [r for r in rows_of(tmp_path) if "loss" in r and (r["step"] - 1) % 2 == 0]  # steps_per_generation = 2
    assert [r["step"] for r in firsts] == [1, 3, 5, 7, 9]
    for n, r in enumerate(firsts):
        at_reference = abs(r["kl"]) < 1e-6 and math.isclose(r["loss"], math.log(2), rel_tol=1e-5)
        assert at_reference == (n % 2 == 0), (n, r["kl"], r["loss"])
    assert run.refreshes == 2


def test_refresh_reference_every_round_is_counted(tmp_path):
    """refresh_reference_every = 1 (iterative_dpo) takes the round-start policy as the reference without a copy:
    the first step of every one of the five rounds has policy = reference (kl 0, loss log 2), and summary.json's
    reference_refreshes counts the four refreshes after round 0 (it said 0, as if the reference stayed pi_0)."""
    from test_online_run import tiny_cfg, tiny_run

    run = tiny_run(tiny_cfg(tmp_path, trainer="iterative_dpo", beta=0.5, max_steps=10,
                            gradient_accumulation_steps=1, per_device_train_batch_size=3))
    summary = run.train()
    firsts = [r for r in rows_of(tmp_path) if "loss" in r and (r["step"] - 1) % 2 == 0]
    assert len(firsts) == 5
    assert all(abs(r["kl"]) < 1e-6 and math.isclose(r["loss"], math.log(2), rel_tol=1e-5) for r in firsts)
    assert summary["reference_refreshes"] == run.refreshes == 4
