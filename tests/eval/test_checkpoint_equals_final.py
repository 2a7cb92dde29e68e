"""`preflab eval RUN/checkpoint-N` of a checkpoint whose weights are the final model's gives the final model's eval.json
metrics exactly, for every run kind that writes checkpoints and is evaluated from them: a builtin DPO run, a LoRA run,
a reward run, a distillation run, and a recipe stage that trains a model it built itself (fspo: a 1-layer
tiny_causal_lm under model_name_or_path: builtin:tiny-llama). Found by a helper: the fspo checkpoint was loaded into
the 2-layer builtin:tiny-llama, its second layer left at random weights, and its metrics differed from the final's
(logps/chosen -146.62 vs -146.65). A checkpoint now records its model's architecture (trainer_state.json
"model_config"); a checkpoint whose weights do not fit the model built for them is refused naming both. (task: vlm:
tests/vlm/test_vlm_cat_reload.py, final and checkpoint-2 against one closed form.)"""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from preflab.checkpoint import load_checkpoint_weights, save_checkpoint
from preflab.cli import main
from preflab.errors import PreflabError
from preflab.eval.loading import load_for_eval
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PAIRS = str(ROOT / "examples/data/loud_echo_pairs.jsonl")
SFT = str(ROOT / "examples/data/loud_echo_sft.jsonl")
# 2 steps, a checkpoint at step 2: checkpoint-2 holds the final model's weights
TWO_STEPS = {"model_name_or_path": "builtin:tiny-llama", "max_steps": 2, "save_steps": 2, "learning_rate": 0.01,
             "per_device_train_batch_size": 2, "max_length": 64, "use_cpu": True, "disable_tqdm": True, "seed": 3,
             "logging_steps": 1}
FSPO = {"users_per_group": 3, "rows_per_user": 4, "heldout_fraction": 0.34, "hidden_size": 32, "num_layers": 1,
        "steps": 2, "batch_size": 4, "instruction": "Answer.", "save_steps": 2, "baseline": False}
KINDS = {
    "dpo": {"task": "dpo", "dataset_name": PAIRS},
    "lora": {"task": "dpo", "dataset_name": PAIRS, "use_peft": True, "lora_r": 2, "lora_alpha": 4,
             "lora_dropout": 0.0},
    "reward": {"task": "reward", "dataset_name": PAIRS},
    "distill": {"task": "sft", "dataset_name": SFT, "teacher_model_name_or_path": "builtin:tiny-qwen2"},
}


def _train(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """(the folder of the trained run's final model, the --data to evaluate it on)."""
    if kind == "fspo":
        from preflab.reward_models.fspo import run_fspo

        run_fspo(str(tmp_path / "run"), quiet=True, **FSPO)
        return tmp_path / "run" / "fspo", str(tmp_path / "run" / "data" / "heldout_episodes.jsonl")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**TWO_STEPS, **KINDS[kind], "output_dir": str(tmp_path / "run")}))
    assert main(["train", str(config)]) == 0
    return tmp_path / "run", KINDS[kind]["dataset_name"]


def _eval(target: Path, data: str, out: Path) -> dict:
    assert main(["eval", str(target), "--data", data, "--limit", "6", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _metrics(target: Path, data: str, out: Path) -> dict:
    return _eval(target, data, out)["metrics"]


@pytest.mark.parametrize("kind", ["dpo", "lora", "reward", "distill", "fspo"])
def test_the_last_checkpoint_evaluates_as_the_final_model(kind, tmp_path):
    if kind == "distill":
        pytest.importorskip("trl.experimental.gkd.gkd_trainer")
    final, data = _train(kind, tmp_path)
    checkpoint = final / "checkpoint-2"
    assert checkpoint.is_dir()
    want = _eval(final, data, tmp_path / "final.json")
    assert want["metrics"]  # (a routed eval with no metrics would make the equality below empty)
    assert _metrics(checkpoint, data, tmp_path / "checkpoint.json") == want["metrics"]
    if kind in ("dpo", "lora"):  # the run's model_name_or_path is its starting model: the reference metrics kept
        assert want["reference_source"] == "run config (model_name_or_path)"
        assert "reference_ranking_accuracy" in want["metrics"]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["model_config"]["model_type"] in ("llama", "qwen2")
    if kind == "fspo":  # the architecture the recipe built, not builtin:tiny-llama's 2 layers
        assert state["model_config"]["num_hidden_layers"] == 1
        # the reference is the 1-layer model the recipe saved before the stage (RUN/start.json: preflab.recipe_start),
        # for the final model and its checkpoint alike
        assert want["reference"] == str(final.parent / "start") and "reference_ranking_accuracy" in want["metrics"]
        # a run without start.json (an earlier preflab's): builtin:tiny-llama (2 layers) is not the 1-layer model
        # the stage started from, so no reference metrics from it
        (final.parent / "start.json").unlink()
        old = _eval(final, data, tmp_path / "old.json")
        assert old["reference"] is None and "reference_ranking_accuracy" not in old["metrics"]
        assert "reference" in old["missing"]
        assert any("num_hidden_layers: 2 != 1" in note and "not the model the run started from" in note
                   for note in old["notes"])


def _strip_model_config(checkpoint: Path) -> None:
    """The checkpoint as an older preflab wrote it: no "model_config" in trainer_state.json."""
    file = checkpoint / "trainer_state.json"
    state = json.loads(file.read_text())
    del state["model_config"]
    file.write_text(json.dumps(state))


def test_a_checkpoint_without_its_architecture_reads_the_runs_config_json_else_is_refused(tmp_path):
    """A recipe checkpoint without "model_config" (an older preflab's) is built from its run's final config.json (the
    same model, trained on): the final's metrics. Without that file too, its weights do not fit builtin:tiny-llama (2
    layers; the checkpoint has 1) and the load is refused naming the weights file and the model built, where before
    the second layer was left random."""
    from preflab.reward_models.fspo import run_fspo

    run_fspo(str(tmp_path / "run"), quiet=True, **FSPO)
    stage, data = tmp_path / "run" / "fspo", str(tmp_path / "run" / "data" / "heldout_episodes.jsonl")
    want = _metrics(stage, data, tmp_path / "final.json")
    _strip_model_config(stage / "checkpoint-2")
    assert _metrics(stage / "checkpoint-2", data, tmp_path / "old.json") == want
    shutil.copytree(stage, tmp_path / "unfinished")  # the final model's files gone: a run killed after its checkpoint
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "unfinished" / name).unlink()
    with pytest.raises(PreflabError, match=r"model.safetensors lacks 9 parameter\(s\) of the base model "
                                           r"builtin:tiny-llama .*model.layers.1"):
        load_for_eval(str(tmp_path / "unfinished" / "checkpoint-2"))


def test_a_checkpoint_of_another_shape_is_refused_not_broadcast(tmp_path):
    """A tensor of another shape under a parameter's name is refused with both shapes (torch's copy_ broadcasts a
    [1, 32] tensor into a [4, 32] parameter silently): by preflab eval's checkpoint loader and by the resume / best
    model loader (preflab.checkpoint.load_checkpoint_weights)."""
    tok = tiny_tokenizer("bytelevel")  # builtin:tiny-llama's
    model = tiny_causal_lm(tok, seed=3)
    with torch.no_grad():  # a [N, 1] row-broadcastable stand-in for the real [N, 32] embedding
        model.model.embed_tokens.weight = torch.nn.Parameter(model.model.embed_tokens.weight[:, :1].clone())
    path = save_checkpoint(tmp_path / "run", 2, model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                           {"config": {"model_name_or_path": "builtin:tiny-llama", "seed": 3}})
    shapes = rf"model.embed_tokens.weight of shape \({len(tok)}, 1\), but .* has it of shape \({len(tok)}, 32\)"
    with pytest.raises(PreflabError, match=shapes):
        load_for_eval(str(path))
    with pytest.raises(PreflabError, match=shapes):
        load_checkpoint_weights(path, tiny_causal_lm(tok, seed=3))


@pytest.mark.parametrize("kind, refused", [
    ("lora", r"holds LoRA adapters trained over a model whose config .*model_config.* differs from the base model "
             r"builtin:tiny-llama .*num_attention_heads: 4 != 2"),
    ("reward", r"was trained as a reward model whose config .*model_config.* differs from the one its run config's "
               r"base 'builtin:tiny-llama' builds: num_attention_heads: 4 != 2"),
])
def test_a_checkpoint_trained_in_another_architecture_than_its_base_is_refused(kind, refused, tmp_path):
    """Where the base weights are needed under the checkpoint's (LoRA adapters) or the base is rebuilt from the run
    config (a reward checkpoint), a recorded architecture other than the base's is refused naming both, not loaded
    into a model of another computation (the same shapes: 2 heads of 16 instead of 4 of 8)."""

    final, data = _train(kind, tmp_path)
    file = final / "checkpoint-2" / "trainer_state.json"
    state = json.loads(file.read_text())
    state["model_config"]["num_attention_heads"] = 2
    file.write_text(json.dumps(state))
    with pytest.raises(PreflabError, match=refused):  # (ConfigError, a PreflabError, for the reward loader)
        if kind == "reward":
            from preflab.reward_models.heads import load_reward_checkpoint

            load_reward_checkpoint(final / "checkpoint-2")
        else:
            load_for_eval(str(final / "checkpoint-2"))


def test_only_what_changes_the_eval_computation_counts_as_another_architecture():
    """Dropout rates (zeroed by disable_dropout during training, off in eval), special token ids (rewritten by the
    eos_token option) and versions are no architecture: a LoRA checkpoint of such a run is not refused; a width is."""
    from preflab.checkpoint import architecture_differences

    built = {"hidden_size": 32, "attention_dropout": 0.1, "eos_token_id": 2, "transformers_version": "5.0.0"}
    saved = {"hidden_size": 64, "attention_dropout": 0.0, "eos_token_id": 5, "transformers_version": "5.25.0"}
    assert architecture_differences(built, saved) == ["hidden_size: 32 != 64"]
    assert architecture_differences(built, {**saved, "hidden_size": 32}) == []


def test_a_final_model_whose_weights_lack_its_configs_layers_is_refused(tmp_path):
    """A model folder whose config.json says 2 layers over weights of 1 (an edited or mismatched config.json): before,
    from_pretrained left layer 1 at random values with a log line; now the load is refused naming the keys. The same
    folder with its own config.json loads."""
    from preflab.errors import ConfigError
    from preflab.models.load import load_causal_lm

    tok = tiny_tokenizer("char")
    tiny_causal_lm(tok, num_layers=1, seed=0).save_pretrained(tmp_path)
    assert load_causal_lm(str(tmp_path)).config.num_hidden_layers == 1
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(ConfigError, match=r"weight files do not match its config.json \(missing keys: 9, e.g. "
                                          r"model.layers.1"):
        load_causal_lm(str(tmp_path))


def test_a_model_whose_files_hold_extra_tensors_loads_them_left_out_with_a_note(tmp_path, capsys):
    """Tensors the model has no place for (a value head saved beside the language model, as TRL's value-head
    models write it) change no parameter the run uses: the model loads with every weight of its files, and a note
    names the extra tensors (they are not refused, as missing or reshaped weights are)."""
    from safetensors.torch import load_file, save_file

    from preflab.models.load import load_causal_lm

    tok = tiny_tokenizer("char")
    tiny_causal_lm(tok, num_layers=1, seed=0).save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    save_file({**weights, "v_head.summary.weight": torch.ones(1, 4)}, str(tmp_path / "model.safetensors"),
              metadata={"format": "pt"})
    loaded = load_causal_lm(str(tmp_path)).state_dict()
    assert set(weights) <= set(loaded) and all(torch.equal(loaded[k], v) for k, v in weights.items())
    out = capsys.readouterr().out
    assert "hold 1 tensor(s) the model has no place for (e.g. v_head.summary.weight)" in out


def _count_causal_lms(monkeypatch) -> list:
    """The class names of the causal LMs constructed from now on (an inner LlamaModel is no causal LM: not counted),
    however they are built: tiny_causal_lm, from_pretrained, from_config."""
    from transformers import PreTrainedModel

    built, init = [], PreTrainedModel.__init__

    def counted(self, *args, **kwargs):
        if type(self).__name__.endswith(("ForCausalLM", "LMHeadModel")):
            built.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "__init__", counted)
    return built


@pytest.mark.parametrize("base", ["builtin", "folder"])
@pytest.mark.parametrize("layers", [1, 2])
def test_a_full_checkpoint_builds_one_model_whether_or_not_its_architecture_is_the_bases(base, layers, tmp_path,
                                                                                         monkeypatch):
    """A checkpoint of a 1-layer model whose run config names a 2-layer base (builtin:tiny-llama, or a saved folder
    of it): the base's architecture is read from its config, not built (with its weights loaded) and discarded, so
    one causal LM is built, the recorded one, and every weight loaded is the checkpoint's. A 2-layer checkpoint (the
    base's architecture) builds the base once, as before, with the checkpoint's weights over it."""
    from preflab.checkpoint import model_architecture

    tok = tiny_tokenizer("bytelevel")  # builtin:tiny-llama's
    name = "builtin:tiny-llama"
    if base == "folder":
        name = str(tmp_path / "base")
        tiny_causal_lm(tok, seed=3).save_pretrained(name)
        tok.save_pretrained(name)
    trained = tiny_causal_lm(tok, num_layers=layers, seed=11)
    path = save_checkpoint(tmp_path / "run", 2, trained, torch.optim.SGD(trained.parameters(), lr=0.1), None,
                           {"config": {"model_name_or_path": name, "seed": 3},
                            "model_config": model_architecture(trained)})  # as the training loop records it
    built = _count_causal_lms(monkeypatch)
    model, _ = load_for_eval(str(path))
    assert built == ["LlamaForCausalLM"]
    assert model.config.num_hidden_layers == layers
    want = trained.state_dict()
    assert set(model.state_dict()) == set(want)
    for key, value in model.state_dict().items():
        assert torch.equal(value, want[key]), key


@pytest.mark.parametrize("name", ["builtin:tiny-llama", "builtin:tiny-qwen2", "builtin:tiny-gpt2"])
def test_a_bases_architecture_read_from_its_config_is_the_built_models(name, tmp_path):
    """causal_lm_architecture (read before building) equals model_architecture of the model load_causal_lm builds,
    key for key, for each builtin and for a saved folder of it, so the checkpoint loader's comparison before
    building finds no difference the built model would not have (a false one would build the recorded model where the
    base was right)."""
    from preflab.checkpoint import model_architecture
    from preflab.models.load import causal_lm_architecture, load_causal_lm, load_tokenizer

    tok = load_tokenizer(name)
    model = load_causal_lm(name, tokenizer=tok, seed=3)
    assert causal_lm_architecture(name, tok) == model_architecture(model)
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    read = causal_lm_architecture(str(tmp_path / "saved"))
    assert read == model_architecture(load_causal_lm(str(tmp_path / "saved")))
    assert read["num_hidden_layers" if name != "builtin:tiny-gpt2" else "n_layer"] == 2
