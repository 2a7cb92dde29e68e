"""A recipe run records the model it started from (RUN/start.json, RUN/start/: preflab.recipe_start) and `preflab
eval RUN/<stage>` takes the model the stage trained against as its default reference: the same numbers as with
--reference given; the saved start is the model the first stage began from (tensor for tensor); a changed or missing
start is refused naming its path; a resume leaves the start untouched."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import preflab.loops.offline as offline
from preflab.cli import main
from preflab.errors import ConfigError
from preflab.recipe_start import (START, START_FILE, record_start, save_start, stage_reference,
                                  weights_fingerprint)
from preflab.reward_models.fspo import run_fspo

TINY = {"users_per_group": 3, "rows_per_user": 4, "heldout_fraction": 0.34, "hidden_size": 32, "num_layers": 1,
        "steps": 1, "batch_size": 4, "instruction": "Answer."}


def _recording_trainer(monkeypatch, module, seen: list):
    """Trainer of `module` that keeps (policy, reference) state_dicts as each stage's trainer receives them."""
    base = module.Trainer

    class Recording(base):
        def __init__(self, cfg, policy=None, ref=None, **kw):
            seen.append((cfg.output_dir, {k: v.clone() for k, v in policy.state_dict().items()},
                         None if ref is None else {k: v.clone() for k, v in ref.state_dict().items()}))
            super().__init__(cfg, policy=policy, ref=ref, **kw)

    monkeypatch.setattr(module, "Trainer", Recording)


@pytest.fixture(scope="module")
def fspo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fspo") / "run"
    seen: list = []
    with pytest.MonkeyPatch.context() as mp:
        _recording_trainer(mp, offline, seen)  # fspo imports offline.Trainer when it runs
        run_fspo(str(out), quiet=True, baseline=False, **TINY)
    return out, seen


def _eval(run, stage, name, *extra):
    path = run.parent / f"{name}.json"
    assert main(["eval", str(run / stage), "--data", str(run / "data" / "heldout_episodes.jsonl"), "--out",
                 str(path), *extra]) == 0
    return json.loads(path.read_text())


def test_saved_start_is_the_reference_the_first_stage_trained_against(fspo_run):
    run, seen = fspo_run
    (stage_dir, policy, ref), = seen  # baseline=False: one stage
    assert stage_dir == str(run / "fspo")
    saved = load_file(str(run / "start" / "model.safetensors"))
    expected = {k: v for k, v in ref.items() if k in saved}
    assert set(saved) == set(expected) and len(saved) > 3
    for k in saved:  # the weights the stage's frozen reference and its policy began with
        assert torch.equal(saved[k], expected[k]) and torch.equal(saved[k], policy[k]), k
    record = json.loads((run / START_FILE).read_text())
    assert record == {"start": {"kind": "saved", "path": "start", "fingerprint": weights_fingerprint(run / "start")},
                      "references": {"fspo": START, "pooled": START}}


def test_stage_eval_default_reference_equals_the_start_given_explicitly(fspo_run, capsys):
    run, _ = fspo_run
    default = _eval(run, "fspo", "default")
    assert f"the reference is {run / 'start'}" in capsys.readouterr().err
    given = _eval(run, "fspo", "given", "--reference", str(run / "start"))
    assert default["reference"] == given["reference"] == str(run / "start")
    assert default["reference_source"] == "start.json (the recipe's starting model)"
    assert "reference_ranking_accuracy" in default["metrics"]  # before: no reference (another architecture)
    assert default["metrics"] == given["metrics"]
    assert default["per_pair"] == given["per_pair"]
    # the policy-only run: the reference metrics are the reference's
    alone = _eval(run, "fspo", "alone", "--no-reference")
    assert "reference_ranking_accuracy" not in alone["metrics"]


def test_recipe_folder_eval_names_the_saved_start(fspo_run, tmp_path, capsys):
    source, _ = fspo_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    (run / "config.yaml").write_text("task: fspo\n")  # as `preflab train` saves it beside summary.json
    assert main(["eval", str(run), "--data", str(run / "data" / "heldout_episodes.jsonl")]) != 0
    assert f"Its starting model, as the recipe built it, is {run / 'start'}" in capsys.readouterr().err


def test_a_changed_or_missing_start_is_refused_naming_its_path(fspo_run, tmp_path, capsys):
    source, _ = fspo_run
    run = tmp_path / "run"
    shutil.copytree(source, run)
    weights = run / "start" / "model.safetensors"
    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0  # same names, shapes and file size: only the bytes differ
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="changed since the recipe recorded it") as err:
        stage_reference(run / "fspo")
    assert str(run / "start") in str(err.value) and "--reference DIR" in str(err.value)
    assert main(["eval", str(run / "fspo"), "--data", str(run / "data" / "heldout_episodes.jsonl")]) != 0
    assert str(run / "start") in capsys.readouterr().err
    shutil.rmtree(run / "start")
    with pytest.raises(ConfigError, match="is missing") as err:
        stage_reference(run / "fspo" / "checkpoint-1")  # a stage's checkpoint looks up its stage's record
    assert str(run / "start") in str(err.value)
    # --reference given: the record is not read
    assert main(["eval", str(run / "fspo"), "--data", str(run / "data" / "heldout_episodes.jsonl"),
                 "--reference", str(source / "start"), "--out", str(tmp_path / "e.json")]) == 0


def test_a_local_start_is_recorded_by_path_and_fingerprint_and_checked(fspo_run, tmp_path):
    source, _ = fspo_run
    local = tmp_path / "my-model"
    shutil.copytree(source / "start", local)
    run = tmp_path / "run"
    (run / "fspo").mkdir(parents=True)
    data = record_start(run, str(local), {"fspo": START}, resume=False)
    assert data["start"] == {"kind": "path", "path": str(local), "fingerprint": weights_fingerprint(source / "start")}
    assert not (run / "start").exists()  # recorded, not copied
    assert stage_reference(run / "fspo") == (str(local), "the recipe's starting model")
    assert stage_reference(run / "other") is None  # a stage without a reference: the run config decides
    (local / "config.json").write_text((local / "config.json").read_text().replace("{", "{\"x\": 1, ", 1))
    with pytest.raises(ConfigError, match="changed since") as err:
        stage_reference(run / "fspo")
    assert str(local) in str(err.value)
    shutil.rmtree(local)
    with pytest.raises(ConfigError, match="is missing") as err:
        stage_reference(run / "fspo")
    assert str(local) in str(err.value)
    hub = tmp_path / "hub"
    record_start(hub, "org/some-model", {"fspo": START}, resume=False)
    with pytest.raises(ConfigError, match="'org/some-model'.*--reference DIR"):
        stage_reference(hub / "fspo")


def test_resume_keeps_the_start_byte_for_byte_and_a_new_run_never_overwrites_it(tmp_path, capsys):
    out = tmp_path / "run"
    run_fspo(str(out), quiet=True, stop_after_stage="fspo", **TINY)
    files = sorted(p for p in [*(out / "start").iterdir(), out / START_FILE])
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    resumed = run_fspo(str(out), quiet=True, resume=True, **TINY)
    assert "pooled_accuracy_after" in resumed  # the second stage ran after the resume
    assert "is not the model this session built" not in capsys.readouterr().out  # the same model built again
    assert sorted(p for p in [*(out / "start").iterdir(), out / START_FILE]) == files
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    with pytest.raises(ConfigError, match="start.json exists"):
        save_start(out, None, None, {}, resume=False)


def test_raft_ladder_dpo_stage_trains_against_the_sft_stage_and_eval_takes_it(tmp_path, monkeypatch, capsys):
    import preflab.ladder.recipe as ladder

    seen: list = []
    _recording_trainer(monkeypatch, ladder, seen)
    out = tmp_path / "run"
    ladder.run_raft_ladder(str(out), n_train=16, n_test=2, sft_steps=1, dpo_steps=1, control=False, quiet=True)
    (sft_dir, sft_policy, sft_ref), (dpo_dir, _, dpo_ref) = seen
    assert (sft_dir, dpo_dir, sft_ref) == (str(out / "sft"), str(out / "dpo"), None)
    saved = load_file(str(out / "start" / "model.safetensors"))
    assert all(torch.equal(saved[k], sft_policy[k]) for k in saved)  # the model before SFT trained it
    sft_final = load_file(str(out / "sft" / "model.safetensors"))
    assert all(torch.equal(sft_final[k], dpo_ref[k]) for k in sft_final)  # the DPO stage's reference
    assert json.loads((out / START_FILE).read_text())["references"] == {"dpo": "sft"}
    assert stage_reference(out / "sft") is None  # SFT: no reference
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(line for line in (out / "data" / "dpo.jsonl").read_text().splitlines(True)[:4]))
    results = []
    for extra in ([], ["--reference", str(out / "sft")]):
        path = tmp_path / f"e{len(results)}.json"
        assert main(["eval", str(out / "dpo"), "--data", str(rows), "--out", str(path), *extra]) == 0
        results.append(json.loads(path.read_text()))
    assert f"the reference is {out / 'sft'}, recipe stage sft's final model" in capsys.readouterr().err
    assert "reference_ranking_accuracy" in results[0]["metrics"]
    assert results[0]["metrics"] == results[1]["metrics"]


def test_a_resume_that_builds_another_start_keeps_the_saved_one_and_says_so(tmp_path, capsys):
    """allow_config_change with another seed: the recipe builds other weights; start/ (which the finished fspo stage
    began from) is kept, and a note says the stages still to run begin from the new model."""
    out = tmp_path / "run"
    run_fspo(str(out), quiet=True, stop_after_stage="fspo", **TINY)
    saved = (out / "start" / "model.safetensors").read_bytes()
    run_fspo(str(out), quiet=True, resume=True, seed=1, allow_config_change=True, **TINY)
    assert (out / "start" / "model.safetensors").read_bytes() == saved
    assert f"{out / 'start'} (this run's starting model, kept on resume) is not the model this session built" in \
        capsys.readouterr().out
