"""An online run's held-out evaluation (online.tasks.dataset_evaluate) is judged once, on the main process, and its
scores sent to the others (rank_agreement.main_result); a judge that raises on a held-out answer is counted and said
(eval_judge/failed, summary.json eval_judge_failed_before / _after, a note with the judge's error), never a silent
NaN. The two-process behaviour (a judge stuck or failing on one rank) is tests/test_rank_agreement.py's; here the
protocol runs in one process: the broadcast is replaced by one that records what the main sends and hands it to a
process playing rank 1."""
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from preflab.config import config_from_dict
from preflab.online.tasks import dataset_evaluate

sys.path.insert(0, str(Path(__file__).parent))

BASE = dict(task="online", online_task="dataset", trainer="online_dpo", dataset_name="unused", reward_funcs="x",
            model_name_or_path="builtin:tiny-llama", max_steps=2, max_completion_length=6, disable_tqdm=True,
            use_cpu=True)
HELD = [{"prompt": p} for p in ("the cat", "a tree", "eels")]


class CountedJudge:
    """A deterministic reward function (letters 'e', shorter is better) that counts the completions it saw and
    raises on the answers to the prompts in `fails_on`."""

    def __init__(self, fails_on=()):
        self.seen, self.fails_on = 0, set(fails_on)
        self.__name__ = "e_count"

    def __call__(self, prompts, completions, **kwargs):
        self.seen += len(completions)
        if self.fails_on & set(prompts):
            raise RuntimeError("the grading server refused the request (503)")
        return [c.count("e") - 0.01 * len(c) for c in completions]


def tiny():
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    torch.set_num_threads(1)
    tok = tiny_tokenizer()
    return tiny_causal_lm(tok, seed=0), tok


def direct_scores(cfg, model, tok, judge) -> list[float]:
    """The judge's scores of the greedy held-out answers, judged here directly (the evaluation before this change
    judged them so on every process)."""
    from preflab.loops.judge import Judge
    from preflab.loops.rollout import decode, prepare_prompts
    from preflab.online.tasks import _eval_answers

    rows = prepare_prompts(HELD, tok)
    ids = _eval_answers(cfg, model, tok, [r.prompt_ids for r in rows], sampled=False)
    scores, _ = Judge([judge], cache=False)([r.prompt for r in rows], [decode(tok, c, False) for c in ids])
    return scores.tolist()


def test_the_main_judges_the_held_out_answers_once_and_rank_1_gets_the_same_scores(monkeypatch):
    """Main (is_main_process) and rank 1 of a 2-process run, the broadcast recorded on the main and replayed on rank
    1: the main's scores equal the judge's own scores of the greedy answers (the evaluation as it was on one
    process), the judge saw each held-out answer once on the main and none on rank 1, and rank 1's result (reward,
    per prompt, counts) is the main's."""
    import accelerate.utils

    cfg = config_from_dict(BASE)
    model, tok = tiny()
    want = direct_scores(cfg, model, tok, CountedJudge())
    sent = []

    def recorded(objects, from_process=0):
        sent.append(list(objects))
        return objects

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", recorded)
    judge = CountedJudge()
    main = dataset_evaluate(cfg, HELD, [judge])(model, tok, accelerator=SimpleNamespace(num_processes=2,
                                                                                        is_main_process=True))
    assert judge.seen == len(HELD) and len(sent) == 1
    assert main["per_prompt"] == pytest.approx(want, rel=0, abs=1e-12)
    assert main["reward"] == pytest.approx(math.fsum(want) / len(want), rel=1e-12)
    assert (main["judge_failed"], main["unscored"], main["answers"]) == (0, 0, 3)

    monkeypatch.setattr(accelerate.utils, "broadcast_object_list", lambda objects, from_process=0: sent[0])
    other_judge = CountedJudge()
    other = dataset_evaluate(cfg, HELD, [other_judge])(model, tok, accelerator=SimpleNamespace(num_processes=2,
                                                                                              is_main_process=False))
    assert other_judge.seen == 0  # rank 1 judges nothing
    assert {k: other[k] for k in ("reward", "per_prompt", "unscored", "judge_failed", "judge_failure")} == \
        {k: main[k] for k in ("reward", "per_prompt", "unscored", "judge_failed", "judge_failure")}


def test_one_process_scores_equal_the_direct_judgement():
    """One process (no accelerator): the same scores as the judge's own on the greedy answers."""
    cfg = config_from_dict(BASE)
    model, tok = tiny()
    want = direct_scores(cfg, model, tok, CountedJudge())
    got = dataset_evaluate(cfg, HELD, [CountedJudge()])(model, tok)
    assert got["per_prompt"] == pytest.approx(want, rel=0, abs=1e-12)


def test_a_judge_raising_on_one_held_out_answer_is_counted_and_said(tmp_path, capsys):
    """A reward function that raises on the answer to one held-out prompt (of 3): that answer scores NaN and is left
    out of eval_reward (the other two's mean, as judged directly), counted in eval_judge/failed at every evaluation
    (metrics.jsonl) and in summary.json eval_judge_failed_before / _after, and said in a note with the judge's
    error at each evaluation (the starting policy's, step 1's, step 2's)."""
    from test_online_run import PROMPTS

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task

    cfg = config_from_dict({**BASE, "learning_rate": 1e-2, "num_generations": 2, "prompts_per_generation": 4,
                            "steps_per_generation": 1, "per_device_train_batch_size": 2, "logging_steps": 1,
                            "eval_steps": 1, "seed": 3, "output_dir": str(tmp_path)})
    tok = tiny_tokenizer("char")
    judge = CountedJudge(fails_on={"a tree"})
    task = Task(PROMPTS, [CountedJudge()], HELD, dataset_evaluate(cfg, HELD, [judge]))
    run = OnlineRun(cfg, policy=tiny_causal_lm(tok, hidden_size=32, seed=1), tokenizer=tok, task=task)
    run.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [row for row in rows if "eval_reward" in row]
    assert [row["eval_judge/failed"] for row in evals] == [1.0] * len(evals) and len(evals) >= 2
    assert [row["eval_judge/dropped"] for row in evals] == [1.0] * len(evals)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["eval_judge_failed_before"], summary["eval_judge_failed_after"]) == (1, 1)
    scored = direct_scores(cfg, run.policy, tok, CountedJudge())
    del scored[1]  # "a tree": the answer the judge raised on
    assert summary["eval_reward_after"] == pytest.approx(math.fsum(scored) / 2, rel=1e-12)
    out = capsys.readouterr().out
    note = ("the evaluation {}: a judge raised on 1 of 3 held-out answers, scored NaN and left out of eval_reward "
            "and the win rate (eval_judge/failed). The first failure: judge 'e_count' raised RuntimeError: the "
            "grading server refused the request (503).")
    assert f"preflab: note: {note.format('of the starting policy')}" in out
    assert f"preflab: note: {note.format('at step 1')}" in out
