"""The online state beside a checkpoint (online-state/step-N: the round being trained, the judge cache, counters)
is sealed by the checkpoint: a damaged or missing file is never loaded. `resume_from_checkpoint: true` falls back to
the previous checkpoint with a warning naming the file; a checkpoint given by path stops with an error naming it."""
import json
import sys
from pathlib import Path

import pytest
import torch

from preflab.errors import PreflabError

sys.path.insert(0, str(Path(__file__).parent))
from test_online_run import tiny_cfg, tiny_run  # noqa: E402


def test_damaged_online_state_falls_back_to_the_previous_checkpoint_or_names_the_file(tmp_path, capsys):
    """The old code loaded an edited judge.json (its counters, its cached judgments) without a word, and a truncated
    round.json ended in a JSONDecodeError traceback."""
    straight = tiny_run(tiny_cfg(tmp_path / "full"))
    straight.train()
    out = tmp_path / "cut"
    tiny_run(tiny_cfg(out, save_steps=2)).train()
    judge = out / "online-state" / "step-6" / "judge.json"
    state = json.loads(judge.read_text())
    state["counts"]["rounds"] += 5  # an edit that still parses
    judge.write_text(json.dumps(state))
    round_file = out / "online-state" / "step-4" / "round.json"
    round_file.write_text(round_file.read_text()[:-20])  # truncated
    with pytest.raises(PreflabError, match=f"{judge}.*changed after the save"):
        tiny_run(tiny_cfg(out, save_steps=2, resume_from_checkpoint=str(out / "checkpoint-6"))).train()
    capsys.readouterr()
    stale = out / "online-state" / ".tmp-step-8-12345"  # a save killed while writing the online state
    stale.mkdir()
    (stale / "round.json").write_text("{")
    resumed = tiny_run(tiny_cfg(out, save_steps=2, resume_from_checkpoint=True))
    summary = resumed.train()
    said = capsys.readouterr().out
    assert str(judge) in said and str(round_file) in said and "Falling back" in said
    assert summary["resumed_from_step"] == 2 and not stale.exists()
    a, b = straight.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit (CPU, one thread)
    (out / "online-state" / "step-2" / "judge.json").unlink()
    with pytest.raises(PreflabError, match=r"step-2/judge\.json is missing"):
        tiny_run(tiny_cfg(out, save_steps=2, resume_from_checkpoint=str(out / "checkpoint-2"))).train()


def test_a_full_disk_while_writing_the_online_state_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    """The old code let the OSError out as a traceback and left a half-written online-state folder."""
    import errno

    import preflab.online.run as online_run

    real = online_run.fsync_file
    calls = {"n": 0}

    def full_disk_on_the_second_save(path):
        if "step-4" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        calls["n"] += 1
        return real(path)

    monkeypatch.setattr(online_run, "fsync_file", full_disk_on_the_second_save)
    out = tmp_path / "run"
    with pytest.raises(PreflabError, match=r"online state .*step-4 of checkpoint-4: No space left on device\. "
                                           r"Earlier checkpoints are kept"):
        tiny_run(tiny_cfg(out, save_steps=2)).train()
    assert calls["n"] > 0 and (out / "checkpoint-2").is_dir() and not (out / "checkpoint-4").exists()
    assert sorted(p.name for p in (out / "online-state").iterdir()) == ["step-2"]


def test_a_policy_given_from_python_trains_without_dropout_by_default(tmp_path):
    """disable_dropout (default true) applied only to models preflab loaded itself; a policy passed to OnlineRun
    kept its dropout (the tiny GPT-2 has 0.1 everywhere)."""
    import torch

    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer
    from preflab.online.run import OnlineRun
    from preflab.online.tasks import Task
    from test_online_run import PROMPTS, e_judge

    tok = tiny_tokenizer("char")
    policy = tiny_causal_lm(tok, arch="gpt2", hidden_size=32, seed=1)
    assert any(m.p > 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))
    OnlineRun(tiny_cfg(tmp_path / "run"), policy=policy, tokenizer=tok, task=Task(PROMPTS, [e_judge]))
    assert all(m.p == 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))
    kept = tiny_causal_lm(tok, arch="gpt2", hidden_size=32, seed=1)
    OnlineRun(tiny_cfg(tmp_path / "kept", disable_dropout=False), policy=kept, tokenizer=tok,
              task=Task(PROMPTS, [e_judge]))
    assert any(m.p > 0 for m in kept.modules() if isinstance(m, torch.nn.Dropout))
