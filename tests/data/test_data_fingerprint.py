"""The fingerprint of the training examples (saved with checkpoints, compared at resume) changes with any content
and with nothing else."""
from types import SimpleNamespace

import torch

from preflab.data.tokenize import TokenizedPair
from preflab.data.fingerprint import training_data_fingerprint as fp


def test_equal_content_equal_fingerprint_and_every_change_shows():
    base = [TokenizedPair(0, [1, 2], [3, 2], [4, 2], {"w": 0.5}), TokenizedPair(1, [1, 9], [8], [7], {})]
    same = [TokenizedPair(0, [1, 2], [3, 2], [4, 2], {"w": 0.5}), TokenizedPair(1, [1, 9], [8], [7], {})]
    assert fp(base) == fp(same) and fp(base).startswith("sha256:")
    changed = [
        [TokenizedPair(0, [1], [2, 3, 2], [4, 2], {"w": 0.5}), base[1]],      # the prompt/response boundary moved
        [TokenizedPair(0, [1, 2], [3, 2], [4, 2], {"w": 0.25}), base[1]],     # an extra
        [base[1], base[0]],                                                  # the order
        [base[0]],                                                           # a row dropped
        [TokenizedPair(5, [1, 2], [3, 2], [4, 2], {"w": 0.5}), base[1]],      # a row id
        [TokenizedPair(0, [1, 2], [3, 2], [4, 2], {"w": 0.5}), TokenizedPair(1, [1, 9], [8], [70], {})],  # a token
    ]
    assert len({fp(c) for c in changed} | {fp(base)}) == len(changed) + 1
    assert fp([]) is None and fp(None) is None


def test_tensors_namespaces_and_unknown_objects():
    a = [SimpleNamespace(row_id=0, pixels=torch.zeros(2, 2, dtype=torch.uint8), cb=object())]
    b = [SimpleNamespace(row_id=0, pixels=torch.zeros(2, 2, dtype=torch.uint8), cb=object())]  # another object
    c = [SimpleNamespace(row_id=0, pixels=torch.ones(2, 2, dtype=torch.uint8), cb=object())]
    assert fp(a) == fp(b) != fp(c)  # an object is hashed by its type (its repr holds an address)
