"""The DSTC recipe (task: dstc): the synthetic code task, the sandboxed execution matrix, containment of planted
malicious programs, and resume == uninterrupted. The spec's selection checks (toy matrix, invariants, skips,
concatenation, timeouts as 0) are in tests/verifiers/test_dstc_builder.py."""
import json
import sys

import numpy as np
import pytest
from safetensors.torch import load_file

import preflab.tool_use.dstc as dstc
from preflab.cli import main
from preflab.errors import ConfigError
from preflab.sandbox import run_tests
from preflab.tool_use.dstc_task import (CodeTask, Step, assert_line, code_prompt, hidden_test, is_correct_test,
                                        program, sft_rows, unit_test_prompt)
from preflab.verifiers.dstc import execution_matrix

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="preflab.sandbox is Linux-only")

TASK = CodeTask(Step("subtract", 3), Step("multiply by", 2))
TINY = ("{n_sft_tasks: 12, n_dstc_tasks: 3, n_test: 4, sft_per_task: 1, sft_steps: 20, n_codes: 3, n_tests: 2, "
        "iterations: 2, dpo_steps: 2, batch_size: 4, hidden_size: 32, timeout_s: 1.0, control: true}")


def test_task_programs_and_the_hidden_test():
    assert TASK.instruction == "subtract 3 then multiply by 2" and TASK.gold(5) == 4
    gold, buggy = program(TASK.first, TASK.second), program(TASK.first, TASK.second, reversed_subtraction=True)
    assert gold == "def f(x): return (x-3)*2" and buggy == "def f(x): return (3-x)*2"
    assert hidden_test(TASK) == "assert (f(-7),f(13),f(40))==(-20,20,74)"
    assert assert_line(1, TASK.gold(1)) == "assert f(1)==-4"
    assert [o.passed for o in run_tests(gold, [hidden_test(TASK), "assert f(1)==-4"])] == [True, True]
    assert [o.passed for o in run_tests(buggy, [hidden_test(TASK), "assert f(1)==-4"])] == [False, False]
    assert code_prompt(TASK) == "Write f: subtract 3 then multiply by 2.\nCode:\n"
    assert unit_test_prompt(TASK) == "Test f: subtract 3 then multiply by 2.\nTest:\n"


def test_test_correctness_is_decided_by_parsing_only():
    assert is_correct_test(TASK, "assert f(1)==-4") and is_correct_test(TASK, "assert -4 == f(1)")
    assert not is_correct_test(TASK, "assert f(1)==4")                    # wrong value
    for odd in ("assert g(1)==-4", "assert f(x=1)==-4", "assert f(True)==-4", "", "assert f(1)",
                "__import__('os').system('touch x')"):
        assert not is_correct_test(TASK, odd), odd


def test_sft_rows_carry_the_bug_in_code_only():
    other = CodeTask(Step("add", 4), Step("subtract", 1))
    rows = sft_rows([TASK, other], per_task=2, noise=0.0, bug_rate=1.0, seed=0)
    assert len(rows) == 2 * 2 * 2  # per task and repeat: one code row, one test row per training input (x = 7)
    codes = {r["prompt"]: set() for r in rows}
    for r in rows:
        codes[r["prompt"]].add(r["completion"])
    assert codes[code_prompt(TASK)] == {"def f(x): return (3-x)*2"}          # every subtract-first program: bug
    assert codes[code_prompt(other)] == {"def f(x): return (x+4)-1"}         # the others: gold
    assert codes[unit_test_prompt(TASK)] == {"assert f(7)==8"}                 # the tests: gold
    clean = sft_rows([TASK], per_task=3, noise=0.0, bug_rate=0.0, seed=0)
    assert {r["completion"] for r in clean if r["prompt"] == code_prompt(TASK)} == {"def f(x): return (x-3)*2"}


def test_split_tasks_gives_disjoint_seeded_training_and_held_out_instructions():
    """A seeded shuffle of all 15 x 15 = 225 two-step instructions: n_train for training, the next n_test held out,
    never one instruction on both sides (the held-out score measures instructions never trained on)."""
    from preflab.tool_use.dstc_task import all_tasks, split_tasks

    assert len(all_tasks()) == len(set(all_tasks())) == 225
    train, test = split_tasks(200, 25, seed=3)
    assert (len(train), len(test)) == (200, 25) and not set(train) & set(test)
    assert set(train) | set(test) == set(all_tasks()) and split_tasks(200, 25, seed=3) == (train, test)
    assert split_tasks(200, 25, seed=4) != (train, test)
    with pytest.raises(ConfigError, match="n_sft_tasks \\+ n_test = 226 exceeds the 225 instructions"):
        split_tasks(200, 26, seed=3)


def test_sft_rows_noise_always_writes_a_wrong_program_or_test():
    """A random slip (noise 1) changes a constant or an operation, never leaves the step as it was: every noisy
    program differs from the gold one and every noisy test's value is off."""
    import random

    from preflab.tool_use.dstc_task import noisy_code, noisy_test

    rng = random.Random(0)
    gold = program(TASK.first, TASK.second)
    codes = {noisy_code(TASK, noise=1.0, bug_rate=0.0, rng=rng) for _ in range(200)}
    assert gold not in codes and len(codes) > 10
    assert all(noisy_test(TASK, 7, 1.0, rng) != assert_line(7, TASK.gold(7)) for _ in range(50))


def test_runner_matrix_equals_execution_matrix_and_runs_each_pair_once():
    codes = ["def f(x): return x+1", "def f(x): return x+2", "def f(x): return x+1", "def f(x) return"]
    tests = ["assert f(1)==2", "assert f(0)==2", "assert f(1)==2"]
    runner = dstc.SandboxRunner(timeout_s=2.0, max_workers=2)
    m = runner.matrix(codes, tests)
    np.testing.assert_array_equal(m, execution_matrix(codes, tests, max_workers=2))
    np.testing.assert_array_equal(m, [[1, 0, 1], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    # 2 distinct parsable programs x 2 distinct tests run; the unparsable one is judged on the host, never run
    assert runner.runs == 4 and runner.statuses["syntax_error_not_run"] == 2


def planted_sampler(tmp_path):
    """The real sampler plus, per task, the gold program, the buggy one and a right test (so pairs exist), and in
    iteration 1 four malicious programs for the first task."""
    real = dstc.sample_candidates
    canaries = [tmp_path / "written_outside", tmp_path / "by_os_system"]
    malicious = [f"open({str(canaries[0])!r}, 'w').write('x')\ndef f(x): return x",
                 f"import os\nos.system('touch {canaries[1]}')\ndef f(x): return None",
                 "import os\nwhile True:\n    os.fork()",
                 "while True:\n    pass"]

    def sample(model, tokenizer, tasks, n_codes, n_tests, *, temperature, seed, **kw):
        out = real(model, tokenizer, tasks, n_codes, n_tests, temperature=temperature, seed=seed, **kw)
        extended = []
        for i, (task, (codes, tests)) in enumerate(zip(tasks, out)):
            codes = codes + [program(task.first, task.second), program(task.first, task.second, True)]
            tests = tests + [assert_line(0, task.gold(0))]
            if i == 0 and seed % 1000 == 10:  # iteration 1
                codes = codes + malicious
            extended.append((codes, tests))
        return extended

    return sample, canaries, malicious


@pytest.mark.slow
def test_recipe_contains_malicious_programs_and_resume_equals_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    sample, canaries, malicious = planted_sampler(tmp_path)
    monkeypatch.setattr(dstc, "sample_candidates", sample)
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["train", "examples/tools/dstc.yaml", f"recipe_params={TINY}"]
    assert main(args + [f"output_dir={full}"]) == 0
    summary = json.loads((full / "summary.json").read_text())
    # contained: nothing written outside, the loops were killed, every planted program failed, the run went on
    assert not any(c.exists() for c in canaries)
    assert summary["run_statuses"].get("timeout", 0) >= 2
    pairs = [json.loads(line) for line in (full / "dstc_1" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 3 and not any(m in p["chosen"] for p in pairs for m in malicious)
    assert summary["metric_name"] == "heldout_pass_rate" and summary["pairs_per_iteration"] == [3, 3]
    assert summary["skipped_prompts_per_iteration"] == [0, 0] and summary["control_sft_steps"] == 4
    assert summary["iterations"][0]["chosen_code_correct_rate"] == 1.0  # the gold program passes the most tests

    real_build = dstc.build_dstc_dataset
    calls = []

    def interrupted(rows, **kw):  # the 5th call is the second prompt of iteration 2
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_build(rows, **kw)

    monkeypatch.setattr(dstc, "build_dstc_dataset", interrupted)
    assert main(args + [f"output_dir={part}"]) == 130  # Ctrl-C: preflab main reports it and exits 130
    assert list(json.loads((part / "dstc_state.json").read_text())["stages"]) == ["sft", "dstc_1"]
    monkeypatch.setattr(dstc, "build_dstc_dataset", real_build)
    assert main(args + [f"output_dir={part}"]) == 2 and "resume_from_checkpoint" in capsys.readouterr().err
    assert main(args + [f"output_dir={part}", "resume_from_checkpoint=true"]) == 0
    resumed = json.loads((part / "summary.json").read_text())
    for key in ("metric_untrained", "metric_before", "metric_after", "control_heldout_pass_rate", "iterations",
                "examples_after", "heldout_pass_rate_by_first_step"):
        assert resumed[key] == summary[key], key
    for stage in ("dstc_2", "control", "start"):  # start: the model the recipe built (preflab.recipe_start), saved
        # once by the interrupted session
        a, b = load_file(str(full / stage / "model.safetensors")), load_file(str(part / stage / "model.safetensors"))
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), stage
    start, sft = (load_file(str(full / stage / "model.safetensors")) for stage in ("start", "sft"))
    assert not all((start[k] == sft[k]).all() for k in start)  # saved before the warm-up trained it


@pytest.mark.slow
def test_kto_variant_trains_on_labelled_chosen_and_rejected(tmp_path, monkeypatch):
    sample, _, _ = planted_sampler(tmp_path)
    monkeypatch.setattr(dstc, "sample_candidates", lambda *a, seed, **k: sample(*a, seed=seed + 1, **k))  # no plants
    summary = dstc.run_dstc(str(tmp_path / "kto"), quiet=True, loss="kto", n_sft_tasks=12, n_dstc_tasks=3, n_test=4,
                            sft_per_task=1, sft_steps=10, n_codes=2, n_tests=1, iterations=1, dpo_steps=2,
                            batch_size=4, hidden_size=32, control=False)
    pairs = [json.loads(x) for x in (tmp_path / "kto" / "dstc_1" / "pairs.jsonl").read_text().splitlines()]
    rows = [json.loads(x) for x in (tmp_path / "kto" / "dstc_1" / "kto_rows.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
                    for p in pairs for side in ("chosen", "rejected")]
    assert len(pairs) == 3 and summary["iterations"][0]["dpo_steps"] == 2
    config = (tmp_path / "kto" / "dstc_1" / "dpo" / "config.yaml").read_text()
    assert "loss_type: kto" in config
    with pytest.raises(ConfigError, match="'dpo'"):
        dstc.run_dstc(str(tmp_path / "bad"), loss="ipo")


def test_resume_with_other_params_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    params = {"seed": 0, "n_sft_tasks": 1}
    (out / dstc.STATE_FILE).write_text(json.dumps({"params": params, "stages": {}}))
    with pytest.raises(ConfigError, match="differ"):
        dstc.run_dstc(str(out), resume=True)
    with pytest.raises(ConfigError, match="resume_from_checkpoint"):
        dstc.run_dstc(str(out))
    with pytest.raises(ConfigError, match="n_dstc_tasks <= n_sft_tasks"):
        dstc.run_dstc(str(tmp_path / "new"), n_sft_tasks=10, n_dstc_tasks=20)


def test_dpo_loss_on_a_concatenated_pair_is_the_closed_form(tmp_path):
    """Spec §25 check: the DPO loss on code + "\\n\\n" + test strings is §0.1's
    -log sigmoid(beta [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)]), log-probs summed over the
    response tokens (with EOS) after BOS + prompt."""
    import torch

    from preflab.config import config_from_dict
    from preflab.loops.offline import Trainer
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.verifiers.dstc import dstc_pair

    codes = [program(TASK.first, TASK.second), program(TASK.first, TASK.second, True)]
    tests = ["assert f(7)==8", "assert f(7)==-8"]
    (pair,) = dstc_pair(code_prompt(TASK), codes, tests, matrix=[[1, 0], [0, 0]])
    assert pair["chosen"] == codes[0] + "\n\nassert f(7)==8" and pair["rejected"] == codes[1] + "\n\nassert f(7)==8"
    (tmp_path / "pair.jsonl").write_text(json.dumps(pair) + "\n")
    tok = tiny_tokenizer("char")
    policy, ref = tiny_causal_lm(tok, hidden_size=32, seed=1), tiny_causal_lm(tok, hidden_size=32, seed=2)

    def logp(model, response: str) -> float:
        prompt = [tok.bos_token_id] + tok(pair["prompt"], add_special_tokens=False).input_ids
        resp = tok(response, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids = torch.tensor([prompt + resp])
        with torch.no_grad():
            logits = model(ids).logits.log_softmax(-1)[0, len(prompt) - 1:-1]
        return logits.gather(-1, torch.tensor(resp)[:, None]).sum().item()

    z = (logp(policy, pair["chosen"]) - logp(ref, pair["chosen"])
         - logp(policy, pair["rejected"]) + logp(ref, pair["rejected"]))
    assert abs(z) > 1e-3  # policy and reference differ, so the loss is not the trivial log 2
    expected = -torch.nn.functional.logsigmoid(torch.tensor(0.1 * z)).item()
    cfg = config_from_dict({"model_name_or_path": "builtin:tiny-llama", "loss_type": "sigmoid", "beta": 0.1,
                            "dataset_name": str(tmp_path / "pair.jsonl"), "output_dir": str(tmp_path / "run"),
                            "max_steps": 1, "per_device_train_batch_size": 1, "logging_steps": 1, "save_steps": 0,
                            "eval_steps": 0, "disable_tqdm": True, "use_cpu": True, "max_length": 128})
    Trainer(cfg, policy=policy, ref=ref, tokenizer=tok).train()
    logged = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert logged["loss"] == pytest.approx(expected, rel=1e-5)


def test_sampled_candidates_go_to_their_task_in_groups_of_n_codes_and_n_tests(monkeypatch):
    """sample_candidates: one batched generation of the code prompts (n_codes per task, seed) and one of the test
    prompts (n_tests per task, seed + 1); task i gets programs i*n_codes.. and tests i*n_tests.., each its sample's
    first line."""
    from preflab.models.tiny import tiny_tokenizer
    from preflab.tool_use.dstc_task import split_tasks, unit_test_prompt

    calls = []

    def fake_generate(model, tokenizer, ids, max_new_tokens, do_sample, temperature, seed):
        calls.append((seed, [tokenizer.decode(i[1:]) for i in ids]))
        kind = "code" if seed == 10 else "test"
        return [f" {kind}{i} \nnot run" for i in range(len(ids))]

    monkeypatch.setattr(dstc, "generate_text", fake_generate)
    tasks, _ = split_tasks(3, 1, seed=0)
    out = dstc.sample_candidates(None, tiny_tokenizer("char"), tasks, 2, 3, temperature=1.0, seed=10)
    assert out == [([f"code{2 * i}", f"code{2 * i + 1}"], [f"test{3 * i}", f"test{3 * i + 1}", f"test{3 * i + 2}"])
                   for i in range(3)]
    assert [s for s, _ in calls] == [10, 11]
    assert calls[0][1] == [code_prompt(t) for t in tasks for _ in range(2)]
    assert calls[1][1] == [unit_test_prompt(t) for t in tasks for _ in range(3)]


@pytest.mark.slow
def test_an_iteration_without_pairs_is_said_even_when_quiet(tmp_path, monkeypatch, capsys):
    """User trial 23: with disable_tqdm (quiet) a DSTC iteration in which no prompt gave a pair trained nothing and
    printed nothing; only summary.json's pairs_per_iteration [.., 0] showed it. Now a note says it per iteration.
    Every sampled program is the gold one here, so every row of every matrix ties: no pair, no DPO step, and the
    held-out pass rate after equals the one before (the model is unchanged)."""
    def tied(model, tokenizer, tasks, n_codes, n_tests, *, temperature, seed, **kw):
        return [([program(t.first, t.second)] * n_codes, [assert_line(0, t.gold(0))] * n_tests) for t in tasks]

    monkeypatch.setattr(dstc, "sample_candidates", tied)
    summary = dstc.run_dstc(str(tmp_path / "tied"), quiet=True, n_sft_tasks=4, n_dstc_tasks=2, n_test=1,
                            sft_per_task=1, sft_steps=2, n_codes=2, n_tests=1, iterations=2, dpo_steps=2,
                            batch_size=4, hidden_size=32, control=False)
    assert summary["pairs_per_iteration"] == [0, 0] and summary["skipped_prompts_per_iteration"] == [2, 2]
    assert [r["dpo_steps"] for r in summary["iterations"]] == [0, 0]
    assert summary["metric_after"] == summary["metric_before"]
    out = capsys.readouterr().out
    for it in (1, 2):
        assert out.count(f"preflab: note: dstc iteration {it}: none of the 2 prompts gave a pair") == 1
