"""TR-DPO reference sync (preflab.loops.ref_sync) part by part: a LoRA policy's separate reference is its base with
the adapters off even when the adapters are trained (a PEFT policy given from Python), and the note of a checkpoint
without a synced reference names the step of the next sync."""
from types import SimpleNamespace

import torch

from preflab.loops.ref_sync import PREFIX, present_in_checkpoint, separate_base_reference
from preflab.models.load import add_lora
from preflab.models.tiny import tiny_causal_lm, tiny_tokenizer


def test_the_separate_reference_of_a_trained_lora_policy_is_its_base_not_its_merged_weights():
    tok = tiny_tokenizer()
    base = {k: v.detach().clone() for k, v in tiny_causal_lm(tok, seed=0).named_parameters()}
    policy = add_lora(tiny_causal_lm(tok, seed=0), 4, 8, 0.0, ["q_proj", "v_proj"])
    with torch.no_grad():  # adapters that moved: B != 0, so the merged weights differ from the base
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        before = policy(ids).logits
    ref = separate_base_reference(policy, torch.float32)
    got = dict(ref.named_parameters())
    assert got.keys() == base.keys() and all(torch.equal(got[k], base[k]) for k in base)
    assert not any(p.requires_grad for p in ref.parameters())
    with torch.no_grad():  # the policy keeps its adapters
        assert torch.equal(policy(ids).logits, before) and not torch.allclose(ref(ids).logits, before)


def test_the_note_names_the_next_multiple_of_tau(tmp_path):
    extras = {PREFIX + "w": torch.zeros(1), "other": torch.zeros(1)}
    for step, every, first in ((2, 3, 3), (3, 3, 6), (7, 4, 8)):
        notes = []
        kept = present_in_checkpoint(extras, tmp_path, step, SimpleNamespace(every=every), notes.append)
        assert list(kept) == ["other"] and notes[0].endswith(f"the first sync is after step {first}.")
