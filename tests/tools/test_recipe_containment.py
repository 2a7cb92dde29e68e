"""Issue 15's containment contract for the recipes icpl, themis and raft_ladder: a malicious model output (a reward
program, a tool call's action input, a "ladder program" that is Python) is run only in preflab.sandbox or only
parsed, never executed on the host; it counts as a failure and nothing crashes."""
import pytest
import torch

from preflab.ladder import recipe as ladder_recipe
from preflab.ladder.program import LadderError, parse_program
from preflab.ladder.synthetic import make_ladder_rows
from preflab.reward_design import AutoRater, BanditTask, run_icpl
from preflab.reward_design.icpl import render_linear
from preflab.reward_models.themis import START_OBSERVATION, START_TOOL, START_WORK, score_with_tools
from preflab.reward_models.themis_toy import themis_tokenizer
from preflab.tools import Calculator, ToolBox
from preflab.tools.base import TOOL_ERROR_OBSERVATION


# ------------------------------------------------------------------------------------------------ ICPL
class _MaliciousCodeLLM:
    """Two honest reward programs, then ones that attack the host (or hang)."""

    def __init__(self, target):
        self.target = str(target)

    def propose(self, prompt, k, iteration):
        t = self.target
        honest = [render_linear([1.0, 0.0, 0.0]), render_linear([0.0, -1.0, 0.5])]
        attacks = [
            f"import subprocess\ndef reward(features):\n    subprocess.check_call(['touch', {t + '_sub'!r}])\n"
            "    return features[0]\n",
            f"def reward(features):\n    open({t + '_open'!r}, 'w').write('pwned')\n    return features[0]\n",
            "def reward(features):\n    while True:\n        pass\n",
            f"import os\ndef reward(features):\n    os.system('touch {t}_system')\n    return features[1]\n",
        ]
        return (honest + attacks)[:k]


@pytest.mark.slow  # six sandboxed runs, one of them a 1 s timeout
def test_icpl_malicious_reward_programs_run_only_in_the_sandbox_and_failures_are_never_rated(tmp_path):
    target = tmp_path / "pwned"
    task = BanditTask.default()
    task.timeout_s = 1.0
    result = run_icpl(_MaliciousCodeLLM(target), task, AutoRater(), iterations=1, samples=6)
    assert [p.name for p in tmp_path.iterdir()] == []  # no file was created outside the sandbox
    candidates = result.history[0]["candidates"]
    statuses = [c["status"] for c in candidates]
    assert statuses == ["ok", "ok", "failed", "failed", "failed", "failed"]
    assert candidates[2]["error"] == f"refused: subprocess.Popen(['touch', {str(target) + '_sub'!r}])"
    assert "PermissionError" in candidates[3]["error"]
    assert candidates[4]["error"] == "timeout"
    # os.system would return an exit status and let the program carry on to a score: the sandbox refuses it
    assert candidates[5]["error"] == f"refused: os.system('touch {target}_system')"
    assert result.trainer_calls == 6 and result.failed_samples == 4
    good, bad = result.history[0]["good"], result.history[0]["bad"]
    assert statuses[good] == "ok" and statuses[bad] == "ok"  # a failed program is never rated good or bad
    ok = [c["metric"] for c in candidates if c["status"] == "ok"]
    assert candidates[good]["metric"] == max(ok) and candidates[bad]["metric"] == min(ok)


def test_icpl_reward_program_that_calls_os_system_is_rated_failed(tmp_path):
    """os.system returns an exit status instead of raising: contained but once rated "ok". Now it fails, with the
    call as the reason, also when the program catches the refusal and returns a perfectly good number."""
    task = BanditTask.default()
    plain = f"import os\ndef reward(features):\n    os.system('touch {tmp_path}/x')\n    return features[1]\n"
    caught = ("import os\ndef reward(features):\n    try:\n        os.system('true')\n    except Exception:\n"
              "        pass\n    return features[1]\n")
    for code, call in ((plain, f"os.system('touch {tmp_path}/x')"), (caught, "os.system('true')")):
        outcome = task.train(code)
        assert outcome["status"] == "failed" and outcome["metric"] is None
        assert outcome["error"] == f"refused: {call}"
    assert task.train(render_linear([0.0, 1.0, 0.0]))["status"] == "ok"   # the same program without the call
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ Themis
class _ScriptedLM(torch.nn.Module):
    """generate() appends the next scripted chunk (whatever the prompt): a stand-in for a model that writes it."""

    def __init__(self, tokenizer, chunks):
        super().__init__()
        self.tokenizer, self.chunks = tokenizer, list(chunks)

    def generate(self, input_ids, **kwargs):
        new = self.tokenizer(self.chunks.pop(0), add_special_tokens=False).input_ids
        return torch.cat([input_ids, torch.tensor([new])], dim=1)


class _ScriptedThemis(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask):
        return None, torch.zeros(input_ids.shape[0])


@pytest.mark.parametrize("action_input", [
    "__import__('os').system('touch {target}')",
    "open('{target}', 'w').write('x')",
    "9**9**9",
    "((10**64)**64)**64",
    '{{"expression": "__import__(\'os\').system(\'touch {target}\')"}}',
])
def test_themis_malicious_action_input_gives_the_fixed_error_observation(tmp_path, action_input):
    target = tmp_path / "pwned"
    tokenizer = themis_tokenizer()
    malicious = action_input.format(target=target)
    lm = _ScriptedLM(tokenizer, [f"{START_TOOL} Thought: attack.\nAction: Calculator\nAction Input: {malicious}\n"
                                 f"{START_OBSERVATION}", f"{START_WORK}", "done." + tokenizer.eos_token])
    toolbox = ToolBox([Calculator()])
    out = score_with_tools(_ScriptedThemis(lm), tokenizer, "1+2*3", "7", toolbox)
    assert out["tool_calls"] == 1 and out["tool_errors"] == 1
    assert toolbox.stats["errors"] == 1 and toolbox.stats["calls"] == 1
    assert f" Observation: {TOOL_ERROR_OBSERVATION}\n" in out["trace"]
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_themis_honest_action_input_gets_the_calculator_value():  # the same path, not an error everywhere
    tokenizer = themis_tokenizer()
    lm = _ScriptedLM(tokenizer, [f"{START_TOOL} Thought: compute.\nAction: Calculator\nAction Input: 1+2*3\n"
                                 f"{START_OBSERVATION}", f"{START_WORK}", "ok." + tokenizer.eos_token])
    out = score_with_tools(_ScriptedThemis(lm), tokenizer, "1+2*3", "7", ToolBox([Calculator()]))
    assert out["tool_calls"] == 1 and out["tool_errors"] == 0 and " Observation: 7\n" in out["trace"]


# ------------------------------------------------------------------------------------------------ ladder
def test_ladder_python_output_is_an_invalid_program_and_never_executed(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    attacks = [f"__import__('os').system('touch {target}')",
               f"import os; os.system('touch {target}')",
               f"exec(\"open('{target}', 'w').write('x')\")"]
    for text in attacks:
        with pytest.raises(LadderError):
            parse_program(text)
    rows = [{**r, "prompt": r["instruction"]} for r in make_ladder_rows(4, seed=0)]
    outputs = attacks + [rows[3]["program_text"]]  # the last output is the gold program: valid and correct
    monkeypatch.setattr(ladder_recipe, "generate_text", lambda model, tok, ids, max_new_tokens: list(outputs))
    accuracy, valid, examples = ladder_recipe.program_accuracy(None, _NoTokenizer(), rows)
    assert (accuracy, valid) == (0.25, 0.25)
    assert [e["correct"] for e in examples] == [False, False, False, True]
    assert not target.exists() and list(tmp_path.iterdir()) == []


class _NoTokenizer:
    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [1, 2]})()
