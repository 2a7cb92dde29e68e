"""Which run's config a folder is read with (preflab.models.run_config.run_config, one rule for preflab eval): its own
config.yaml, its run's for a checkpoint-<step>, never a parent's for a model saved inside another run's folder; and
a LoRA checkpoint rebuilt with TrainConfig's own lora_* defaults."""
import dataclasses
import json

import torch
import yaml

from preflab.checkpoint import save_checkpoint
from preflab.cli import main
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
from lora_weights import randomize_lora_b  # tests/, on sys.path beside conftest

REWARD_RUN = {"task": "reward", "model_name_or_path": "builtin:tiny-llama", "beta": 0.7, "seed": 5}


def test_run_config_gives_its_parents_config_to_a_checkpoint_only(tmp_path):
    from preflab.eval.run_files import run_task
    from preflab.models.run_config import run_config

    run = tmp_path / "rm"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "policy").mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(REWARD_RUN))
    assert run_config(run / "checkpoint-3") == REWARD_RUN and run_task(run / "checkpoint-3") == "reward"
    assert run_config(run / "policy") == {} and run_task(run / "policy") is None


def test_a_policy_saved_inside_a_reward_runs_folder_evaluates_as_a_policy(tmp_path, capsys):
    # a policy saved by hand into a reward run's output_dir has no config.yaml of its own: load_for_eval read the
    # reward run's (its task) and refused it as that reward run
    from preflab.eval.loading import load_for_eval

    run = tmp_path / "rm"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(REWARD_RUN))
    tok = tiny_tokenizer("bytelevel")
    policy = tiny_causal_lm(tok, seed=1)
    policy.save_pretrained(run / "policy", safe_serialization=True)
    tok.save_pretrained(run / "policy")
    loaded, _ = load_for_eval(str(run / "policy"))
    want = dict(policy.named_parameters())
    assert all(torch.equal(p, want[k]) for k, p in loaded.named_parameters())
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sat on", "chosen": " the mat", "rejected": " a dog"}) + "\n")
    out = tmp_path / "eval.json"
    assert main(["eval", str(run / "policy"), "--data", str(data), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    # nothing of the reward run's config is taken for it: no reference (its model_name_or_path), not its beta
    assert f"{run / 'policy'} has no saved run config naming a model" in err
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 1 and result["beta"] != REWARD_RUN["beta"]


def test_a_lora_checkpoint_is_rebuilt_with_trainconfigs_lora_defaults(tmp_path, monkeypatch):
    # a LoRA run's checkpoint whose saved config lacks the lora_* options: the adapters are rebuilt with the values
    # training used, TrainConfig's defaults (eval's own copy said lora_dropout 0.0, TrainConfig says 0.05)
    import preflab.models.load as load
    from preflab.config import TrainConfig
    from preflab.eval.loading import load_for_eval

    names = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in names}
    tok = tiny_tokenizer("bytelevel")
    trained = load.add_lora(tiny_causal_lm(tok, seed=7), defaults["lora_r"], defaults["lora_alpha"],
                            defaults["lora_dropout"], defaults["lora_target_modules"])
    randomize_lora_b(trained, 0.1)
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad])
    path = save_checkpoint(tmp_path / "run", 3, trained, opt, None, {"config": {}})
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(
        {"model_name_or_path": "builtin:tiny-llama", "seed": 7, "use_peft": True}))
    used, real = [], load.add_lora
    monkeypatch.setattr(load, "add_lora", lambda model, *args, **extras: used.append((args, extras)) or
                        real(model, *args, **extras))
    merged, _ = load_for_eval(str(path))
    assert used == [(tuple(defaults[k] for k in names), {"use_rslora": False, "use_dora": False,
                                                         "modules_to_save": None})]  # TRL ModelConfig's, off
    ids = torch.tensor([[1, 10, 20, 30, 40]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained.eval()(ids).logits, atol=1e-5, rtol=0)
