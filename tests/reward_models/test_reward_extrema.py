"""min_reward / max_reward equal TRL 1.16's RewardTrainer (trl/trainer/reward_trainer.py). compute_loss, once per
micro-batch (train) or eval batch:

    all_rewards = self.accelerator.gather(outputs.logits)      # [chosen; rejected] of the batch, every process
    self._metrics[mode]["min_reward"].append(all_rewards.min().item())
    self._metrics[mode]["max_reward"].append(all_rewards.max().item())

and log(): `{key: sum(val) / len(val)}`, every call weighted equally whatever its batch size. The oracle below is
those lines on the same per-batch rewards; preflab's values come from its own code paths (the optimizer step with
the BT head's ObjectiveOutput.metric_extrema, and evaluate_reward_model's / the run's eval)."""
from types import SimpleNamespace

import pytest
import torch

from preflab.reward_models.bt import BTHead

# rewards of the chosen and rejected sides per micro-batch: sizes 3 and 1 (an uneven last micro-batch), so that
# weighting by size (preflab before) and TRL's equal weighting give other means
CHOSEN = [torch.tensor([0.5, 2.0, -0.25]), torch.tensor([4.0])]
REJECTED = [torch.tensor([-3.0, 1.0, 0.0]), torch.tensor([3.5])]


def trl_logged(batches):
    """TRL's logged (min_reward, max_reward) for batches [(chosen, rejected)]: the compute_loss lines and log()."""
    metrics = {"min_reward": [], "max_reward": []}
    for chosen, rejected in batches:
        all_rewards = torch.cat([chosen, rejected])  # outputs.logits of the batch; gather on one process: itself
        metrics["min_reward"].append(all_rewards.min().item())
        metrics["max_reward"].append(all_rewards.max().item())
    return {key: sum(val) / len(val) for key, val in metrics.items()}


def test_reward_step_logs_trls_mean_of_micro_batch_extrema_with_unequal_micro_batches():
    """Gradient accumulation over micro-batches of 3 and 1 pairs: the step logs the mean of the two micro-batches'
    min / max (TRL: 0.25 and 3.0), not their example-weighted mean (before: -1.375 and 2.5)."""
    from preflab.step import optimizer_step

    weight = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([weight], lr=0.0)

    def forward(mb):
        c, r = CHOSEN[mb.index] + weight, REJECTED[mb.index] + weight
        return BTHead().loss(c[:, None], r[:, None], {})

    mbs = [SimpleNamespace(index=i, row_ids=list(range(len(CHOSEN[i])))) for i in range(2)]
    result = optimizer_step(mbs, forward, [weight], opt)
    want = trl_logged(list(zip(CHOSEN, REJECTED)))
    assert want == {"min_reward": 0.25, "max_reward": 3.0}
    for name, value in want.items():
        assert result.metrics[name] == pytest.approx(value, abs=1e-7), name
        assert result.metric_counts[name] == 2  # a logging window weights the steps by their micro-batch counts
    assert result.metrics["mean_reward"] == pytest.approx(torch.cat(CHOSEN + REJECTED).mean().item())  # pair mean


def test_reward_eval_min_max_reward_average_the_eval_batches_as_trl():
    """An eval set of 5 pairs in batches of 2 (3 batches, the last of 1): eval_min_reward / eval_max_reward are the
    mean of each batch's min / max (TRL's evaluate()), not the eval set's min / max (before)."""
    from preflab.reward_models.eval import evaluate_reward_model
    from preflab.reward_models.heads import build_reward_model
    from preflab.reward_models.interface import RewardModel
    from preflab.models.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    model = build_reward_model("builtin:tiny-llama", 1, tok, seed=3)
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in
            [("a", " good", " bad"), ("the cat", " sat", " ran far"), ("b", " kit", " dog"),
             ("echo:", " cat cat", " a"), ("x", " yes", " no")]]
    result = evaluate_reward_model(model, rows, tokenizer=tok, batch_size=2)
    judge = RewardModel(model, tok)
    chosen = judge.score([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = judge.score([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    want = trl_logged([(chosen[i:i + 2], rejected[i:i + 2]) for i in range(0, 5, 2)])
    whole = torch.cat([chosen, rejected])
    assert want["min_reward"] != pytest.approx(whole.min().item(), abs=1e-4)  # the data tells them apart
    for name, value in want.items():
        assert result[name] == pytest.approx(value, abs=1e-5), name


def test_reward_min_max_over_two_ranks_are_trls_gathered_extrema():
    """2 processes, 2 micro-batches each (rank 1's rewards are rank 0's shifted): the step's block (each rank fills
    its slice of the all-reduce, preflab.step._extrema_block; summed here as the all-reduce sums it) gives per
    micro-batch the min / max over both ranks' rewards, TRL's gather(logits).min(), and their equal mean. Before,
    RewardRun.forward gathered them itself (preflab.reward_models.reward_run.global_extrema, now gone)."""
    from preflab.reward_models.bt import EXTREMA
    from preflab.step import _extrema_block, _extrema_means

    ranks = [[(c, r) for c, r in zip(CHOSEN, REJECTED)], [(c - 5.0, r + 1.0) for c, r in zip(CHOSEN, REJECTED)]]
    names = sorted(EXTREMA)
    block = 0
    for index, batches in enumerate(ranks):
        rows = []
        for c, r in batches:
            out = BTHead().loss(c[:, None], r[:, None], {})
            assert out.metric_extrema == EXTREMA
            rows.append({k: v for k, v in out.metrics.items() if k in out.metric_extrema})
        block = block + _extrema_block(rows, names, SimpleNamespace(num_processes=2, process_index=index),
                                       torch.device("cpu"), torch.float64)
    got = _extrema_means(block.tolist(), names, EXTREMA, 2, 2)
    gathered = [(torch.cat([ranks[0][i][0], ranks[1][i][0]]), torch.cat([ranks[0][i][1], ranks[1][i][1]]))
                for i in range(2)]
    want = trl_logged(gathered)  # on 2 processes TRL's gather concatenates the ranks' logits
    for name, value in want.items():
        assert got[name] == (pytest.approx(value, abs=1e-7), 2.0), name
    alone = trl_logged(ranks[0])
    assert alone["min_reward"] != pytest.approx(want["min_reward"])  # rank 0's own rewards give another min


def test_reward_step_logs_the_chosen_side_as_chosen_as_the_eval_of_the_same_weights(tmp_path):
    """One step at a negligible learning rate over the whole data, evaluated on the same pairs: the train step's
    BT metrics (the loss of chosen over rejected, margin, rewards/chosen) equal the eval's on the same weights; with
    the sides swapped in the run's loss they would be mirrored (margin negated, chosen and rejected traded)."""
    import json

    from reward_synthetic import marker_rows

    from preflab.config import config_from_dict
    from preflab.reward_models.train import train_reward

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in marker_rows(6, seed=0)))
    final = train_reward(config_from_dict({
        "task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
        "eval_dataset_name": str(data), "per_device_train_batch_size": 6, "per_device_eval_batch_size": 6,
        "max_steps": 1, "learning_rate": 1e-12, "logging_steps": 1, "use_cpu": True, "seed": 0, "disable_tqdm": True,
        "output_dir": str(tmp_path / "run")}))["final_metrics"]
    assert abs(final["margin"]) > 1e-3
    for name in ("loss", "margin", "rewards/chosen", "rewards/rejected", "accuracy"):
        assert final[name] == pytest.approx(final[f"eval_{name}"], abs=1e-5), name
