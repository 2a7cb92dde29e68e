"""`preflab eval --task diffusion` on ppd runs: each held-out pair scored with its user's embedding through the saved
user branch equals the run's own eval on the same pairs, and a computation by hand on the tiny pipeline; held-out
users come from the saved table, --user-embeddings or the run's configured file; the rest is refused by name."""
import json
import math
import shutil

import pytest
import torch

pytest.importorskip("diffusers")

from preflab.errors import ConfigError, DataError  # noqa: E402
from preflab.loops.diffusion import DiffusionRun, draw_seed  # noqa: E402

# held-out pairs: user2 and user9 have no training rows (the training data alternates user0 / user1)
HELD_OUT_USERS = ["user2", "user1", "user9", "user0"]


def _stacks():
    g = torch.Generator().manual_seed(0)
    return {"user0": torch.randn(3, 3, 8, generator=g) * 5, "user1": torch.randn(2, 3, 8, generator=g) * 5,
            "user2": torch.randn(3, 8, generator=g) * 5, "user9": torch.randn(2, 3, 8, generator=g) * 5}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A ppd run (2 steps) on precomputed subset stacks of user0..2 and user9, with the held-out file as its eval set;
    its own eval after training is the number `preflab eval` must reproduce. It saves checkpoint-1 and logs its eval
    after step 1 too (the number `preflab eval` of checkpoint-1 must reproduce)."""
    from safetensors.torch import save_file

    from preflab.config import config_from_dict
    from preflab.diffusion.pipeline import tiny_text_to_image_pipeline
    from preflab.diffusion.shapes import write_pair_dataset

    root = tmp_path_factory.mktemp("ppd-eval")
    tiny_text_to_image_pipeline(0).save_pretrained(root / "tiny")
    train = write_pair_dataset(root / "data", 8, seed=0)
    rows = [json.loads(x) for x in open(write_pair_dataset(root / "data", 4, seed=1, name="test"))]
    for row, user in zip(rows, HELD_OUT_USERS):
        row["user_id"] = user
    held_out = root / "data" / "heldout.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table = _stacks()
    save_file(table, str(root / "users.safetensors"))
    cfg = config_from_dict({
        "task": "diffusion", "model_name_or_path": str(root / "tiny"), "dataset_name": str(train),
        "eval_dataset_name": str(held_out), "loss_type": "ppd", "beta": 200.0, "resolution": 16,
        "per_device_train_batch_size": 4, "per_device_eval_batch_size": 3, "max_steps": 2, "learning_rate": 1e-2,
        "lr_scheduler_type": "constant", "logging_steps": 1, "output_dir": str(root / "run"), "use_cpu": True,
        "disable_tqdm": True, "user_embeddings": str(root / "users.safetensors"), "seed": 3, "save_steps": 1,
        "eval_steps": 1})
    run = DiffusionRun(cfg)
    run.train()
    return {"root": root, "run": run, "own": run.evaluate(), "held_out": str(held_out), "table": table,
            "out": root / "run", "train": str(train)}


def _without_user(trained, tmp_path, user="user9"):
    """A copy of the run's output whose saved table lacks `user` (a run whose user_embeddings had no such user)."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    shutil.copytree(trained["out"], out)
    info = json.loads((out / "users.json").read_text())
    first, count = info["subsets"].pop(user)
    info["users"].remove(user)
    state = load_file(str(out / "user_branch.safetensors"))
    weight = state["users.weight"]
    state["users.weight"] = torch.cat([weight[:first], weight[first + count:]]).contiguous()
    for u, (f, c) in info["subsets"].items():
        if f > first:
            info["subsets"][u] = [f - count, c]
    save_file(state, str(out / "user_branch.safetensors"))
    (out / "users.json").write_text(json.dumps(info))
    return out


def _by_hand(trained):
    """Each held-out pair's denoising errors [chosen, rejected] with the branch on its user's subset 0 (the file's
    [L_u, d_u], standardised) and off, computed here: diffusers' scheduler.add_noise at the documented draws (t, eps
    from a generator seeded by draw_seed(seed, "eval", position)), target eps (the tiny pipeline predicts epsilon)."""
    from diffusers import UNet2DConditionModel

    from preflab.diffusion.pipeline import encode_images, encode_prompts
    from preflab.diffusion.user_branch import PPDDenoiser, normalize_user_embeddings

    run, table = trained["run"], trained["table"]
    comps = run.components
    assert run.schedule.prediction_type == "epsilon"
    # the saved pipeline's UNet is the base one (ppd keeps it frozen)
    base = UNet2DConditionModel.from_pretrained(str(trained["out"]), subfolder="unet")
    trained_unet = run.module.unet.state_dict()
    assert all(torch.equal(v, trained_unet[k]) for k, v in base.state_dict().items())
    items = run.eval_data
    x_w = encode_images(comps, torch.stack([x.chosen for x in items]))
    x_l = encode_images(comps, torch.stack([x.rejected for x in items]))
    text = encode_prompts(comps, [x.prompt for x in items])
    embeds = torch.stack([normalize_user_embeddings(table[x.user][0] if table[x.user].dim() == 3 else table[x.user])
                          for x in items])
    on, off = [], []
    with torch.no_grad():
        for i in range(len(items)):
            g = torch.Generator().manual_seed(draw_seed(run.cfg.seed, "eval", i))
            t = run.scorer.noiser.sample_timesteps(1, g)
            eps = torch.randn(x_w.shape[1:], generator=g)[None]
            cond = {"encoder_hidden_states": text[i:i + 1], "user_embeds": embeds[i:i + 1]}
            for out, use in ((on, True), (off, False)):
                f = PPDDenoiser(run.module.unet, run.module.user_branch, use_user=use)
                errs = [((f(comps.scheduler.add_noise(x[i:i + 1], eps, t), t, cond) - eps) ** 2).mean().item()
                        for x in (x_w, x_l)]
                out.append(errs)
    return torch.tensor(on, dtype=torch.float64), torch.tensor(off, dtype=torch.float64)


def test_ppd_eval_equals_the_runs_own_eval_and_a_computation_by_hand(trained):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    own = trained["own"]
    assert own["eval_loss"] != pytest.approx(math.log(2), abs=1e-4)  # the branch trained: not the base model
    result = evaluate_diffusion_run(str(trained["out"]), trained["held_out"], batch_size=3)
    m = result["metrics"]
    assert result["num_pairs"] == 4 and result["loss_type"] == "ppd"
    assert m["loss"] == pytest.approx(own["eval_loss"], rel=1e-6, abs=1e-9)
    assert m["implicit_accuracy"] == own["eval_implicit_accuracy"]
    assert m["rewards/margins"] == pytest.approx(own["eval_rewards/margins"], rel=1e-6, abs=1e-9)
    on, off = _by_hand(trained)
    z = (off[:, 0] - off[:, 1]) - (on[:, 0] - on[:, 1])  # Delta_ref - Delta_theta
    assert m["loss"] == pytest.approx(torch.nn.functional.softplus(-100.0 * z).mean().item(), rel=1e-4)
    assert m["implicit_accuracy"] == pytest.approx(((z > 0).double().mean() + 0.5 * (z == 0).double().mean()).item())
    acc = lambda e: ((e[:, 0] < e[:, 1]).double().mean() + 0.5 * (e[:, 0] == e[:, 1]).double().mean()).item()  # noqa
    assert m["preference_accuracy/personalized"] == pytest.approx(acc(on))
    assert m["preference_accuracy/base"] == pytest.approx(acc(off))
    # user0 and user1 trained: their pairs are said not to be of held-out users
    assert result["users"] == {"evaluated": 4, "trained_on": 2, "pairs_of_trained_users": 2}
    assert any("2 of 4 evaluated users ('user0', 'user1'; 2 of 4 pairs) have training rows" in n
               for n in result["notes"])
    assert result["overlap_with_training"]["pairs"] == 0


def test_ppd_eval_skips_a_bad_row_and_equals_the_eval_of_the_good_rows(trained):
    """A row of --data without its user id is skipped and counted (as the other evals do), not a stop advising
    on_bad_row (an option `preflab eval` does not take): the user table is the saved run's, so the metrics with the
    bad row equal those of the good rows alone, and the note and data_report count it."""
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    rows = [json.loads(x) for x in open(trained["held_out"])]
    bad = {k: v for k, v in rows[0].items() if k != "user_id"}
    with_bad = trained["root"] / "data" / "heldout_with_bad.jsonl"  # beside the images (relative paths)
    with_bad.write_text("".join(json.dumps(r) + "\n" for r in rows[:2] + [bad] + rows[2:]))
    result = evaluate_diffusion_run(str(trained["out"]), str(with_bad), batch_size=3)
    clean = evaluate_diffusion_run(str(trained["out"]), trained["held_out"], batch_size=3)
    assert result["num_pairs"] == clean["num_pairs"] == 4
    assert result["metrics"] == pytest.approx(clean["metrics"], rel=1e-6, abs=1e-9)
    assert result["users"] == clean["users"] and result["per_user"].keys() == clean["per_user"].keys()
    for user, numbers in clean["per_user"].items():
        assert result["per_user"][user]["pairs"] == numbers["pairs"]
        assert result["per_user"][user]["loss"] == pytest.approx(numbers["loss"], rel=1e-6, abs=1e-9)
    said = [n for n in result["notes"] if n.startswith("data: ")]
    assert said == [f"data: 1 bad row(s) of --data {with_bad} skipped (missing_user: 1). First skipped: line 3, "
                    "field 'user_id': missing_user (the row has no user id). The rows are listed under data_report "
                    "in eval.json; the metrics cover the 4 pairs kept"]
    assert result["data_report"]["rows"]["skipped"] == {"missing_user": 1}
    assert "data_report" not in clean and not [n for n in clean["notes"] if n.startswith("data: ")]
    only_bad = trained["root"] / "data" / "heldout_only_bad.jsonl"
    only_bad.write_text(json.dumps(bad) + "\n")
    # every row bad: an error naming the file, the count and the first bad row's field (no metric over no pairs)
    with pytest.raises(DataError, match=r"heldout_only_bad\.jsonl: no usable rows \(1 read, 1 skipped \(missing_user: "
                                        r"1\).* First skipped: row 0, field 'user_id': the row has no user id"):
        evaluate_diffusion_run(str(trained["out"]), str(only_bad), batch_size=3)


def test_a_held_out_user_missing_from_the_saved_table_comes_from_user_embeddings(trained, tmp_path):
    """user9 dropped from the saved table: --user-embeddings (or the run's configured file) supplies it, standardised
    as the run did, and the metrics equal the run's own; a file without it is refused naming the user, row, file."""
    from safetensors.torch import save_file

    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    out = _without_user(trained, tmp_path)
    own = trained["own"]
    from preflab.cli import main  # through the command: --user-embeddings reaches the eval, eval.json is written

    assert main(["eval", str(out), "--data", trained["held_out"], "--task", "diffusion", "--batch-size", "3",
                 "--user-embeddings", str(trained["root"] / "users.safetensors")]) == 0
    given = json.loads((out / "eval.json").read_text())
    configured = evaluate_diffusion_run(str(out), trained["held_out"], batch_size=3)  # config.yaml's file
    for result in (given, configured):
        assert result["metrics"]["loss"] == pytest.approx(own["eval_loss"], rel=1e-6, abs=1e-9)
        assert result["metrics"]["implicit_accuracy"] == own["eval_implicit_accuracy"]
    save_file({k: v for k, v in trained["table"].items() if k != "user9"}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match=r"1 user\(s\) have no embedding in .*users\.json \(the run's 3 users\) or "
                                          r".*other\.safetensors: 'user9' \(row 2\)"):
        evaluate_diffusion_run(str(out), trained["held_out"], user_embeddings=str(tmp_path / "other.safetensors"))
    save_file({"user9": torch.zeros(2, 4, 8)}, str(tmp_path / "wide.safetensors"))
    with pytest.raises(ConfigError, match=r"wide\.safetensors: user 'user9' has \[L_u, d_u\] = \[4, 8\], but the "
                                          r"run's user branch reads \[L_u, d_u\] = \[3, 8\]"):
        evaluate_diffusion_run(str(out), trained["held_out"], user_embeddings=str(tmp_path / "wide.safetensors"))


def test_user_embeddings_is_refused_for_a_diffusion_run_of_another_loss(trained, tmp_path):
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    out = tmp_path / "dpo"
    out.mkdir()
    (out / "config.yaml").write_text((trained["out"] / "config.yaml").read_text().replace("loss_type: ppd",
                                                                                           "loss_type: diffusion_dpo"))
    with pytest.raises(ConfigError, match="--user-embeddings gives a ppd run's user embeddings; .* is a diffusion_dpo "
                                          "run"):
        evaluate_diffusion_run(str(out), trained["held_out"], user_embeddings="u.safetensors")


@pytest.mark.parametrize("kwargs, expected", [
    ({"checkpoint": True}, "is a checkpoint of a ppd run: it holds no users.json"),
    ({"reference": "x"}, "--reference with a ppd run: its reference is its own UNet without the user branch"),
])
def test_ppd_eval_refuses_what_it_cannot_do(tmp_path, kwargs, expected):
    from preflab.loops.diffusion_eval import saved_user_table

    with pytest.raises(ConfigError, match=expected):
        saved_user_table(str(tmp_path), {"loss_type": "ppd"}, None, **kwargs)


def test_ppd_eval_of_a_learned_table_refuses_a_user_embeddings_file_and_unknown_users(trained, tmp_path):
    """A run that learned its users' embeddings (no user_embeddings in its config) has no file to take held-out users
    from: --user-embeddings is refused, and so is a user outside its table (naming the row and what to do)."""
    from preflab.loops.diffusion import UserTable
    from preflab.loops.diffusion_eval import saved_user_table

    out = _without_user(trained, tmp_path)
    with pytest.raises(ConfigError, match="learned one embedding per training user"):
        saved_user_table(str(out), {"loss_type": "ppd"}, str(trained["root"] / "users.safetensors"))
    table = saved_user_table(str(out), {"loss_type": "ppd"}, None)
    assert isinstance(table, UserTable) and table.file is None and "user9" not in table.user_rows
    assert table.including({"user9", "user0"}) is table  # nothing to read it from
    (out / "users.json").write_text(json.dumps({"users": [], "tokens": 5, "subsets": {}}))
    with pytest.raises(ConfigError, match=r"users\.json \(tokens 5, 0 users\) does not describe"):
        saved_user_table(str(out), {"loss_type": "ppd"}, None)


@pytest.mark.parametrize("task, said", [
    ("dpo", "--user-embeddings gives a ppd diffusion run's user embeddings (--task diffusion); the policy eval"),
    ("reward", "preflab eval --task reward does not use --user-embeddings"),
])
def test_user_embeddings_option_is_refused_outside_a_diffusion_eval(tmp_path, capsys, task, said):
    from preflab.cli import main

    assert main(["eval", str(tmp_path), "--data", "x.jsonl", "--task", task, "--user-embeddings", "u.st"]) != 0
    assert said in capsys.readouterr().err


def test_ppd_eval_of_learned_user_embeddings_equals_the_runs_eval_and_refuses_an_unseen_user(trained, tmp_path):
    """A run that learned one embedding per training user (user0, user1): its held-out pairs of those users score as
    its own eval does (the saved, trained table); a pair of another user is refused naming the row and the reason.
    Its checkpoint-1 (the branch and the learned table at step 1: module.users.weight moved in step 2) scores as the
    run's eval logged after step 1."""
    from preflab.config import config_from_dict
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    root = trained["root"]
    seen = root / "data" / "seen.jsonl"  # beside the images (relative paths)
    rows = [json.loads(x) for x in open(trained["held_out"])]
    seen.write_text("".join(json.dumps({**r, "user_id": f"user{i % 2}"}) + "\n" for i, r in enumerate(rows)))
    cfg = config_from_dict({
        "task": "diffusion", "model_name_or_path": str(root / "tiny"), "dataset_name": trained["train"],
        "eval_dataset_name": str(seen), "loss_type": "ppd", "beta": 200.0, "resolution": 16,
        "per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "lr_scheduler_type": "constant",
        "output_dir": str(tmp_path / "run"), "use_cpu": True, "disable_tqdm": True, "user_embedding_tokens": 2,
        "user_embedding_dim": 8, "save_steps": 1, "eval_steps": 1})
    run = DiffusionRun(cfg)
    run.train()
    own = run.evaluate()
    logged = logged_evals(tmp_path / "run")
    from safetensors.torch import load_file

    table_1 = load_file(str(tmp_path / "run" / "checkpoint-1" / "model.safetensors"))["module.users.weight"]
    final = load_file(str(tmp_path / "run" / "user_branch.safetensors"))["users.weight"]
    assert (table_1 - final).abs().max() > 1e-4  # step 2 moved the learned table: the checkpoint's own is read
    at_1 = evaluate_diffusion_run(str(tmp_path / "run" / "checkpoint-1"), str(seen))
    assert at_1["metrics"]["loss"] == pytest.approx(logged[1]["eval_loss"], rel=1e-6, abs=1e-9)
    assert at_1["metrics"]["implicit_accuracy"] == logged[1]["eval_implicit_accuracy"]
    assert own["eval_loss"] != pytest.approx(math.log(2), abs=1e-4)
    result = evaluate_diffusion_run(str(tmp_path / "run"), str(seen))
    assert result["metrics"]["loss"] == pytest.approx(own["eval_loss"], rel=1e-6, abs=1e-9)
    assert result["metrics"]["implicit_accuracy"] == own["eval_implicit_accuracy"]
    assert result["users"] == {"evaluated": 2, "trained_on": 2, "pairs_of_trained_users": 4}
    with pytest.raises(ConfigError, match=r"have no embedding in .*users\.json \(the run's 2 users\): 'user2' \(row 0\)"
                                          r".*learned one embedding per training user"):
        evaluate_diffusion_run(str(tmp_path / "run"), trained["held_out"])


def logged_evals(out) -> dict:
    """{step: the eval row a run logged after that step} from its metrics.jsonl (the last row of a step wins)."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "eval_loss" in r}


def test_ppd_eval_of_a_checkpoint_equals_the_runs_logged_eval_at_its_step(trained, tmp_path):
    """checkpoint-1 of the precomputed-table run: its user branch at step 1 with the table its trainer_state.json
    describes (rebuilt from the run's user_embeddings file, checked by sha256) scores as the run's eval logged after
    step 1, which differs from the final one; checkpoint-2 scores as the final directory does."""
    from preflab.loops.diffusion_eval import evaluate_diffusion_run
    from preflab.loops.diffusion import table_sha256

    out = trained["out"]
    logged = logged_evals(out)
    assert logged[1]["eval_loss"] != pytest.approx(logged[2]["eval_loss"], rel=1e-3)  # step 2 moved the branch
    at_1 = evaluate_diffusion_run(str(out / "checkpoint-1"), trained["held_out"], batch_size=3)
    assert at_1["metrics"]["loss"] == pytest.approx(logged[1]["eval_loss"], rel=1e-6, abs=1e-9)
    assert at_1["metrics"]["implicit_accuracy"] == logged[1]["eval_implicit_accuracy"]
    assert at_1["metrics"]["rewards/margins"] == pytest.approx(logged[1]["eval_rewards/margins"], rel=1e-6, abs=1e-9)
    assert at_1["checkpoint"] == str(out / "checkpoint-1") and at_1["users"]["evaluated"] == 4
    at_2 = evaluate_diffusion_run(str(out / "checkpoint-2"), trained["held_out"], batch_size=3)
    final = evaluate_diffusion_run(str(out), trained["held_out"], batch_size=3)
    for key in ("loss", "implicit_accuracy", "preference_accuracy/personalized", "preference_accuracy/base"):
        assert at_2["metrics"][key] == pytest.approx(final["metrics"][key], rel=1e-6, abs=1e-9)
    # the checkpoint's record is the final users.json plus the table's sha256
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    users = json.loads((out / "users.json").read_text())
    from safetensors.torch import load_file

    weight = load_file(str(out / "user_branch.safetensors"))["users.weight"]
    assert state["ppd_users"] == {**users, "table_sha256": table_sha256(weight)}


def test_ppd_eval_of_a_checkpoint_refuses_a_changed_table_file_and_an_older_checkpoint(trained, tmp_path):
    from safetensors.torch import save_file

    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    checkpoint = str(trained["out"] / "checkpoint-1")
    # (a constant shift or scale would not change the standardised rows)
    changed = dict(trained["table"], user1=trained["table"]["user1"] + torch.arange(8.0))
    save_file(changed, str(tmp_path / "changed.safetensors"))
    with pytest.raises(ConfigError, match=r"changed\.safetensors no longer holds the table .*checkpoint-1 trained "
                                          r"with"):
        evaluate_diffusion_run(checkpoint, trained["held_out"], user_embeddings=str(tmp_path / "changed.safetensors"))
    save_file({k: v for k, v in trained["table"].items() if k != "user0"}, str(tmp_path / "less.safetensors"))
    with pytest.raises(ConfigError, match=r"less\.safetensors lacks 1 of the 4 users .* \('user0'\)"):
        evaluate_diffusion_run(checkpoint, trained["held_out"], user_embeddings=str(tmp_path / "less.safetensors"))
    with pytest.raises(ConfigError, match="--reference with a ppd run"):
        evaluate_diffusion_run(checkpoint, trained["held_out"], reference="x")
    with pytest.raises(ConfigError, match=r"nowhere\.safetensors, which is not a file here: a checkpoint holds the "
                                          r"user branch, not the frozen table"):
        evaluate_diffusion_run(checkpoint, trained["held_out"], user_embeddings=str(tmp_path / "nowhere.safetensors"))
    (tmp_path / "text.safetensors").write_text("not a table")
    with pytest.raises(ConfigError, match=r"text\.safetensors' is not a readable safetensors file"):
        evaluate_diffusion_run(checkpoint, trained["held_out"], user_embeddings=str(tmp_path / "text.safetensors"))
    old = tmp_path / "run" / "checkpoint-1"
    shutil.copytree(trained["out"] / "checkpoint-1", old)
    shutil.copy(trained["out"] / "config.yaml", tmp_path / "run" / "config.yaml")
    state = json.loads((old / "trainer_state.json").read_text())
    del state["ppd_users"]
    (old / "trainer_state.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="checkpoint of a ppd run without ppd_users in its trainer_state.json"):
        evaluate_diffusion_run(str(old), trained["held_out"], user_embeddings=str(trained["root"] /
                                                                                 "users.safetensors"))


def test_per_user_breakdown_of_hand_made_pairs():
    """Three pairs of users a, b, a with hand-chosen losses and errors (PAIR_COLUMNS): each user's means by hand."""
    from preflab.loops.ppd_eval import per_user_breakdown

    columns = torch.tensor([[1.0, 1, 2, 3, 3],     # a: personalized right, base tie; z = 0 - (-1) = 1
                            [2.0, 2, 1, 1, 2],     # b: personalized wrong, base right; z = -1 - 1 = -2
                            [4.0, 5, 5, 2, 1]],    # a: personalized tie, base wrong; z = 1 - 0 = 1
                           dtype=torch.float64)
    got = per_user_breakdown(["a", "b", "a"], columns, {"b", "c"})
    assert got == {"a": {"pairs": 2, "loss": 2.5, "implicit_accuracy": 1.0, "preference_accuracy/personalized": 0.75,
                         "preference_accuracy/base": 0.25, "preference_accuracy/gain": 0.5, "seen_in_training": False},
                   "b": {"pairs": 1, "loss": 2.0, "implicit_accuracy": 0.0, "preference_accuracy/personalized": 0.0,
                         "preference_accuracy/base": 1.0, "preference_accuracy/gain": -1.0, "seen_in_training": True}}
    assert per_user_breakdown(["a"], columns[:1], None)["a"]["seen_in_training"] is None


def test_ppd_eval_per_user_numbers_are_the_pooled_per_pair_values_by_user(trained, capsys):
    """eval.json per_user from the command: each user's numbers recomputed here from the per-pair errors computed by
    hand (_by_hand) and the loss softplus(-(beta/2) z); the pairs-weighted mean of each column is the pooled metric.
    The terminal shows one line per user (4 <= 10)."""
    from preflab.cli import main

    out = trained["out"]
    assert main(["eval", str(out), "--data", trained["held_out"], "--task", "diffusion", "--batch-size", "3",
                 "--out", str(out / "per-user.json")]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "per-user.json").read_text())
    per_user, m = result["per_user"], result["metrics"]
    assert sorted(per_user) == sorted(HELD_OUT_USERS)
    on, off = _by_hand(trained)
    z = (off[:, 0] - off[:, 1]) - (on[:, 0] - on[:, 1])
    loss = torch.nn.functional.softplus(-100.0 * z)
    acc = lambda e: ((e[:, 0] < e[:, 1]).double().mean() + 0.5 * (e[:, 0] == e[:, 1]).double().mean()).item()  # noqa
    for i, x in enumerate(trained["run"].eval_data):  # one pair per user in this file
        got = per_user[x.user]
        assert got["pairs"] == 1 and got["loss"] == pytest.approx(loss[i].item(), rel=1e-4)
        assert got["preference_accuracy/personalized"] == acc(on[i:i + 1])
        assert got["preference_accuracy/base"] == acc(off[i:i + 1])
        assert got["implicit_accuracy"] == float(z[i] > 0) + 0.5 * float(z[i] == 0)
        assert got["seen_in_training"] is (x.user in ("user0", "user1"))
        assert got["preference_accuracy/gain"] == got["preference_accuracy/personalized"] - \
            got["preference_accuracy/base"]
    n = sum(u["pairs"] for u in per_user.values())
    weighted = lambda key: sum(u["pairs"] * u[key] for u in per_user.values()) / n  # noqa: E731
    assert n == result["num_pairs"]
    assert weighted("loss") == pytest.approx(m["loss"], rel=1e-6)  # the pooled loss: float32 batch means
    for key in ("implicit_accuracy", "preference_accuracy/personalized", "preference_accuracy/base"):
        assert weighted(key) == pytest.approx(m[key], abs=1e-12)
    for user, got in per_user.items():
        assert (f"    {user}: 1 pairs, loss {got['loss']:.4f}, preference accuracy "
                f"{got['preference_accuracy/personalized']:.4f} vs base {got['preference_accuracy/base']:.4f}") \
            in printed
    assert "  per user (4; eval.json per_user):" in printed


def test_per_user_lines_show_every_user_up_to_ten_else_the_largest_and_smallest_gains():
    from preflab.loops.ppd_eval import per_user_lines

    def user(gain):
        return {"pairs": 2, "loss": 0.5, "preference_accuracy/personalized": 0.5 + gain / 2,
                "preference_accuracy/base": 0.5 - gain / 2, "preference_accuracy/gain": gain}

    ten = {f"u{i:02d}": user(i / 10) for i in range(10)}
    lines = per_user_lines(ten)
    assert lines[0] == "  per user (10; eval.json per_user):" and len(lines) == 11
    assert lines[1] == "    u00: 2 pairs, loss 0.5000, preference accuracy 0.5000 vs base 0.5000 (+0.0000)"
    twelve = {**ten, "u10": user(-0.5), "u11": user(0.95)}
    lines = per_user_lines(twelve)
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["u11", "u09", "u08", "...", "u01", "u00", "u10"]
    assert per_user_lines({}) == []
    won = per_user_lines({"a": {**user(0.0), "win_rate": 0.75, "win_rate/n": 4}})
    assert won[1].endswith("(+0.0000), win rate 0.7500 of 4")


def test_ppd_win_rate_with_a_per_user_reward_is_each_users_win_rate_by_hand(trained, tmp_path):
    """A toy per-user reward: user0 likes bright images (score = mean pixel), user1 dark ones (minus it). The reward
    takes `users`, so it gets each image's user (the pairs' users in order); each user's win rate is recomputed here
    from the images it was given (personalized first, then base): [s(p) > s(b)] + [s(p) = s(b)]/2 over the user's
    prompts, and they differ by user. The same eval with a reward that takes no users still runs, says so in a note,
    and scores every image by brightness."""
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    rows = [json.loads(x) for x in open(trained["held_out"])]
    two = trained["root"] / "data" / "two-users.jsonl"  # beside the images (relative paths)
    two.write_text("".join(json.dumps({**rows[i % 4], "user_id": f"user{i % 2}"}) + "\n" for i in range(8)))
    calls = []

    def taste(images, prompts, users):
        calls.append((images.clone(), list(users)))
        bright = images.double().mean(dim=(1, 2, 3))
        return [float(b) if u == "user0" else -float(b) for b, u in zip(bright, users)]

    result = evaluate_diffusion_run(str(trained["out"]), str(two), reward_fn=taste, num_prompts=8, batch_size=4)
    (personalized, users), (base, users_again) = calls
    assert users == users_again == [f"user{i % 2}" for i in range(8)]
    p, b = personalized.double().mean(dim=(1, 2, 3)), base.double().mean(dim=(1, 2, 3))
    assert not torch.equal(p, b)  # the trained branch changes the samples
    by_hand = {}
    for user, sign in (("user0", 1.0), ("user1", -1.0)):
        mine = [i for i, u in enumerate(users) if u == user]
        wins = [1.0 if sign * p[i] > sign * b[i] else 0.5 if p[i] == b[i] else 0.0 for i in mine]
        by_hand[user] = sum(wins) / len(wins)
        assert result["per_user"][user]["win_rate"] == pytest.approx(by_hand[user], abs=1e-12)
        assert result["per_user"][user]["win_rate/n"] == 4
    assert by_hand["user0"] != by_hand["user1"]
    assert result["metrics"]["win_rate"] == pytest.approx((by_hand["user0"] + by_hand["user1"]) / 2, abs=1e-12)
    assert not any("takes no `users`" in n for n in result["notes"])

    def brightness(images, prompts):
        return images.double().mean(dim=(1, 2, 3)).tolist()

    plain = evaluate_diffusion_run(str(trained["out"]), str(two), reward_fn=brightness, num_prompts=8, batch_size=4)
    wins = [1.0 if p[i] > b[i] else 0.5 if p[i] == b[i] else 0.0 for i in range(8)]
    assert plain["metrics"]["win_rate"] == pytest.approx(sum(wins) / 8, abs=1e-12)
    assert plain["per_user"]["user0"]["win_rate"] == result["per_user"]["user0"]["win_rate"]  # the same taste
    assert any("--reward-fn brightness takes no `users`" in n for n in plain["notes"])


def test_reward_functions_get_users_when_their_signature_takes_them():
    from preflab.loops.diffusion_eval import image_rewards
    from preflab.loops.ppd_eval import takes_users

    class Judge:
        def __call__(self, images, prompts, users=None):
            return [len(u) for u in users]

    def keyword_only(images, prompts, *, users):
        return [0.0] * len(users)

    def anything(images, prompts, **kwargs):
        return [float(len(kwargs["users"][0]))] * len(prompts)

    def positional_only(images, prompts, users, /):
        return [0.0]

    def star(images, prompts, *users):
        return [0.0]

    assert [takes_users(f) for f in (Judge(), keyword_only, anything, positional_only, star, len)] == \
        [True, True, True, False, False, False]
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    assert image_rewards(Judge(), images, ["a", "b"], "trained", ["ab", "abc"]) == [2.0, 3.0]
    assert image_rewards(anything, images, ["a", "b"], "trained", ["abcd", "x"]) == [4.0, 4.0]
    seen = []
    assert image_rewards(lambda i, p: seen.append(p) or [1.0, 2.0], images, ["a", "b"], "trained", ["u", "v"]) == \
        [1.0, 2.0]
    with pytest.raises(ConfigError, match=r"It is called as f\(images, prompts, users=users\)"):
        image_rewards(lambda i, p, users: 1 / 0, images, ["a", "b"], "trained", ["u", "v"])
    with pytest.raises(ConfigError, match=r"It is called as f\(images, prompts\) and"):
        image_rewards(lambda i, p, users: 1 / 0, images, ["a", "b"], "trained")  # not a ppd eval: no users
