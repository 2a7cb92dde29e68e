"""MaxMin-RLHF's EM mixture through `preflab train` (task: reward, reward_head: em_mixture): planted groups are
recovered, K = 1 is plain BT training, an interrupted EM resumes to the same result, bad configs are refused."""
import json

import pytest
import torch
from safetensors.torch import load_file

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.reward_models.maxmin_toy import write_toy_rows
from preflab.reward_models.train import train_reward

pytestmark = pytest.mark.slow


def _cfg(data, out, **over):
    raw = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "dataset_name": str(data),
           "reward_head": "em_mixture",
           "reward_head_params": {"num_components": 2, "em_iterations": 4, "group_column": "group"},
           "learning_rate": 0.003, "num_train_epochs": 2, "per_device_train_batch_size": 8, "max_length": 64,
           "use_cpu": True, "logging_steps": 100, "disable_tqdm": True, "seed": 0, "output_dir": str(out)}
    return config_from_dict({**raw, **over})


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The loud/quiet toy: 10 users (8 loud, 2 quiet), 6 pairs each, and one uninterrupted K = 2 EM run."""
    root = tmp_path_factory.mktemp("mm")
    data = write_toy_rows(root / "toy.jsonl", users=10, minority=2, pairs_per_user=6)
    summary = train_reward(_cfg(data, root / "full"))
    return data, root, summary


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_em_recovers_the_planted_groups_through_preflab_train(toy):
    data, root, summary = toy
    assert summary["metric_name"] == "cluster_purity" and summary["metric_after"] == 1.0
    mixture = json.loads((root / "full" / "mixture.json").read_text())
    planted = {json.loads(line)["user_id"]: json.loads(line)["group"] for line in data.read_text().splitlines()}
    quiet = {u for u, g in planted.items() if g == "quiet"}
    cluster = {u: k for u, k in mixture["assignments"].items()}
    assert {cluster[u] for u in quiet} != {cluster[u] for u in set(planted) - quiet}
    assert len({cluster[u] for u in quiet}) == 1 and sorted(summary["cluster_sizes"].values()) == [2, 8]
    assert sorted(mixture["priors"]) == pytest.approx([0.2, 0.8])
    assert min(summary["per_cluster_accuracy"].values()) > 0.9  # measured 0.92 / 1.0
    assert summary["loglik_trace"][-1] > summary["loglik_trace"][0]
    assert summary["converged"] and len(summary["loglik_trace"]) == summary["em_iterations_run"]
    assert all((root / "full" / c / "model.safetensors").is_file() for c in mixture["components"])


def test_the_python_api_mixture_of_a_train_run_reproduces_its_e_step(toy):
    """fit_reward_mixture and the train path run the same EM round (maxmin.em_iteration); the train run loaded as the
    Python API's RewardMixture gives, through RewardMixture.assign (the API's E-step), the run's user
    log-likelihoods and its assignment."""
    from preflab.data.rows import load_rows
    from preflab.loops.batches import collate_pairs
    from preflab.models.load import load_tokenizer
    from preflab.reward_models.data import tokenize_reward_pairs
    from preflab.reward_models.maxmin_train import load_reward_mixture

    data, root, _ = toy
    mix = load_reward_mixture(root / "full")
    tok = load_tokenizer("builtin:tiny-llama")
    pairs, _ = tokenize_reward_pairs(load_rows(str(data), kind="pairwise")[0], tok, max_length=64)
    layout = collate_pairs(pairs, tok.pad_token_id, "padded")
    n = len(pairs)
    side = lambda rows: {"input_ids": layout.input_ids[rows], "attention_mask": layout.attention_mask[rows]}
    users, posterior = mix.assign(side(slice(0, n)), side(slice(n, 2 * n)), [p.extras["user_id"] for p in pairs])
    assert users == mix.users
    assert torch.equal(posterior.argmax(1), mix.assignments)
    loglik = torch.log_softmax(posterior.log(), 1)  # the API's log w_k + l_uk, up to a per-user constant
    saved = mix.priors.log() + mix.user_loglik
    assert torch.allclose(loglik, torch.log_softmax(saved, 1), atol=1e-4)


def test_k1_is_plain_bt_reward_training(toy, tmp_path):
    data, _, _ = toy
    one = {"num_components": 1, "em_iterations": 3}
    summary = train_reward(_cfg(data, tmp_path / "k1", reward_head_params=one, eval_fraction=0.25))
    assert summary["em_iterations_run"] == 1 and summary["converged"]
    bt = train_reward(_cfg(data, tmp_path / "bt", reward_head="bt", reward_head_params={}, eval_fraction=0.25))
    mixed, plain = _weights(tmp_path / "k1" / "em-iter-1" / "component-0"), _weights(tmp_path / "bt")
    assert mixed.keys() == plain.keys()
    assert all(torch.equal(mixed[k], plain[k]) for k in plain)
    # the held-out pairs, each scored by its user's cluster model: with one cluster, the BT run's eval accuracy
    assert summary["eval_pairs"] == 15 and summary["eval_pairs_unseen_users"] == 0
    assert summary["eval_routed_accuracy"] == bt["final_metrics"]["eval_accuracy"]


def test_an_interrupted_em_resumes_to_the_uninterrupted_result(toy, tmp_path, monkeypatch):
    from preflab.reward_models import maxmin_train

    data, root, full = toy
    original = maxmin_train._ComponentFitter.m_step

    def crash_in_round_2(self, folder, components, k, weights):
        if folder.name == "em-iter-2" and k == 1:
            raise RuntimeError("interrupted")
        return original(self, folder, components, k, weights)

    monkeypatch.setattr(maxmin_train._ComponentFitter, "m_step", crash_in_round_2)
    with pytest.raises(RuntimeError, match="interrupted"):
        train_reward(_cfg(data, tmp_path / "run"))
    state = json.loads((tmp_path / "run" / "em_state.json").read_text())
    assert list(state["stages"]) == ["em-iter-1"]
    with pytest.raises(ConfigError, match="resume_from_checkpoint=true"):  # never overwritten without resume
        train_reward(_cfg(data, tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"recipe_params \['learning_rate'\] differ"):  # same options only
        train_reward(_cfg(data, tmp_path / "run", resume_from_checkpoint=True, learning_rate=0.01))
    monkeypatch.setattr(maxmin_train._ComponentFitter, "m_step", original)
    resumed = train_reward(_cfg(data, tmp_path / "run", resume_from_checkpoint=True))
    for key in ("loglik_trace", "per_cluster_accuracy", "priors", "metric_after", "user_margin"):
        assert resumed[key] == full[key]
    assert json.loads((tmp_path / "run" / "mixture.json").read_text()) == \
        json.loads((root / "full" / "mixture.json").read_text())
    for component in full["components"]:
        a, b = _weights(tmp_path / "run" / component), _weights(root / "full" / component)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_mixture_configs_and_rows_are_refused(toy, tmp_path):
    data, _, _ = toy
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    no_user = tmp_path / "no_user.jsonl"
    no_user.write_text("".join(json.dumps({k: v for k, v in r.items() if not (i == 3 and k == "user_id")}) + "\n"
                               for i, r in enumerate(rows)))
    with pytest.raises(DataError, match=r"no_user.jsonl: row 3: field 'user_id' is missing"):
        train_reward(_cfg(no_user, tmp_path / "a"))
    two_groups = tmp_path / "two_groups.jsonl"
    rows[5]["group"] = "loud" if rows[5]["group"] == "quiet" else "quiet"
    two_groups.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 5: field 'group': user .* is in group"):
        train_reward(_cfg(two_groups, tmp_path / "b"))
    for params, match in [({"num_components": 11}, "has 10 users"), ({"em_iterations": 0}, "em_iterations"),
                          ({"clusters": 2}, r"\['clusters'\] are not options"), ({"init": "kmeans"}, "init"),
                          ({"tau": 0}, "tau"), ({"hard": "yes"}, "hard")]:
        with pytest.raises(ConfigError, match=match):
            train_reward(_cfg(data, tmp_path / "c", reward_head_params=params))
    with pytest.raises(ConfigError, match="reward_head"):
        config_from_dict({"task": "reward", "reward_head": "mixture"})


def test_a_multi_process_launch_is_refused(toy, tmp_path, monkeypatch):
    data, _, _ = toy
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="runs in one process"):
        train_reward(_cfg(data, tmp_path / "ddp"))
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(ConfigError, match="pass no model"):
        train_reward(_cfg(data, tmp_path / "model"), model=torch.nn.Linear(1, 1))


def test_weighted_bt_head_is_each_rows_weight_times_its_bt_loss():
    from preflab.reward_models.bt import bt_losses
    from preflab.reward_models.maxmin_train import WeightedBTHead

    r_c, r_r = torch.tensor([[1.0], [0.2], [-0.5]]), torch.tensor([[0.0], [0.4], [0.5]])
    w = torch.tensor([0.5, 2.0, 0.0])
    out = WeightedBTHead(tau=0.5).loss(r_c, r_r, {"em_weight": w})
    expected = w * bt_losses(r_c[:, 0], r_r[:, 0], tau=0.5)
    assert torch.allclose(out.losses, expected) and torch.allclose(out.loss, expected.mean())
    assert out.losses[1].item() == pytest.approx(2.0 * -torch.nn.functional.logsigmoid(torch.tensor(-0.4)).item())


def test_soft_em_recovers_the_planted_groups(toy, tmp_path):
    data, _, _ = toy
    soft = {"num_components": 2, "em_iterations": 4, "group_column": "group", "hard": False}
    summary = train_reward(_cfg(data, tmp_path / "soft", reward_head_params=soft))
    mixture = json.loads((tmp_path / "soft" / "mixture.json").read_text())
    resp = torch.tensor(mixture["responsibilities"])
    assert summary["metric_after"] == 1.0
    assert torch.allclose(resp.sum(1), torch.ones(10)) and ((resp > 0) & (resp < 1)).any()


def test_an_m_step_trains_component_k_on_its_rows_with_mean_weight_one_from_seed_plus_k(tmp_path, monkeypatch):
    """The M-step of component k (a train_pairwise_reward run, captured here): round 1 starts from
    model_name_or_path with seed + k; it trains on the rows of positive weight only (hard EM: its users' rows), each
    weight rescaled so that their mean is 1 (soft EM's gamma), in the data's order."""
    from preflab.data.tokenize import TokenizedPair
    from preflab.models.tiny import tiny_tokenizer
    from preflab.reward_models import reward_run
    from preflab.reward_models.maxmin_train import _ComponentFitter, mixture_params

    calls = []
    monkeypatch.setattr(reward_run, "train_pairwise_reward",
                        lambda sub, tokenizer=None, train_data=None, head=None: calls.append((sub, train_data)))
    cfg = _cfg(tmp_path / "none.jsonl", tmp_path / "out", seed=7)
    pairs = [TokenizedPair(i, [1], [2], [3], extras={"user_id": f"u{i}"}) for i in range(5)]
    fitter = _ComponentFitter(cfg, mixture_params(cfg), tiny_tokenizer("char"), pairs, tmp_path / "out")
    components = [None, None]
    fitter.m_step(tmp_path / "out" / "em-iter-1", components, 1, torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0]))
    fitter.m_step(tmp_path / "out" / "em-iter-1", components, 0, torch.tensor([0.5, 0.0, 0.25, 0.25, 0.0]))
    (hard_cfg, hard_rows), (soft_cfg, soft_rows) = calls
    assert hard_cfg.seed == 8 and soft_cfg.seed == 7
    assert hard_cfg.model_name_or_path == soft_cfg.model_name_or_path == "builtin:tiny-llama"
    assert [r.row_id for r in hard_rows] == [1, 3, 4] and [r.extras["em_weight"] for r in hard_rows] == [1.0] * 3
    assert [r.row_id for r in soft_rows] == [0, 2, 3]
    assert [r.extras["em_weight"] for r in soft_rows] == pytest.approx([1.5, 0.75, 0.75])
    assert components == ["em-iter-1/component-0", "em-iter-1/component-1"]


def test_the_em_run_writes_its_config_so_preflab_report_reads_it(toy):
    """The em_mixture run wrote summary.json and mixture.json but no config.yaml, so `preflab report OUTPUT_DIR` (which
    its last line offers) said it "holds no preflab run". Now the report reads it: cluster purity is its headline."""
    from preflab.report.headline import headline_rows
    from preflab.report.runs import collect_runs, load_run

    _, root, summary = toy
    assert (root / "full" / "config.yaml").is_file()
    runs, _ = collect_runs([root / "full"])
    assert runs == [root / "full"]
    rows = {r["metric"]: r for r in headline_rows(load_run(root / "full"))}
    assert rows["metric (cluster_purity)"]["after"][1] == summary["metric_after"] == 1.0
