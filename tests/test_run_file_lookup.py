"""The files a run saves beside its weights (the tokenizer, the image-text processor) are found by the rule that
picks a model folder's config.yaml (preflab.models.run_config.run_file_folder): beside the weights, or for a checkpoint
folder (checkpoint-<step>, or holding trainer_state.json) in its run's folder one level up; any other folder does not
take its parent's. Before, tokenizer_near (preflab eval, the reward loaders), load_vlm_run's processor and
processor_source looked one folder up for any folder, so a model saved by hand inside another run's folder was
tokenized with that run's tokenizer without a word. And `preflab report` tells a checkpoint by the same rule."""
import re
import warnings

import pytest
import yaml

from preflab.errors import ConfigError, PreflabError
from preflab.eval.run_files import tokenizer_near
from preflab.models.tiny import tiny_tokenizer

RUN_TOKENIZER = "whitespace"  # the run's saved tokenizer; builtin:tiny-llama's is "bytelevel" (another vocabulary)


def _run_with_tokenizer(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "dpo", "model_name_or_path": "builtin:tiny-llama"}))
    tiny_tokenizer(RUN_TOKENIZER).save_pretrained(run)
    return run


def _vocab(kind):
    return tiny_tokenizer(kind).get_vocab()


def test_run_file_lookup_a_checkpoint_takes_its_runs_tokenizer(tmp_path):
    run = _run_with_tokenizer(tmp_path)
    assert _vocab(RUN_TOKENIZER) != _vocab("bytelevel")
    (run / "checkpoint-4").mkdir()
    (run / "step-9").mkdir()
    (run / "step-9" / "trainer_state.json").write_text("{}")
    for name in ("checkpoint-4", "step-9"):
        assert tokenizer_near(run / name, "builtin:tiny-llama", False).get_vocab() == _vocab(RUN_TOKENIZER), name


def _passed_over(folder, run):
    """What the lookup says of `folder` inside `run`, whose tokenizer it does not take."""
    return (f"{folder} has no tokenizer_config.json; its parent {run} has tokenizer_config.json, but {folder.name} is "
            "no checkpoint of it (not named checkpoint-<step>, no trainer_state.json), so the parent's "
            "tokenizer_config.json is not read for it (a model saved inside another run's folder is no output of "
            "that run)")


def test_run_file_lookup_a_model_inside_a_run_takes_its_base_tokenizer_and_says_so(tmp_path):
    # before: the run's tokenizer one folder up, silently (and with no fallback name, no error either)
    run = _run_with_tokenizer(tmp_path)
    policy = run / "policy"
    policy.mkdir()
    with pytest.warns(UserWarning) as caught:
        tok = tokenizer_near(policy, "builtin:tiny-llama", False)
    assert tok.get_vocab() == _vocab("bytelevel")
    assert [str(w.message) for w in caught] == [
        f"preflab: {_passed_over(policy, run)}; using the tokenizer of its base model builtin:tiny-llama (its "
        "config.yaml's model_name_or_path). If the model was trained with another tokenizer, save that one in "
        f"{policy} (tokenizer.save_pretrained)."]
    with pytest.raises(PreflabError) as err:
        tokenizer_near(policy, None, False)
    assert str(err.value) == (f"{_passed_over(policy, run)}; save the tokenizer the model was trained with beside its "
                              f"weights (tokenizer.save_pretrained({policy})).")


def test_run_file_lookup_says_where_it_looked_for_a_missing_tokenizer(tmp_path):
    step = tmp_path / "run" / "checkpoint-2"
    step.mkdir(parents=True)
    with pytest.raises(PreflabError) as err:
        tokenizer_near(step, None, False)
    assert str(err.value) == (f"no tokenizer (tokenizer_config.json) found in {step} or its run's folder "
                              f"{step.parent}; save the tokenizer the model was trained with beside its weights "
                              f"(tokenizer.save_pretrained({step})).")
    with pytest.raises(PreflabError, match="^no tokenizer \\(tokenizer_config.json\\) found in \\S*run; save"):
        tokenizer_near(tmp_path / "run", None, False)  # no checkpoint: its parent is not named


def test_run_file_lookup_preflab_eval_refuses_a_model_saved_inside_a_run_without_a_tokenizer(tmp_path):
    # preflab eval on a full model saved by hand into a run's folder scored it with the run's tokenizer
    from preflab.eval.loading import load_for_eval
    from preflab.models.tiny import tiny_causal_lm

    run = _run_with_tokenizer(tmp_path)
    tiny_causal_lm(tiny_tokenizer("bytelevel")).save_pretrained(run / "policy")
    with pytest.raises(PreflabError, match="^" + re.escape(_passed_over(run / "policy", run) + "; save the")):
        load_for_eval(str(run / "policy"))
    tiny_tokenizer("bytelevel").save_pretrained(run / "policy")  # what the message says to do
    _, tok = load_for_eval(str(run / "policy"))
    assert tok.get_vocab() == _vocab("bytelevel")


# --- the image-text processor ---

VLM = {"task": "vlm", "model_name_or_path": "org/base-vlm"}


def test_run_file_lookup_processor_source_takes_a_checkpoints_run_processor_only(tmp_path):
    from preflab.models.vlm_parts import processor_source

    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(VLM))
    (run / "preprocessor_config.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert processor_source(str(run / "checkpoint-2")) == str(run)
    inner = run / "inner"  # a run of its own, saved inside the first one's folder, without a processor
    inner.mkdir()
    (inner / "config.yaml").write_text(yaml.safe_dump({**VLM, "model_name_or_path": "org/other-vlm"}))
    with pytest.warns(UserWarning) as caught:
        assert processor_source(str(inner)) == "org/other-vlm"
    assert [str(w.message) for w in caught] == [
        f"preflab: {inner} has no processor_config.json or preprocessor_config.json; its parent {run} has "
        "preprocessor_config.json, but inner is no checkpoint of it (not named checkpoint-<step>, no "
        "trainer_state.json), so the parent's preprocessor_config.json is not read for it (a model saved inside "
        "another run's folder is no output of that run); loading the processor from org/other-vlm, which its run's "
        "config.yaml leads to (processor_name_or_path, else model_name_or_path)."]


def test_run_file_lookup_load_vlm_run_refuses_the_processor_of_the_folder_above(tmp_path):
    # a CAT model (weights with its clue aggregator, no config.yaml) saved inside a folder holding a processor was
    # loaded with that processor
    from preflab.models.clue_aggregator import attach_clue_aggregator, clue_aggregator_of
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor
    from preflab.models.vlm_run import is_vlm_run, load_vlm_run

    processor = tiny_vlm_processor("llava")
    model = tiny_vlm(processor, "llava", seed=0)
    attach_clue_aggregator(model, processor)
    outer, copy = tmp_path / "outer", tmp_path / "outer" / "copy"
    processor.save_pretrained(outer)
    model.save_pretrained(copy)
    assert is_vlm_run(copy)
    with pytest.raises(ConfigError) as err:
        load_vlm_run(copy)
    assert str(err.value) == (
        f"{copy} has no processor_config.json or preprocessor_config.json; its parent {outer} has "
        "processor_config.json, but copy is no checkpoint of it (not named checkpoint-<step>, no trainer_state.json), "
        "so the parent's processor_config.json is not read for it (a model saved inside another run's folder is no "
        f"output of that run): the processor this model was trained with is unknown. Save it in {copy} "
        "(processor.save_pretrained), or give it: load_vlm_run(path, processor=...).")
    processor.save_pretrained(copy)  # what the message says to do
    loaded, own = load_vlm_run(copy)
    assert type(own).__name__ == "LlavaProcessor" and clue_aggregator_of(loaded) is not None


# --- preflab report ---

def test_run_file_lookup_report_tells_a_checkpoint_by_the_rule(tmp_path):
    # collect_runs called any folder named checkpoint-* (checkpoint-best too) a checkpoint of the run above it, and
    # missed a checkpoint holding trainer_state.json under another name
    from preflab.report.runs import collect_runs

    run = _run_with_tokenizer(tmp_path)
    (run / "checkpoint-best").mkdir()
    (run / "saved-step-5").mkdir()
    (run / "saved-step-5" / "trainer_state.json").write_text("{}")
    with pytest.raises(PreflabError, match=r"^\S*checkpoint-best holds no preflab run: no metrics\.jsonl"):
        collect_runs([run / "checkpoint-best"])
    with pytest.raises(PreflabError) as err:
        collect_runs([run / "saved-step-5"])
    assert str(err.value) == (f"{run / 'saved-step-5'} is a checkpoint of the run {run}; the report reads the run "
                              f"directory: `preflab report {run}` (its curves cover every logged step).")


def test_run_file_lookup_processor_source_finds_a_processor_config_json(tmp_path):
    # transformers 5 saves a llava processor as processor_config.json (no preprocessor_config.json): the lookup
    # looked for preprocessor_config.json only, so a run's saved llava processor was never found
    from preflab.models.tiny_vlm import tiny_vlm_processor
    from preflab.models.vlm_parts import processor_source

    run = tmp_path / "run"
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(VLM))
    tiny_vlm_processor("llava").save_pretrained(run)
    assert (run / "processor_config.json").is_file() and not (run / "preprocessor_config.json").exists()
    assert processor_source(str(run)) == processor_source(str(run / "checkpoint-2")) == str(run)
