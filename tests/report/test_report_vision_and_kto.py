"""`preflab report` on real runs of the kinds docs/guarantees.md's report column had none for: a VLM pair run
(task: vlm), the vision online run (online_task: vision_dataset) and KTO (loss_type: kto). The run list says what
the run is (task and objective or trainer), and the series the run's panels draw were logged, one point a step."""
import re
import sys
from pathlib import Path

from preflab.report.html import _purpose, write_report
from preflab.report.plots import objective_label
from preflab.report.runs import load_run

TESTS = Path(__file__).parents[1]


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_report_of_a_vlm_pair_run_names_its_task_and_objective_and_draws_the_pair_panels(tmp_path):
    sys.path.insert(0, str(TESTS / "vlm"))
    from test_vlm_trainer import _cfg, _rows
    from vlm_helpers import tiny

    from preflab.data.vision import read_vision_pairs, tokenize_vision_pairs
    from preflab.loops.vlm import VisionTrainer
    from preflab.models.load import frozen_copy

    policy, processor = tiny("llava")
    pairs, _, _ = tokenize_vision_pairs(read_vision_pairs(_rows())[0], processor)
    out = tmp_path / "vlm"
    VisionTrainer(_cfg(tmp_path, model_name_or_path="builtin:tiny-llava", output_dir=str(out)), policy=policy,
                  ref=frozen_copy(policy), processor=processor, train_data=pairs).train()
    run = load_run(out)
    assert "task vlm, loss_type sigmoid," in _purpose(run) and objective_label(run) == "vlm (sigmoid)"
    assert all(len(run.series(k)[1]) == 2 for k in ("loss", "rewards/margins", "rewards/accuracies"))
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "Reward margin" in html and "task vlm, loss_type sigmoid," in _text(html)


def test_report_of_a_vision_online_run_names_its_trainer_and_draws_the_online_reward(tmp_path):
    sys.path.insert(0, str(TESTS / "vlm"))
    from test_vision_r1_online import _cfg, _run

    out = tmp_path / "vision"
    _run(_cfg(out, trainer="rloo", max_steps=2)).train()
    run = load_run(out)
    assert "task online, trainer rloo," in _purpose(run) and objective_label(run) == "online (rloo)"
    assert len(run.series("reward")[1]) == 2 and len(run.series("loss")[1]) == 2
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "Online reward" in html and "task online, trainer rloo," in _text(html)


def test_report_of_a_kto_run_names_its_objective_and_draws_its_loss(tmp_path):
    sys.path.insert(0, str(TESTS / "loops"))
    from test_kto_precompute import unpaired

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.load import frozen_copy
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    out = tmp_path / "kto"
    cfg = config_from_dict(dict(model_name_or_path="builtin:tiny-llama", dataset_name="synthetic", loss_type="kto",
                                output_dir=str(out), learning_rate=1e-3, per_device_train_batch_size=4, max_steps=2,
                                logging_steps=1, disable_tqdm=True, use_cpu=True))
    tok = tiny_tokenizer()
    policy = tiny_causal_lm(tok, seed=0)
    Trainer(cfg, policy=policy, ref=frozen_copy(policy), tokenizer=tok, train_data=unpaired(8)).train()
    run = load_run(out)
    assert "task dpo, loss_type kto," in _purpose(run) and objective_label(run) == "dpo (kto)"
    assert len(run.series("loss")[1]) == 2 and len(run.series("kl")[1]) == 2       # z_ref, KTO's reference point
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "KL to the reference" in html and "task dpo, loss_type kto," in _text(html)
