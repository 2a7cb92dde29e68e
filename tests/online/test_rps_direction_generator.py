"""RPS's generator from a run directory (preflab.online.direction_generator): each candidate is sampled on the DPA
system prompt of its angle, with the names the run trained with; runs that are not direction-conditioned (the online
dpa_rsf recipe among them) are refused with the reason."""
import json

import pytest
import torch

from preflab.config import config_from_dict
from preflab.errors import ConfigError, DataError
from preflab.online import rps
from preflab.online.direction_generator import (
    conditioned_generator,
    parse_direction_prompt,
    run_conditioning,
)
from preflab.reward_models.multi_objective import (
    condition_prompt,
    direction_system_prompt,
    directional_best_of_n,
)

NAMES = ("truth", "echo")


def _ratings(prompts, responses):
    return torch.tensor([[float(len(r)), float(r.count("a"))] for r in responses], dtype=torch.float64)


def _run_dir(tmp_path, rows, **cfg):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    run.mkdir()
    config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny", "dataset_name": str(data), **cfg}).save(
        run / "config.yaml")
    return run


def _dpa_rows(angles=(0.0, 15.0, 30.0)):
    return directional_best_of_n(["hi", "yo"], list(angles), _ratings, candidates=[["a", "bb"], ["aa", "b"]],
                                 names=NAMES)


def test_run_conditioning_reads_names_and_trained_angles_from_the_dpa_rows(tmp_path):
    cond = run_conditioning(_run_dir(tmp_path, _dpa_rows()))
    assert cond.names == NAMES and cond.angles == (0.0, 15.0, 30.0) and cond.angle_range == (0.0, 30.0)
    # the angle is recovered from the integer weights alone too (round(100 cos t), round(100 sin t))
    text = condition_prompt("x", direction_system_prompt(-20.0, NAMES))
    names, angle = parse_direction_prompt(text, "here")
    assert names == NAMES and angle == pytest.approx(-20.0, abs=0.5)


def test_every_candidate_is_sampled_on_its_angles_system_prompt_at_equal_compute(tmp_path):
    cond = run_conditioning(_run_dir(tmp_path, _dpa_rows()))
    seen = []

    def sample(text):  # a fake policy: records its input, answers by the weight it was shown on 'echo'
        seen.append(text)
        return "a" * max(0, int(text.split("echo*")[1].split("\n")[0]) // 10)

    generate = conditioned_generator(sample, cond.names)
    out = rps.compare_rps(["p"], 45.0, generate, _ratings, k=5, theta_max=30.0)
    assert out["generator_calls"] == {"rps": 5, "baseline": 5}
    expected = [condition_prompt("p", direction_system_prompt(a, NAMES)) for a in out["angles"]]
    expected += [condition_prompt("p", direction_system_prompt(45.0, NAMES))] * 5
    assert seen == expected
    assert seen[0].startswith("You are a helpful") and "truth*77 + echo*64\n\np" in seen[0]  # 40 degrees


def test_main_with_a_run_directory_conditions_the_saved_model(tmp_path, monkeypatch):
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    run = _run_dir(tmp_path, _dpa_rows())
    tok = tiny_tokenizer("char")
    tiny_causal_lm(tok, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(run, safe_serialization=True)
    tok.save_pretrained(run)
    seen = []
    real = rps._demo_sampler

    def recording(model, tokenizer, seed, max_new_tokens, temperature):
        assert model.config.hidden_size == 16  # the run's saved model, not the demo's
        sample, reset = real(model, tokenizer, seed, 2, temperature)
        return (lambda text: seen.append(text) or sample(text)), reset

    monkeypatch.setattr(rps, "_demo_sampler", recording)
    summary = rps.main(["--generator", str(run), "--target-deg", "45", "--prompts", "2", "--k", "3",
                        "--output-dir", str(tmp_path / "out")])
    assert summary["generator_calls"] == {"rps": 6, "baseline": 6}
    assert summary["conditioning"] == {"names": list(NAMES), "trained_angles": [0.0, 15.0, 30.0],
                                       "target_outside_trained_range": True}
    first = seen[0]
    assert first == condition_prompt(first.split("\n\n", 1)[1], direction_system_prompt(40.0, NAMES))


def test_a_dpa_rsf_run_is_refused_because_it_never_sees_a_direction(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    config_from_dict({"task": "online", "online_task": "demo", "trainer": "dpa_rsf", "reward_weights": [1.0], "max_steps": 2,
                      "model_name_or_path": "builtin:demo-sft"}).save(run / "config.yaml")
    with pytest.raises(ConfigError, match=r"dpa_rsf run is not direction-conditioned.*reward_weights=\[1.0\]"):
        run_conditioning(run)
    with pytest.raises(ConfigError, match="RPS would equal best-of-k"):
        rps.main(["--generator", str(run), "--output-dir", str(tmp_path / "out")])


def test_other_runs_are_refused_naming_what_rps_needs(tmp_path):
    with pytest.raises(ConfigError, match="not a preflab run directory.*direction-conditioned policy"):
        run_conditioning(tmp_path)
    (tmp_path / "a").mkdir()
    plain = _run_dir(tmp_path / "a", [{"prompt": "hi", "completion": "x"}])
    with pytest.raises(ConfigError, match=r"rows.jsonl row 0 field 'prompt'.*does not start with the DPA system"):
        run_conditioning(plain)
    rows = _dpa_rows((0.0,)) + [{"prompt": condition_prompt("q", direction_system_prompt(10.0, ("a", "b")))}]
    (tmp_path / "b").mkdir()
    with pytest.raises(ConfigError, match=r"row 2 .*names \('a', 'b'\) differ"):
        run_conditioning(_run_dir(tmp_path / "b", rows))
    (tmp_path / "c").mkdir()
    hub = _run_dir(tmp_path / "c", _dpa_rows())
    (hub / "config.yaml").write_text((hub / "config.yaml").read_text().replace(str(tmp_path / "c" / "rows.jsonl"),
                                                                               "org/some-dataset"))
    with pytest.raises(ConfigError, match="not a local .json/.jsonl file"):
        run_conditioning(hub)
    (tmp_path / "d").mkdir()
    torn = _run_dir(tmp_path / "d", _dpa_rows())
    with open(tmp_path / "d" / "rows.jsonl", "a") as f:
        f.write('\n{"prompt": "cut off\n')
    with pytest.raises(DataError, match=r"rows\.jsonl row 6 \(line 8\): the line is not valid JSON"):
        run_conditioning(torn)  # read as every data file is: the file, row and line named


def test_a_runs_relative_dataset_name_is_read_where_the_run_started(tmp_path, monkeypatch):
    """A run started in `start` with dataset_name: rows.jsonl (relative): its launch.json records the file, so the
    conditioning reads from another directory too (before: 'not a local .json/.jsonl file')."""
    from preflab.launch_paths import save_run_config

    start = tmp_path / "start"
    start.mkdir()
    (start / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _dpa_rows()))
    (start / "run").mkdir()
    monkeypatch.chdir(start)
    save_run_config(config_from_dict({"task": "sft", "model_name_or_path": "builtin:tiny",
                                      "dataset_name": "rows.jsonl"}), start / "run")
    monkeypatch.chdir(tmp_path)
    cond = run_conditioning(start / "run")
    assert cond.names == NAMES and cond.angles == (0.0, 15.0, 30.0)
