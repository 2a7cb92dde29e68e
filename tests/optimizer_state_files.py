"""The optimizer-state round trip the checkpoint-file tests share: split as a checkpoint saves it (safetensors +
JSON), joined into a fresh optimizer over a copy of the weights, then compared with the uninterrupted optimizer."""
import json

import torch
from safetensors.torch import load_file, save_file

from preflab.checkpoint import join_optimizer_state, split_optimizer_state


def assert_restored_state_steps_exactly(model, optimizer, again, rebuild, step, tmp_path) -> None:
    """Save `optimizer`'s state to tmp_path/optimizer.safetensors + optimizer.json, copy `model`'s weights into
    `again`, load the files into `rebuild(again)` (a fresh optimizer over again's parameters), and assert the restored
    state equals the original (tensors equal with the same dtype; other values equal with the same python type), then
    that steps 2 and 3 (`step(net, opt, k)`) of both leave equal parameters, bit for bit."""
    tensors, meta = split_optimizer_state(optimizer.state_dict())
    save_file(tensors, str(tmp_path / "optimizer.safetensors"))
    (tmp_path / "optimizer.json").write_text(json.dumps(meta))
    with torch.no_grad():
        for p, q in zip(again.parameters(), model.parameters(), strict=True):
            p.copy_(q)
    restored = rebuild(again)
    restored.load_state_dict(join_optimizer_state(load_file(str(tmp_path / "optimizer.safetensors")),
                                                  json.loads((tmp_path / "optimizer.json").read_text())))
    for p, q in zip(again.parameters(), model.parameters(), strict=True):
        mine, theirs = restored.state[p], optimizer.state[q]
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert (torch.equal(mine[key], theirs[key]) and mine[key].dtype == theirs[key].dtype
                    if torch.is_tensor(mine[key]) else (mine[key], type(mine[key])) == (theirs[key], type(theirs[key])))
    for k in (2, 3):
        step(model, optimizer, k)
        step(again, restored, k)
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), model.parameters(), strict=True))
