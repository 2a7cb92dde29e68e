"""The reference cache's key and file checks (preflab.scoring.ref_cache): what a cached value depends on must be in
its key, and a file of another format is a miss. Planted bugs (benchmarks/mutation.py, mutation-data round) that
left a setting, a MAPL intra row's rejected prompt or the format check out of the key survived the run tests."""
from types import SimpleNamespace

import torch
from safetensors.torch import save_file

from preflab.scoring import ref_cache
from preflab.scoring.ref_cache import RefLogps, cache_key, load_ref_logps, pairs_fingerprint, save_ref_logps


def _pair(row_id, rejected_prompt=None):
    return SimpleNamespace(row_id=row_id, prompt_ids=[1, 7, 8], chosen_ids=[9, 2], rejected_ids=[10, 11, 2],
                           extras={}, rejected_prompt_ids=rejected_prompt)


def test_the_key_changes_with_each_scoring_setting_and_nothing_else():
    pairs = [_pair(0), _pair(1)]
    base = {"dtype": "float32", "device": "cpu"}
    key = cache_key("h" * 64, pairs, base)
    assert cache_key("h" * 64, [_pair(0), _pair(1)], dict(reversed(base.items()))) == key  # same inputs, any order
    assert cache_key("h" * 64, pairs, {**base, "dtype": "bfloat16"}) != key  # bf16 log-probs differ from fp32's
    assert cache_key("h" * 64, pairs, {**base, "device": "cuda"}) != key
    assert cache_key("g" * 64, pairs, base) != key  # other reference weights


def test_a_mapl_intra_rows_rejected_prompt_is_part_of_the_key():
    plain = [_pair(0)]
    intra = [_pair(0, rejected_prompt=[1, 7, 12])]  # rejected side scored after x_l, not after the prompt
    other = [_pair(0, rejected_prompt=[1, 7, 13])]
    keys = {pairs_fingerprint(p) for p in (plain, intra, other)}
    assert len(keys) == 3
    assert pairs_fingerprint(intra) == pairs_fingerprint([_pair(0, rejected_prompt=[1, 7, 12])])


def test_a_file_of_another_format_with_the_same_key_is_a_miss(tmp_path):
    values = RefLogps([torch.tensor([-1.0, -2.0])], [torch.tensor([-3.0])])
    path = tmp_path / "ref.safetensors"
    save_ref_logps(path, values, "k" * 64)
    loaded = load_ref_logps(path, "k" * 64, 1)
    assert loaded.chosen[0].tolist() == [-1.0, -2.0] and loaded.rejected[0].tolist() == [-3.0]
    old = {"chosen": torch.tensor([-1.0, -2.0]), "chosen_offsets": torch.tensor([0, 2]),
           "rejected": torch.tensor([-3.0]), "rejected_offsets": torch.tensor([0, 1])}
    save_file(old, str(path), metadata={"format": str(ref_cache.CACHE_FORMAT - 1), "key": "k" * 64})
    assert load_ref_logps(path, "k" * 64, 1) is None  # format 1: sliding-window models scored with a 4-D mask
