"""Findings of the multimodal user trial (VLM and diffusion runs as a TRL / Diffusion-DPO user drives them)."""
import pytest

from preflab.errors import ConfigError


@pytest.mark.parametrize("loss, over, reader", [
    ("diffusion_dpo", {"score_range": [-1.0, 1.0]}, "loss_type: smpo_diffusion"),
    ("dcpo", {"user_embedding_dim": 8}, "loss_type: ppd"),
    ("diffusion_dpo", {"user_embeddings": "users.safetensors"}, "loss_type: ppd"),
    ("smpo_diffusion", {"self_npo_rollout_steps": 3}, "loss_type: self_npo"),
    ("ppd", {"self_npo_ema_decay": 0.9}, "loss_type: self_npo"),
])
def test_a_diffusion_option_of_another_diffusion_objective_is_refused(loss, over, reader):
    """score_range (SmPO), the user-branch options (PPD) and the self_npo_* options were accepted under every diffusion
    objective and dropped without a word (e.g. score_range with diffusion_dpo trained plain Diffusion-DPO)."""
    from preflab.config import config_from_dict

    base = {"task": "diffusion", "model_name_or_path": "builtin:tiny-sd", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match=f"only applies to task: diffusion with {reader}"):
        config_from_dict({**base, "loss_type": loss, **over})
    owner = reader.split(": ")[1]
    config_from_dict({**base, "loss_type": owner, **over})  # the objective that reads it takes it


@pytest.mark.parametrize("ref", ["builtin:tiny-llava", "builtin:tiny-llama", "saved-llava"])
def test_a_vlm_reference_of_another_architecture_is_refused_naming_it(tmp_path, ref):
    """ref_model_name_or_path of another architecture than the policy's crashed: a built-in LLaVA next to a Qwen2-VL
    policy inside its constructor, a saved LLaVA mid-run ('not enough values to unpack' on Qwen2-VL's pixels), a text
    model's name with the hub's HFValidationError."""
    from preflab.config import config_from_dict
    from preflab.models.vlm import load_vlm
    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor

    if ref == "saved-llava":
        processor = tiny_vlm_processor("llava")
        tiny_vlm(processor, "llava").save_pretrained(tmp_path / "llava")
        processor.save_pretrained(tmp_path / "llava")
        ref = str(tmp_path / "llava")
    base = {"task": "vlm", "model_name_or_path": "builtin:tiny-qwen2-vl", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match=r"ref_model_name_or_path=.*policy's architecture \(qwen2_vl\)"):
        load_vlm(config_from_dict({**base, "ref_model_name_or_path": ref}))
    policy, same, _ = load_vlm(config_from_dict({**base, "ref_model_name_or_path": "builtin:tiny-qwen2-vl"}))
    assert same.config.model_type == policy.config.model_type == "qwen2_vl"


def test_diffusion_lora_targets_that_match_no_module_are_a_config_error(tmp_path):
    """use_peft with lora_target_modules naming no module of the UNet ended in peft's NoMatchingPeftModuleError
    traceback; now the ConfigError lists the UNet's linear modules by the names LoRA takes (to_out.0, not 0)."""
    pytest.importorskip("diffusers")
    from preflab.config import load_config
    from preflab.loops.diffusion import DiffusionRun

    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", [
        "use_peft=true", "lora_target_modules=[to_qq]", "eval_dataset_name=null", f"output_dir={tmp_path}",
        "sample_steps=0", "max_steps=1"])
    with pytest.raises(ConfigError, match=r"lora_target_modules \['to_qq'\] match no module.*'to_out\.0'.*'to_q'"):
        DiffusionRun(cfg)


def test_preflab_eval_of_a_dcpo_run_scores_held_out_pairs_without_captions_as_diffusion_dpo(tmp_path, capsys):
    """`preflab eval --task diffusion` on a dcpo run (examples/diffusion/dcpo.yaml: caption_perturbation medium) and
    held-out pairs without caption_chosen / caption_rejected failed with the training refusal 'none of the 8 training
    pairs has two different captions'. Now the pairs are scored with the prompt for both images, said in a note: the
    same numbers as the same weights evaluated as diffusion_dpo (DCPO with c_w = c_l is Diffusion-DPO). --data that is
    the run's training file now gets the 'not held-out' note, as a text eval does."""
    pytest.importorskip("diffusers")
    import shutil

    import yaml

    from preflab.config import load_config
    from preflab.loops.diffusion import DiffusionRun
    from preflab.loops.diffusion_eval import evaluate_diffusion_run

    run_dir = tmp_path / "dcpo"
    DiffusionRun(load_config("examples/diffusion/dcpo.yaml", [
        "eval_dataset_name=null", f"output_dir={run_dir}", "sample_steps=0", "max_steps=1",
        "learning_rate=1e-2"])).train()
    held_out = "examples/diffusion/data/test.jsonl"
    got = evaluate_diffusion_run(str(run_dir), held_out)
    assert "8 of 8 held-out pairs have no caption_chosen" in capsys.readouterr().out
    as_dpo = tmp_path / "as_dpo"
    shutil.copytree(run_dir, as_dpo)
    config = yaml.safe_load((as_dpo / "config.yaml").read_text())
    config.update(loss_type="diffusion_dpo", caption_perturbation="none")
    (as_dpo / "config.yaml").write_text(yaml.safe_dump(config))
    want = evaluate_diffusion_run(str(as_dpo), held_out)
    assert got["num_pairs"] == want["num_pairs"] == 8
    # the note is eval.json's too (trial-media-2: only printed, the report showed eval.json's loss beside the run's
    # eval_loss on perturbed captions without saying why they differ)
    # test.jsonl's captions are all training captions (no pair is): the overlap note, the same for both
    captions = [n for n in want["notes"] if "have a caption the run trained on" in n]
    assert got["metrics"] == want["metrics"] and want["notes"] == captions and len(captions) == 1
    assert got["notes"] == ["dcpo: 8 of 8 held-out pairs have no caption_chosen / caption_rejected: they are scored "
                            "with the prompt for both images (eval applies no caption_perturbation)"] + captions
    trained = evaluate_diffusion_run(str(run_dir), "examples/diffusion/data/train.jsonl")
    assert len(trained["notes"]) == 2 and "is the run's training data" in trained["notes"][1]


def test_inversion_options_under_forward_noising_are_refused():
    """diffusion_noising: {num_inversion_steps: 20} (or inversion_eta, renoise_iters, grid_snap, steps_offset) on
    diffusion_dpo / dcpo, or on smpo_diffusion with mode: forward, was accepted and dropped: forward noising reads
    none of them. The objectives' own declared inversion settings under a user's mode: forward stay accepted."""
    from preflab.diffusion.schedule import NoiseSchedule
    from preflab.objectives import get_objective
    from preflab.scoring.diffusion import noiser_for

    schedule = NoiseSchedule.scaled_linear()
    for name, over in (("diffusion_dpo", {"num_inversion_steps": 20}), ("dcpo", {"inversion_eta": 0.1}),
                       ("smpo_diffusion", {"mode": "forward", "renoise_iters": 2})):
        with pytest.raises(ConfigError, match=r"configure DDIM inversion \(mode: ddim_invert\)"):
            noiser_for(get_objective(name), schedule, **over)
    assert noiser_for(get_objective("smpo_diffusion"), schedule, mode="forward").mode == "forward"
    inverted = noiser_for(get_objective("diffusion_dpo"), schedule, mode="ddim_invert", num_inversion_steps=4)
    assert (inverted.mode, inverted.num_inversion_steps) == ("ddim_invert", 4)
    assert noiser_for(get_objective("diffusion_inpo"), schedule, num_inversion_steps=3).num_inversion_steps == 3


def test_vlm_max_completion_length_cuts_responses_and_counts_them(tmp_path):
    """max_completion_length (preflab's text DPO option: responses keep their first N tokens) was accepted by task: vlm
    and never read: the responses trained whole. Now they are cut as in text runs and counted in the data report."""
    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer

    def trainer(*over):
        return VisionTrainer(load_config("examples/vlm/dpo.yaml", [f"output_dir={tmp_path}", *over]))

    whole, cut = trainer(), trainer("max_completion_length=12")
    assert [len(p.chosen_ids) for p in whole.train_data] != [12] * 8
    for a, b in zip(whole.train_data, cut.train_data):
        assert a.prompt_ids == b.prompt_ids and a.chosen_ids[:12] == b.chosen_ids and a.rejected_ids[:12] == \
            b.rejected_ids
    want = sum((len(p.chosen_ids) > 12) + (len(p.rejected_ids) > 12) for p in whole.train_data)
    assert cut.data_report["train_tokenize"]["truncated_responses"] == want == 16


def test_beta_on_self_npo_is_refused_and_a_saved_self_npo_config_still_loads():
    """Self-NPO has no beta (its loss is a distance to the EMA teacher's prediction): beta: 100 was accepted and
    dropped. A run's saved config.yaml (beta at TrainConfig's 0.1) still loads for resume / eval."""
    from preflab.config import config_from_dict

    base = {"task": "diffusion", "model_name_or_path": "builtin:tiny-sd", "dataset_name": "x.jsonl"}
    with pytest.raises(ConfigError, match="beta only applies to the diffusion objectives with a beta"):
        config_from_dict({**base, "loss_type": "self_npo", "beta": 100.0})
    saved = config_from_dict({**base, "loss_type": "self_npo"}).to_dict()  # a run's config.yaml: beta: 0.1 in it
    assert saved["beta"] == 0.1 and config_from_dict(saved).loss_type == "self_npo"
    with pytest.raises(ConfigError, match="beta only applies to the diffusion objectives with a beta"):
        config_from_dict({**base, "loss_type": "self_npo", "beta": 0.1})  # written by the user (at its default)
    assert config_from_dict({**base, "loss_type": "ppd", "beta": 100.0}).objective().beta == 100.0


def test_diffusion_image_paths_relative_to_the_working_directory_load_as_vlm_rows_do(tmp_path, monkeypatch):
    """A data file in data/ whose rows name images as data/imgs/x.png (relative to where the run starts) loaded for
    task: vlm (beside the data file, else the working directory) but was a missing_image row for task: diffusion.
    A file beside the data file still wins."""
    pytest.importorskip("diffusers")
    import json

    import numpy as np
    from PIL import Image

    from preflab.diffusion.data import load_image_pairs

    (tmp_path / "data" / "imgs").mkdir(parents=True)
    for name, colour in (("red", (255, 0, 0)), ("green", (0, 255, 0))):
        Image.fromarray(np.full((8, 8, 3), colour, np.uint8)).save(tmp_path / "data" / "imgs" / f"{name}.png")
    row = {"prompt": "a shape", "chosen_image": "data/imgs/red.png", "rejected_image": "data/imgs/green.png"}
    (tmp_path / "data" / "pairs.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)
    [x], _ = load_image_pairs("data/pairs.jsonl", resolution=8)
    assert x.chosen[:, 0, 0].tolist() == [255, 0, 0] and x.rejected[:, 0, 0].tolist() == [0, 255, 0]
    (tmp_path / "data" / "data" / "imgs").mkdir(parents=True)  # the same name beside the data file wins
    Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(tmp_path / "data" / "data" / "imgs" / "red.png")
    [x], _ = load_image_pairs("data/pairs.jsonl", resolution=8)
    assert x.chosen[:, 0, 0].tolist() == [9, 9, 9]


def test_the_diffusion_data_line_counts_dropped_ties_outside_the_kept_rows(tmp_path):
    """Pick-a-Pic rows with a tie (label_0 = 0.5): the data line said '17 of 17 rows kept (0 skipped, 1 ties dropped);
    16 train' -- the tie counted as kept. Now '16 of 17 rows kept (0 skipped, 1 tie dropped)'."""
    pytest.importorskip("diffusers")
    import io
    import json

    import numpy as np
    from PIL import Image

    from preflab.diffusion.data import load_image_pairs
    from preflab.loops.diffusion import _rows_text

    def png(v):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(buf, format="PNG")
        return list(buf.getvalue())

    rows = [{"caption": f"c{i}", "jpg_0": f"{i}a.png", "jpg_1": f"{i}b.png", "label_0": label}
            for i, label in enumerate((1, 0, 0.5))]
    for i in range(3):
        for side, v in (("a", 10 * i), ("b", 10 * i + 5)):
            (tmp_path / f"{i}{side}.png").write_bytes(bytes(png(v)))
    (tmp_path / "pick.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, report = load_image_pairs(str(tmp_path / "pick.jsonl"), resolution=8)
    assert len(pairs) == 2 and pairs[1].chosen[0, 0, 0] == 15  # label_0 = 0: the second image is the chosen one
    assert _rows_text(report) == "2 of 3 rows kept (0 skipped, 1 tie dropped)"


def test_preflab_eval_of_a_plain_lora_vlm_run_its_checkpoint_and_an_older_runs_config(tmp_path):
    """`preflab eval --task vlm` on a LoRA run without a clue aggregator (examples/vlm/dpo.yaml use_peft=true) failed
    with torch's 'optimizer got an empty parameter list': the reloaded model has every weight frozen. The final
    (merged) directory and the last checkpoint (base + adapters) now evaluate to the same numbers."""
    from preflab.config import load_config
    from preflab.loops.vlm import VisionTrainer
    from preflab.loops.vlm_eval import evaluate_vlm_run

    run = tmp_path / "lora"
    VisionTrainer(load_config("examples/vlm/dpo.yaml", [f"output_dir={run}", "use_peft=true", "lora_r=4",
                                                        "lora_alpha=8", "max_steps=2", "save_steps=2"])).train()
    final = evaluate_vlm_run(str(run), "examples/vlm/data/pairs.jsonl")
    checkpoint = evaluate_vlm_run(str(run / "checkpoint-2"), "examples/vlm/data/pairs.jsonl")
    assert final["num_pairs"] == checkpoint["num_pairs"] == 8
    for key in ("loss", "rewards/margins", "logps/chosen"):
        assert abs(final["metrics"][key] - checkpoint["metrics"][key]) < 1e-4, key
    assert final["metrics"]["rewards/margins"] != 0.0  # the adapters moved the policy away from the reference
    # a run written before truncation_mode followed TRL 1.16 saved the old default keep_end beside max_length, which
    # task: vlm now refuses: its eval was refused; it means what unset means now (VLM prompts were never cut)
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "truncation_mode": "keep_end"}))
    assert evaluate_vlm_run(str(run), "examples/vlm/data/pairs.jsonl")["metrics"] == final["metrics"]


def test_flux_guidance_on_a_pipeline_that_is_not_flux_is_refused(tmp_path):
    """flux_guidance (Flux-dev's guidance embedding) on an SD pipeline was accepted and dropped."""
    pytest.importorskip("diffusers")
    from preflab.config import load_config
    from preflab.loops.diffusion import DiffusionRun

    cfg = load_config("examples/diffusion/diffusion_dpo.yaml", [
        "flux_guidance=2.0", "eval_dataset_name=null", f"output_dir={tmp_path}", "sample_steps=0", "max_steps=1"])
    with pytest.raises(ConfigError, match="builtin:tiny-sd is not a Flux pipeline"):
        DiffusionRun(cfg)
