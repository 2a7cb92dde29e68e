"""Items of the reliability checklist (/work/shared/RELIABILITY.md §5) that no other test covered: resume inside and
at the end of a later epoch (A3), resume tests with teeth for the optimizer and scheduler state (A2), same seed
same run and another seed another run (G1, G2), no unpickling or eval in the library (F1), every shipped example
config loads (L2)."""
import ast
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import preflab
from preflab.config import load_config, preflight

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "loops"))
from tiny_run import run  # noqa: E402


def _weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def _max_diff(a, b):
    assert a is not b
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_resume_inside_and_at_the_end_of_a_later_epoch_equals_the_straight_run(tmp_path):
    """8 pairs, batch 4: 2 steps per epoch, so step 3 is inside epoch 1 and step 4 ends it (transformers PR #40691:
    a resume in epoch >= 1 replayed epoch 0's order)."""
    kw = dict(n_pairs=8, max_steps=7, save_steps=1, lr_scheduler_type="linear")
    run(tmp_path, **kw)
    straight = _weights(tmp_path)
    for step in (3, 4):
        summary, _ = run(tmp_path, resume_from_checkpoint=str(tmp_path / f"checkpoint-{step}"), **kw)
        assert summary["resumed_from_step"] == step
        assert _max_diff(straight, _weights(tmp_path)) == 0.0


@pytest.mark.parametrize("left_out", ["optimizer", "scheduler"])
def test_resume_is_exact_only_with_the_optimizer_and_scheduler_state(tmp_path, monkeypatch, left_out):
    """The mutation half of A2 (the RNG half: test_resume_restores_the_rng_that_dropout_draws_from): a resume that
    does not restore the optimizer's moments or the scheduler's position ends elsewhere, so the exact-resume tests
    would catch a checkpoint that lost either (PolymathicAI/the_well#77)."""
    kw = dict(max_steps=6, save_steps=3, lr_scheduler_type="linear", learning_rate=1e-2)
    run(tmp_path, **kw)
    straight = _weights(tmp_path)
    run(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-3"), **kw)
    assert _max_diff(straight, _weights(tmp_path)) == 0.0
    target = torch.optim.Optimizer if left_out == "optimizer" else torch.optim.lr_scheduler.LambdaLR
    monkeypatch.setattr(target, "load_state_dict", lambda self, state: None)
    run(tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-3"), **kw)
    assert _max_diff(straight, _weights(tmp_path)) > 1e-5


def test_same_seed_gives_the_same_run_bit_for_bit_and_another_seed_another_run(tmp_path):
    """G1 + G2: the data order is a function of the seed (the tiny policy's init is fixed by tiny_run)."""
    first, _ = run(tmp_path / "a", max_steps=4, seed=0)
    again, _ = run(tmp_path / "b", max_steps=4, seed=0)
    run(tmp_path / "c", max_steps=4, seed=1)
    assert _max_diff(_weights(tmp_path / "a"), _weights(tmp_path / "b")) == 0.0
    assert first["final_metrics"]["loss"] == again["final_metrics"]["loss"]
    assert _max_diff(_weights(tmp_path / "a"), _weights(tmp_path / "c")) > 1e-6


# What may unpickle or evaluate code, and the only places allowed to: the sandbox passes its own limits to its own
# launcher with marshal (parent to child, never read from a file) and runs the sandboxed program with exec.
_ALLOWED = {("sandbox/_launcher.py", "import marshal"), ("sandbox/runner.py", "import marshal"),
            ("sandbox/_guard.py", "exec")}
_UNPICKLERS = {"pickle", "dill", "joblib", "cloudpickle", "marshal", "shelve"}


def _risky_calls(path: Path, rel: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom)
                                                    and node.module else [])
            found += [f"import {n}" for n in names if n.split(".")[0] in _UNPICKLERS]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec"):
                found.append(func.id)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                owner, attr = func.value.id, func.attr
                if owner == "torch" and attr == "load":
                    found.append("torch.load")
                if owner in ("np", "numpy") and attr == "load" and any(
                        k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                        for k in node.keywords):
                    found.append("np.load(allow_pickle)")
    return [f"{rel}:{what}" for what in found if (rel, what) not in _ALLOWED]


def test_the_library_never_unpickles_or_evaluates_code(tmp_path):
    """F1 (CVE-2026-1839 was an unguarded torch.load of an RNG file): checkpoints, caches and weights are read with
    safetensors and json only. Pickle weights load only through transformers when the user sets allow_pickle."""
    root = Path(preflab.__file__).parent
    found = [hit for path in sorted(root.rglob("*.py"))
             for hit in _risky_calls(path, path.relative_to(root).as_posix())]
    assert found == []
    probe = tmp_path / "probe.py"  # the scan has teeth
    probe.write_text("import pickle\ntorch.load(f)\nnp.load(f, allow_pickle=True)\neval(s)\nm.eval()\n")
    assert _risky_calls(probe, "probe.py") == ["probe.py:import pickle", "probe.py:torch.load",
                                               "probe.py:np.load(allow_pickle)", "probe.py:eval"]


def test_every_shipped_example_config_loads_and_names_existing_files():
    """L2 (torchtune's config test saw 3 of 197 YAML files): every YAML under examples/ (the accelerate configs have
    their own test) loads, builds its objective and passes the pre-flight checks; a data path inside the repository
    exists."""
    configs = [p for p in sorted((ROOT / "examples").rglob("*.yaml")) if "accelerate" not in p.parts]
    assert len(configs) >= 40
    for path in configs:
        cfg = load_config(str(path))
        cfg.objective()
        preflight(cfg, check_models=False)
        for name in (cfg.dataset_name, getattr(cfg, "eval_dataset_name", None)):
            if isinstance(name, str) and name.startswith("examples/"):
                assert (ROOT / name).exists(), f"{path.relative_to(ROOT)}: {name} does not exist"


class _Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # unpickling this writes the marker file
        return (Path.write_text, (self.marker, "ran"))


def test_a_deleted_file_falls_back_and_a_planted_pickle_is_never_read(tmp_path, capsys):
    """F2 and the deleted-file case of F4: checkpoint-4 lost its rng.json, checkpoint-2 holds an extra optimizer.pt
    whose unpickling would write a marker. `resume_from_checkpoint: true` skips checkpoint-4 naming the missing file,
    resumes checkpoint-2 (reading only the files its COMPLETE marker lists) and ends as the straight run."""
    import pickle

    run(tmp_path / "straight", max_steps=4)
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    (out / "checkpoint-4" / "rng.json").unlink()
    marker = tmp_path / "pwned"
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(pickle.dumps(_Planted(marker)))
    capsys.readouterr()
    summary, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=True)
    said = capsys.readouterr().out
    assert f"{out / 'checkpoint-4' / 'rng.json'} is missing" in said and "Falling back" in said
    assert summary["resumed_from_step"] == 2 and not marker.exists()
    written = {p.name for p in (out / "checkpoint-4").iterdir()}  # F3: safetensors and JSON only (the resume wrote it)
    assert written and all(n.endswith((".safetensors", ".json")) or n == "COMPLETE" for n in written), written
    assert _max_diff(_weights(tmp_path / "straight"), _weights(out)) <= 1e-6


def test_a_checkpoint_whose_complete_marker_was_deleted_is_skipped_with_a_warning(tmp_path, capsys):
    """A save never leaves checkpoint-N without its COMPLETE marker (it writes under a temporary name), so one
    without it was damaged; the old code skipped it without a word."""
    out = tmp_path / "run"
    run(out, max_steps=4, save_steps=2)
    (out / "checkpoint-4" / "COMPLETE").unlink()
    capsys.readouterr()
    summary, _ = run(out, max_steps=4, save_steps=2, resume_from_checkpoint=True)
    said = capsys.readouterr().out
    assert f"{out / 'checkpoint-4'} is not a complete checkpoint ({out / 'checkpoint-4' / 'COMPLETE'} is missing" in said
    assert summary["resumed_from_step"] == 2


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_both_ranks_with_the_same_error_and_no_hang(tmp_path, accelerate_launch):
    """H3: rank 1 alone sees a NaN loss at steps 2 and 3. Both ranks skip both updates (the verdict is shared) and
    stop together after max_nonfinite_steps, with the checkpoint holding the weights after step 1; a rank that
    decided alone would hang the other in the next collective (here: the 300 s timeout)."""
    import os
    import subprocess

    script = ROOT / "tests" / "loops" / "tiny_run.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TINY_RUN_POISON": "1:2,3"}
    cmd = accelerate_launch("--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                            "--dynamo_backend", "no", str(script), str(tmp_path / "two"),
                            "per_device_train_batch_size=2", "max_nonfinite_steps=2", "max_steps=6")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("2 non-finite steps in a row") >= 2, proc.stderr[-3000:]  # raised on both ranks
    # both name the checkpoint (rank 1 said "saved in None": the main alone returned its path)
    assert proc.stderr.count(f"saved in {tmp_path / 'two' / 'checkpoint-3'}.") >= 2, proc.stderr[-3000:]
    run(tmp_path / "one", max_steps=1, per_device_train_batch_size=4)
    assert _max_diff(_weights(tmp_path / "one"), load_file(str(tmp_path / "two" / "checkpoint-3" /
                                                                "model.safetensors"))) < 1e-5


def test_a_failed_save_with_save_total_limit_1_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """I3 (OpenRLHF's save_ckpt evicts before writing, so a crash with max_num 1 leaves no checkpoint): old
    checkpoints are removed only after the new one is committed."""
    import errno

    import preflab.checkpoint as ck

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ck.save_checkpoint(tmp_path, 1, model, opt, None, {}, save_total_limit=1)
    real = ck.commit_checkpoint

    def full_disk(tmp, final, step):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "commit_checkpoint", full_disk)
    with pytest.raises(preflab.PreflabError, match="Earlier checkpoints are kept"):
        ck.save_checkpoint(tmp_path, 2, model, opt, None, {}, save_total_limit=1)
    assert ck.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-1"]
    monkeypatch.setattr(ck, "commit_checkpoint", real)
    ck.save_checkpoint(tmp_path, 3, model, opt, None, {}, save_total_limit=1)
    assert ck.list_checkpoints(tmp_path) == [tmp_path / "checkpoint-3"]


@pytest.mark.slow
def test_every_module_of_the_library_imports():
    """L1 (torchtune's dpo.py shipped with undefined names that no import ever exercised): every preflab module
    imports with the installed packages (optional extras that are missing must fail only when used)."""
    import importlib
    import pkgutil

    failed = {}
    for module in pkgutil.walk_packages(preflab.__path__, "preflab."):
        try:
            importlib.import_module(module.name)
        except Exception as err:  # noqa: BLE001 - collected and shown together
            failed[module.name] = f"{type(err).__name__}: {err}"
    assert failed == {}


@pytest.mark.parametrize("layout", ["padded", "prefix_shared", "packed", "prefix_packed"])
def test_the_trained_positions_are_exactly_each_halfs_response_tokens(layout):
    """B4 (OpenRLHF#294: the rejected half's prompt tokens were counted in its log-prob): in every layout, the
    targets are exactly the chosen response (first B sequences) and the rejected response (next B), each token read
    at the position of the token before it in its own sequence. No prompt or pad token is a target."""
    from types import SimpleNamespace

    from preflab.loops.batches import collate_pairs

    pairs = [SimpleNamespace(row_id=10 + i, extras={}, prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected)
             for i, (prompt, chosen, rejected) in enumerate([([1, 5, 6, 7], [8, 9, 2], [11, 2]),
                                                               ([1, 5], [12, 13, 14, 15, 2], [16, 2]),
                                                               ([1, 20, 21, 22, 23, 24], [25, 2], [26, 27, 28, 2])])]
    batch = collate_pairs(pairs, pad_id=0, layout=layout)
    flat = batch.input_ids.reshape(-1)
    expected = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    assert batch.row_ids == [10, 11, 12]
    for n, (prompt, response) in enumerate(expected):
        mask = batch.response_mask[n]
        assert batch.target_ids[n][mask].tolist() == response
        # read at the last prompt token, then at each earlier response token (prefix layouts: the rejected half
        # reads the shared prompt's last position, not the token after it, which is the chosen half's)
        assert flat[batch.pred_index[n][mask]].tolist() == [prompt[-1], *response[:-1]]


def test_dropout_is_off_by_default_so_the_first_dpo_loss_is_exactly_log_2(tmp_path):
    """G4 + C7 (trl PR #639, trl#2042): the tiny GPT-2 has dropout 0.1; with policy == reference the first DPO loss is
    ln 2 only when the log-prob passes run without dropout, the default. disable_dropout: false moves it."""
    import json
    import math

    def first_loss(out, **kw):
        run(out, tiny_arch="gpt2", max_steps=1, **kw)
        return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    assert first_loss(tmp_path / "default") == pytest.approx(math.log(2), abs=1e-6)
    assert abs(first_loss(tmp_path / "dropout", disable_dropout=False) - math.log(2)) > 1e-4


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_disable_dropout_also_zeroes_the_attention_rates_read_without_a_module(arch):
    """Llama-family attention reads `self.attention_dropout` (a float, no nn.Dropout) at forward time; the old
    disable_dropout set only nn.Dropout modules, so that dropout stayed on in training mode."""
    from preflab.models.load import disable_dropout
    from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer

    model = tiny_causal_lm(tiny_tokenizer(), arch=arch, seed=0)
    model.config.attention_dropout = 0.5
    for module in model.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model.train()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11]])
    torch.manual_seed(0)
    if arch == "llama":  # the test has teeth: the rate is live before
        assert not torch.equal(model(ids).logits, model(ids).logits)
    disable_dropout(model)
    assert torch.equal(model(ids).logits, model(ids).logits)
    assert model.config.attention_dropout == 0.0
