"""`preflab demo vlm`'s SFT stage (sft/: task vlm, loss_type sft, pairs whose rejected answer is a placeholder) is
pointed to no pair eval, as a task: sft run is: the report told the user to run `preflab eval sft --task vlm` "for the
held-out preference metrics", which judge a preference run (the demo's dpo/, started from it), not an SFT stage."""
import json

import yaml

from preflab.demo.vlm import DPO, SFT
from preflab.report.html import render_report
from preflab.report.runs import eval_command, load_run, sft_only


def _stage(root, name, stage: dict):
    run = root / name
    run.mkdir()
    # the stage's config as the demo builds it (preflab.demo.vlm.run_vlm_demo: task vlm + the stage's options)
    (run / "config.yaml").write_text(yaml.safe_dump({"task": "vlm", "model_name_or_path": "builtin:tiny-qwen2-vl",
                                                     **stage}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
    return run


def test_the_vlm_demos_sft_stage_gets_no_pair_eval_and_its_dpo_stage_keeps_its_own(tmp_path):
    sft, dpo = _stage(tmp_path, "sft", SFT), _stage(tmp_path, "dpo", DPO)
    assert SFT["loss_type"] == "sft" and DPO["loss_type"] == ["sigmoid", "sft"]
    assert eval_command(yaml.safe_load((sft / "config.yaml").read_text())) is None
    assert eval_command(yaml.safe_load((dpo / "config.yaml").read_text())) == \
        "preflab eval RUN_DIR --task vlm --data HELDOUT"
    sft_run, dpo_run = load_run(sft), load_run(dpo)
    assert [m for m in sft_run.missing if m.startswith("no eval.json")] == []
    assert [m for m in dpo_run.missing if m.startswith("no eval.json")] == [
        f"no eval.json: run `preflab eval {dpo} --task vlm --data HELDOUT` (or a checkpoint-N of it) for the held-out "
        "preference metrics of the image-text model"]
    # the demo folder's report (both stages): the one command, said to be for dpo only
    page = render_report([sft_run, dpo_run])
    assert ("no eval.json in any run: run `preflab eval RUN_DIR --task vlm --data HELDOUT` for dpo and re-run "
            "`preflab report`.") in page
    assert "--task vlm" not in render_report([sft_run])


def test_sft_only_is_a_loss_type_of_sft_alone():
    assert sft_only({"loss_type": "sft"}) and sft_only({"loss_type": ["sft"]})
    assert sft_only({"loss_type": ["sft", "sft"]})
    assert not sft_only({"loss_type": ["sigmoid", "sft"]}) and not sft_only({"loss_type": "sigmoid"})
    assert not sft_only({}) and not sft_only({"loss_type": []})
    # an image-text online run is no vlm SFT stage, and no `preflab eval` evaluates it (user trial 22: the command
    # given here, --task vlm, was refused)
    assert eval_command({"task": "online", "online_task": "vision_dataset", "loss_type": "sft"}) is None
