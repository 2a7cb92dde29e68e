"""Review of apo_zero_unpaired's completions-only batches: KTO's notes about mismatched (KL) pairs do not apply."""
from preflab.config_trl import translate_trl


def test_sequential_sampling_note_says_apo_zero_unpaired_reads_no_kl_pairs():
    """KTOConfig's train_sampling_strategy: sequential matters to KTO's KL pairs; apo_zero_unpaired scores none (TRL's
    calculate_KL = False), so its note must not say it takes KL pairs x_i + y_(i-1)."""
    _, kto, _ = translate_trl({"loss_type": "kto", "train_sampling_strategy": "sequential"})
    _, apo, _ = translate_trl({"loss_type": "apo_zero_unpaired", "train_sampling_strategy": "sequential"})
    assert any("KL pairs x_i + y_(i-1)" in n for n in kto)
    (note,) = [n for n in apo if "train_sampling_strategy" in n]
    assert "KL pairs x_i" not in note and "no KL pairs" in note
