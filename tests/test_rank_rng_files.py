"""Per-rank RNG files of a DDP checkpoint (preflab.checkpoint: save_checkpoint(rank_rngs=...) writes rng-rank<r>,
rank_rng_name picks what a process restores) and NEFTune's per-rank generators (preflab.models.neftune.RankNoise),
checked in one process with the process group's rank and world size faked: rank r of a run on the checkpoint's
world size restores rng-rank<r> (its own stream), any other run the main rank's rng; RankNoise's k-th draw of step
s depends on (seed, rank, step, k) only, so a resume at step s draws what the uninterrupted run drew. The two-process
runs themselves: tests/loops/test_multiprocess_features.py (slow)."""
import json

import torch

from preflab.checkpoint import rank_rng_name, restore_rng, rng_parts, save_checkpoint
from preflab.models.neftune import RankNoise, rank_noise_seed


def _fake_group(monkeypatch, rank: int, world: int) -> None:
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda *a: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: world)


def _checkpoint(tmp_path, world: int):
    """checkpoint-2 written with `world` ranks' RNG states: rank r's is torch seeded 100 + r."""
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    states = []
    for r in range(world):
        torch.manual_seed(100 + r)
        states.append(rng_parts())
    path = save_checkpoint(tmp_path, 2, model, opt, None, {"world_size": world}, rank_rngs=states)
    return path, json.loads((path / "trainer_state.json").read_text())


def _draw_after_restore(path, name):
    restore_rng(path, name)
    return torch.rand(3)


def test_each_rank_restores_its_own_stream_on_the_same_world_size(tmp_path, monkeypatch):
    path, state = _checkpoint(tmp_path, 2)
    assert state["world_size"] == 2
    for rank in (0, 1):
        _fake_group(monkeypatch, rank, 2)
        name = rank_rng_name(path, state)
        assert name == f"rng-rank{rank}"
        want = torch.rand(3, generator=torch.Generator().manual_seed(100 + rank))
        torch.manual_seed(0)
        assert torch.equal(_draw_after_restore(path, name), want)  # rank r's own state, not another's


def test_another_world_size_or_no_rank_files_restores_the_main_rank(tmp_path, monkeypatch):
    path, state = _checkpoint(tmp_path, 4)
    _fake_group(monkeypatch, 1, 2)  # written on 4 processes, resumed on 2: rank 1 is not the old rank 1
    assert rank_rng_name(path, state) == "rng"
    _fake_group(monkeypatch, 3, 4)
    assert rank_rng_name(path, state) == "rng-rank3"
    (path / "rng-rank3.safetensors").unlink()  # a checkpoint of an earlier preflab: no per-rank files
    assert rank_rng_name(path, state) == "rng"
    monkeypatch.undo()  # one process (no group): the main rank's, whatever the checkpoint holds
    assert rank_rng_name(path, {**state, "world_size": 1}) == "rng"


def test_rank_noise_depends_on_seed_rank_step_and_forward_only():
    """RankNoise(seed, rank, step): the k-th call of a step draws from rank_noise_seed(seed, rank, step, k), k
    counted from 0 in each step; a RankNoise made at step 3 (a resume) draws what the one that ran steps 0-2 drew."""
    step = {"s": 0}
    running = RankNoise(7, 1, lambda: step["s"])
    drawn = {}
    for s in range(4):
        step["s"] = s
        drawn[s] = [torch.rand(2, generator=running(torch.device("cpu"))) for _ in range(2)]
    resumed = RankNoise(7, 1, lambda: 3)
    again = [torch.rand(2, generator=resumed(torch.device("cpu"))) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(again, drawn[3]))
    for k in (0, 1):
        want = torch.rand(2, generator=torch.Generator().manual_seed(rank_noise_seed(7, 1, 3, k)))
        assert torch.equal(drawn[3][k], want)
    assert len({rank_noise_seed(7, r, 3, 0) for r in range(4)}) == 4  # ranks draw apart
    assert not torch.equal(drawn[3][0], drawn[3][1]) and not torch.equal(drawn[2][0], drawn[3][0])
