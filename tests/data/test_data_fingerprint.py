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


def test_a_renamed_column_a_reshaped_tensor_an_edited_image_and_booleans_each_change_the_fingerprint():
    """Each of these is other data with every id and value alike: an extra column renamed (its values now read
    under another name), latents reshaped (2 x 3 vs 3 x 2: the same bytes), an image edited in place (same mode and
    size) and booleans in place of the ints 0 / 1 (json true / false)."""
    import numpy as np
    from PIL import Image

    pair = lambda extras: [TokenizedPair(0, [1, 2], [3], [4], extras)]  # noqa: E731
    assert fp(pair({"w": 0.5})) != fp(pair({"v": 0.5})) and fp(pair({"w": 0.5})) == fp(pair({"w": 0.5}))
    flat = torch.arange(6, dtype=torch.float32)
    assert fp([flat.reshape(2, 3)]) != fp([flat.reshape(3, 2)]) and fp([flat.reshape(2, 3)]) == fp([flat.view(2, 3)])
    assert fp([flat.numpy().reshape(2, 3)]) != fp([flat.numpy().reshape(3, 2)])
    black, edited = Image.new("RGB", (2, 2)), Image.new("RGB", (2, 2))
    edited.putpixel((1, 1), (0, 0, 1))
    assert fp([black]) != fp([edited]) and fp([black]) == fp([Image.new("RGB", (2, 2))])
    assert fp([np.asarray(black)]) != fp([np.asarray(edited)])
    assert fp([[True, 0]]) != fp([[1, 0]]) and fp([[True, False]]) != fp([[1, 0]])
    assert fp([[1, 0]]) == fp([(1, 0)])  # an int list hashes its ids, list or tuple alike
