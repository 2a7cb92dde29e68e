"""Vision-R1 GRPO as an online run (online_task: vision_dataset, preflab.online.vision.VisionOnlineRun)."""
import json
from pathlib import Path

import pytest
import torch

from preflab.config import config_from_dict
from preflab.objectives.base import ListBatch, SequenceLogps
from preflab.online.examples import token_matrix
from preflab.online.vision import VisionOnlineRun, load_vision_task
from preflab.scoring.vlm import naive_vision_token_logps
from preflab.verifiers import vision_r1_format
from resume_mid_run import resume_mid_run  # tests/, on sys.path beside conftest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "vlm" / "data" / "grounding.jsonl"
REWARDS = ["verifier:vision_r1_format", "verifier:vision_r1_precision", "verifier:vision_r1_recall"]


def _cfg(out, **over):
    raw = {"task": "online", "online_task": "vision_dataset", "trainer": "grpo", "beta": 0.04,
           "model_name_or_path": "builtin:tiny-qwen2-vl", "dataset_name": str(DATA), "reward_funcs": REWARDS,
           "num_generations": 3, "prompts_per_generation": 2, "steps_per_generation": 1,
           "per_device_train_batch_size": 2, "max_completion_length": 6, "learning_rate": 1e-3,
           "lr_scheduler_type": "constant", "max_steps": 1, "logging_steps": 1, "seed": 0, "use_cpu": True,
           "disable_tqdm": True, "output_dir": str(out), **over}
    return config_from_dict(raw)


def length_reward(prompts, completions, **kwargs):
    return [len(c[0]["content"]) / 10 for c in completions]


def _run(cfg, seen=None):
    """A run judged by Vision-R1's three rewards plus a length reward (a random tiny VLM scores 0 on the box
    rewards, so the length term gives the groups non-zero advantages); `seen` records the columns it was given."""
    from preflab.models.vlm import load_vlm_processor

    processor = load_vlm_processor(cfg)
    task = load_vision_task(cfg, processor)

    def length_and_columns(prompts, completions, solution, num_instances, **kwargs):
        if seen is not None:
            seen.extend(zip([p[0]["content"][-1]["text"] for p in prompts], solution, num_instances))
        return length_reward(prompts, completions)

    task.judges.append(length_and_columns)
    return VisionOnlineRun(cfg, processor=processor, task=task)


def test_step_loss_is_the_grpo_objective_on_the_vlm_full_forward(tmp_path):
    seen = []
    run = _run(_cfg(tmp_path), seen)
    assert run.cfg.loss_type == "grpo" and run.cfg.objective_params["loss_type"] == "grpo" and run.cfg.beta == 0.04
    [mb] = run.micro_batches(0)
    exs = mb.examples
    assert len(exs) == 2 and all(len(e.completions) == 3 for e in exs)
    # the dataset columns reached the reward functions, one entry per completion, from that completion's row
    rows = {json.loads(line)["prompt"]: json.loads(line) for line in DATA.read_text().splitlines()}
    assert len(seen) == 6 and all(rows[p]["solution"] == s and rows[p]["num_instances"] == n for p, s, n in seen)
    # the logged Vision-R1 format reward is the function's value on the round's completions
    texts = [run.tokenizer.decode(c, skip_special_tokens=True) for e in exs for c in e.completions]
    cols = [run.by_id[e.row_id].columns for e in exs for _ in e.completions]
    fmt = vision_r1_format(None, [[{"role": "assistant", "content": t}] for t in texts],
                           solution=[c["solution"] for c in cols], num_instances=[c["num_instances"] for c in cols])
    assert run.pending.metrics["rewards/vision_r1_format/mean"] == pytest.approx(sum(fmt) / len(fmt))
    adv = torch.tensor([e.extras["advantages"] for e in exs])
    assert float(adv.abs().max()) > 0.1    # the groups' rewards differ, so the loss depends on the log-probs
    with torch.no_grad():  # move the policy away from the reference, so the KL term is not zero
        for p in run.policy.model.language_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    run.policy.eval()
    out = run.forward(mb)
    # the same objective on log_softmax of the VLM's full .logits, each completion with its own prompt's image
    layout = run._group_layout(exs)
    with torch.no_grad():
        lp = naive_vision_token_logps(run.policy, layout)
    shape = (2, 3, lp.shape[-1])
    mask = layout.response_mask.view(shape)
    policy = SequenceLogps(lp.view(shape), mask)
    ref = SequenceLogps(token_matrix([v for e in exs for v in e.ref], layout.response_mask).view(shape), mask)
    extras = {"advantages": adv.float(), "tokens_per_prompt": torch.tensor(mb.tokens_per_prompt)}
    rewards = torch.tensor([e.extras["rewards"] for e in exs], dtype=torch.float32)
    valid = torch.tensor([e.extras["valid"] for e in exs])
    expected = run.objective(ListBatch(policy, rewards, ref, valid, extras))
    assert float(out.metrics["kl"]) > 1e-4
    assert torch.allclose(out.loss.detach(), expected.loss, atol=1e-5)
    # a wrong image changes the scores: the rows' images really are in the forward
    swapped = run._layout([(exs[0].prompt_ids, exs[0].completions[0])], [exs[1].row_id])
    own = run._layout([(exs[0].prompt_ids, exs[0].completions[0])], [exs[0].row_id])
    with torch.no_grad():
        diff = naive_vision_token_logps(run.policy, swapped) - naive_vision_token_logps(run.policy, own)
    assert float(diff.abs().max()) > 1e-4


def test_image_placeholders_are_never_sampled(tmp_path):
    run = _run(_cfg(tmp_path))
    config = run.policy.config
    placeholders = {config.image_token_id, config.video_token_id}
    assert {b[0] for b in run.generator.banned} == placeholders

    def favour_placeholders(module, args, logits):  # the placeholders become by far the likeliest next tokens
        logits = logits.clone()
        logits[..., sorted(placeholders)] += 100.0
        return logits

    run.policy.lm_head.register_forward_hook(favour_placeholders)
    rows = run.rows[:2]
    ids = run._generate(rows, 3, seed=0)
    assert len(ids) == 6 and all(c and not placeholders & set(c) for c in ids)
    with torch.no_grad():  # and the completions score (an image token without image features would raise)
        scores = run.scorer(run._layout([(rows[i // 3].prompt_ids, c) for i, c in enumerate(ids)],
                                        [rows[i // 3].row_id for i in range(6)]))
    assert scores.mask.sum() == sum(len(c) for c in ids)
    run.generator.banned = []  # without the ban the hooked model does sample them (the check above is not vacuous)
    assert any(placeholders & set(c) for c in run._generate(rows, 3, seed=0))


def test_yaml_runs_through_the_cli(tmp_path, monkeypatch):
    from preflab.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "vision-r1"
    assert main(["train", "examples/vlm/vision_r1.yaml", f"output_dir={out}", "max_steps=2",
                 "disable_tqdm=true"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 2 and summary["online_task"] == "vision_dataset"
    assert summary["online"]["completions"] == 2 * 2 * 4          # 2 rounds x 2 images x G = 4
    rounds = [json.loads(line) for line in (out / "rounds" / "1.jsonl").read_text().splitlines()]
    assert len(rounds) == 2 and all(len(r["completions"]) == 4 for r in rounds)
    assert (out / "preprocessor_config.json").exists() and (out / "model.safetensors").exists()


def test_config_refuses_pair_recipes(tmp_path):
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="vision_dataset trains group recipes"):
        _cfg(tmp_path, trainer="online_dpo")


def test_a_prompt_over_max_prompt_length_is_refused_with_its_row(tmp_path):
    from preflab.errors import DataError

    with pytest.raises(DataError, match=r"grounding.jsonl.*prompt.*over max_prompt_length = 8"):
        _run(_cfg(tmp_path, max_prompt_length=8))


def test_resume_mid_round_equals_uninterrupted(tmp_path, stop_at_step):
    over = {"max_steps": 4, "steps_per_generation": 2, "per_device_train_batch_size": 1}
    full, _ = resume_mid_run(lambda folder, **extra: _run(_cfg(folder, **over, **extra)), tmp_path, stop_at_step,
                             stop=3)
    a = full.policy.state_dict()
    start = _run(_cfg(tmp_path / "start", **over)).policy.state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4     # and the weights did move


def test_python_api_is_the_config_run(tmp_path):
    """vision_grpo_train (in-memory rows with PIL images) trains the same weights as the config-built run with the
    released Vision-R1 KL term (use_bias_correction_kl false: the API's default, as examples/vlm/vision_r1.yaml)."""
    from PIL import Image

    from preflab.models.tiny_vlm import tiny_vlm, tiny_vlm_processor
    from preflab.models.vlm import freeze_vision
    from preflab.online.api import vision_grpo_train
    from preflab.verifiers import vision_r1_rewards

    over = {"max_steps": 2, "max_completion_length": 8}
    config_run = _run(_cfg(tmp_path / "config", objective_params={"use_bias_correction_kl": False}, **over))
    config_run.train()
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    for row in rows:
        row["images"] = [Image.open(DATA.parent / p).convert("RGB") for p in row["images"]]
    processor = tiny_vlm_processor("qwen2_vl")
    policy = tiny_vlm(processor, "qwen2_vl", seed=0)
    freeze_vision(policy, True, False)
    summary = vision_grpo_train(policy, processor, rows, [*vision_r1_rewards(), length_reward], num_generations=3,
                                prompts_per_step=2, learning_rate=1e-3, use_cpu=True, temperature=1.0,
                                output_dir=str(tmp_path / "api"), **over)
    assert summary["global_step"] == 2
    a, b = config_run.policy.state_dict(), policy.state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    start = tiny_vlm(processor, "qwen2_vl", seed=0).state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4


def test_judge_cache_tells_prompts_with_other_images_apart(tmp_path):
    """Two prompts with the same text and columns but other images: the judge cache (keyed by prompt text, completion
    and columns) gave the second the first one's cached reward; keyed by the images' pixel digest too, the judge
    scores both. The same pixels loaded from another file are still served from the cache."""
    from PIL import Image

    from preflab.loops.judge import Judge
    from preflab.online.vision import vision_prompt_rows

    run = _run(_cfg(tmp_path))
    calls = []

    def call_order(prompts, completions, **kwargs):  # a reward that differs per call: a shared entry shows
        calls.extend(completions)
        return [float(len(calls) - len(completions) + i) for i in range(len(completions))]

    run.judge = Judge([call_order])
    red, blue = (Image.new("RGB", (16, 16), c) for c in ((200, 0, 0), (0, 0, 200)))
    red.save(tmp_path / "red.png")
    red.save(tmp_path / "red_again.png")
    text = "Locate the square."
    rows = vision_prompt_rows([{"images": [red], "prompt": text}, {"images": [blue], "prompt": text},
                               {"images": [str(tmp_path / "red_again.png")], "prompt": text}], run.processor)
    assert rows[0].prompt == rows[1].prompt and rows[0].columns == rows[1].columns
    ids = [[5, 6]] * 2
    _, _, first, _, _ = run._judge_round(rows[:2], ids, 1)
    assert len(calls) == 2 and first[0] != first[1]  # the blue prompt was judged, not served the red one's reward
    _, _, again, _, _ = run._judge_round(rows[2:], ids[:1], 1)
    assert len(calls) == 2 and again[0] == first[0]  # the same pixels from another file: a cache hit
    assert run.judge.cache_hits == 1


def _mean_red(image) -> float:
    import numpy as np

    return float(np.asarray(image.convert("RGB"), dtype=np.float64)[..., 0].mean())


def test_reward_functions_get_each_completions_prompt_images_as_trl_passes_them(tmp_path):
    """TRL 1.16's GRPOTrainer passes the dataset's `images` column to reward functions (keyword `images`, a list of
    PIL images per completion); a reward reading them (the mean red value) gets its own prompt's image for each of
    the K completions, and the logged reward is the direct computation. A reward function with a fixed signature
    (no `images`, no **kwargs) is not given them and still scores."""
    from PIL import Image

    from preflab.models.vlm import load_vlm_processor

    cfg = _cfg(tmp_path)
    processor = load_vlm_processor(cfg)
    task = load_vision_task(cfg, processor)
    seen = []

    def red(prompts, completions, images, **kwargs):
        assert all(isinstance(ims, list) and all(isinstance(im, Image.Image) for im in ims) for ims in images)
        seen.extend(zip([p[0]["content"][-1]["text"] for p in prompts], images))
        return [_mean_red(ims[0]) / 255 for ims in images]

    def fixed(prompts, completions, solution, num_instances, completion_ids):  # the old columns only
        return [float(len(ids)) for ids in completion_ids]

    task.judges[:] = [red, fixed]
    run = VisionOnlineRun(cfg, processor=processor, task=task)
    [mb] = run.micro_batches(0)
    exs = mb.examples
    rows = {json.loads(line)["prompt"]: json.loads(line) for line in DATA.read_text().splitlines()}
    expected = {p: _mean_red(Image.open(DATA.parent / r["images"][0])) / 255 for p, r in rows.items()}
    assert len(set(expected.values())) == len(expected)  # the images tell the prompts apart
    # one entry per completion (2 prompts x K = 3), each its own prompt's image
    assert len(seen) == 6 and len({p for p, _ in seen}) == 2
    assert all(_mean_red(ims[0]) / 255 == pytest.approx(expected[p], abs=1e-12) for p, ims in seen)
    direct = [expected[run.by_id[e.row_id].prompt[0]["content"][-1]["text"]] for e in exs for _ in e.completions]
    assert run.pending.metrics["rewards/red/mean"] == pytest.approx(sum(direct) / len(direct), abs=1e-9)
    lengths = [len(c) for e in exs for c in e.completions]
    assert run.pending.metrics["rewards/fixed/mean"] == pytest.approx(sum(lengths) / len(lengths), abs=1e-9)
    assert run.judge.failed == 0


def test_judge_passes_images_only_to_functions_that_take_them():
    from PIL import Image

    from preflab.errors import ConfigError
    from preflab.loops.judge import Judge

    red, blue = (Image.new("RGB", (4, 4), c) for c in ((200, 0, 0), (0, 0, 50)))

    def takes(prompts, completions, images, label):
        return [_mean_red(ims[0]) for ims in images]

    def fixed(prompts, completions, label):
        return [float(x) for x in label]

    judge = Judge([takes, fixed])
    scores, per_fn = judge(["p", "p"], ["a", "a"], columns=[{"label": 1}, {"label": 2}], cache_context=["r", "b"],
                           images=[[red], [blue]])
    assert per_fn.tolist() == [[200.0, 1.0], [0.0, 2.0]] and judge.failed == 0
    assert scores.tolist() == [201.0, 2.0]
    with pytest.raises(ConfigError, match="cache_context"):  # images unhashed: the cache needs their digest
        judge(["p"], ["a"], columns=[{"label": 1}], images=[[red]])


def test_a_solution_missing_in_some_vision_prompt_rows_is_counted():
    """A grounding row without `solution` reached vision_r1_precision / recall as None and scored 0 against nothing,
    silently; online_task: vision_dataset now counts the gap per column as online_task: dataset does."""
    from PIL import Image

    from preflab.online.vision import vision_prompt_rows
    from vlm_helpers import tiny

    _, processor = tiny("qwen2_vl")
    red = Image.new("RGB", (16, 16), (200, 0, 0))
    rows = [{"images": [red], "prompt": "Locate it.", "solution": '[["square", [0, 0, 8, 8]]]'},
            {"images": [red], "prompt": "Locate it."},
            {"images": [red], "prompt": "Locate it.", "solution": None}]
    report: dict = {}
    vision_prompt_rows(rows, processor, report_to=report)
    assert report["prompt_rows"]["column_gaps"] == {"solution": {"rows": 2, "first_row": 1}}


def test_at_a_temperature_the_vision_runs_policy_and_reference_scores_are_log_softmax_of_logits_over_it(tmp_path):
    """TRL 1.16's GRPOTrainer scores VLM completions through its fused LM head at `temperature` too: the policy's
    and the reference's log-probs are log_softmax(logits / T) of the VLM's full .logits."""
    from preflab.scoring.vlm import VisionLogProbScorer

    t = 0.7
    run = _run(_cfg(tmp_path, temperature=t))
    [mb] = run.micro_batches(0)
    exs = mb.examples
    layout = run._group_layout(exs)
    with torch.no_grad():
        logits = run.policy(**layout.model_inputs(run.policy)).logits.float()
        ours = VisionLogProbScorer(run.policy, None, t)(layout).token_logps
        plain = run._policy_scores(layout).token_logps   # the run's own scorer: tempered too
    logprobs = torch.log_softmax(logits / t, -1).reshape(-1, logits.shape[-1])
    want = torch.where(layout.response_mask, logprobs[layout.pred_index, layout.target_ids], 0.0)
    assert torch.allclose(ours, want, atol=1e-5) and torch.allclose(plain, want, atol=1e-5)
    with torch.no_grad():
        untempered = naive_vision_token_logps(run.policy, layout)
    assert float((untempered - want).abs().max()) > 1e-3
    # the reference (the round-start copy of the policy) was scored at t as well
    ref = token_matrix([v for e in exs for v in e.ref], layout.response_mask)
    assert torch.allclose(ref.float(), want, atol=1e-5)
