"""PPD's decoupled user cross-attention on the tiny UNet (methods §28 checks)."""
import copy
import math

import pytest
import torch

pytest.importorskip("diffusers")

from preflab.diffusion.noising import PairNoiser  # noqa: E402
from preflab.diffusion.tiny import sd_schedule, tiny_unet  # noqa: E402
from preflab.diffusion.user_branch import (PPDDenoiser, install_user_branch, interpolate_users,  # noqa: E402
                                           trainable_parameters)
from preflab.objectives import get_objective  # noqa: E402
from preflab.scoring.diffusion import DiffusionPairs, DiffusionPairScorer  # noqa: E402
from preflab.step import optimizer_step  # noqa: E402

USER_DIM, USER_TOKENS = 16, 4


def setup(seed=0):
    unet = tiny_unet(cross_attention_dim=8)
    base = copy.deepcopy(unet)
    branch = install_user_branch(unet, USER_DIM)
    g = torch.Generator().manual_seed(seed)
    x, text = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 6, 8, generator=g)
    users = torch.randn(4, USER_TOKENS, USER_DIM, generator=g)
    return unet, base, branch, x, text, users


def test_identical_to_base_at_init_and_only_the_branch_trains():
    unet, base, branch, x, text, users = setup()
    t = torch.tensor([10, 300, 600, 990])
    cond = {"encoder_hidden_states": text, "user_embeds": users}
    with torch.no_grad():
        out = PPDDenoiser(unet, branch)(x, t, cond)
        assert (out - base(x, t, encoder_hidden_states=text).sample).abs().max().item() == 0.0
    assert len(branch.blocks) == 4  # cross-attention blocks of the tiny UNet: 1 down, 1 mid, 2 up
    pairs = DiffusionPairs(x, x.flip(0) + 0.1, cond)
    scorer = DiffusionPairScorer(PairNoiser(sd_schedule()))
    out = get_objective("ppd")(scorer(PPDDenoiser(unet, branch), pairs, PPDDenoiser(unet, branch, use_user=False),
                                      torch.Generator().manual_seed(0)))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    out.loss.backward()
    assert all(p.grad is None for n, p in unet.named_parameters() if "processor" not in n)
    v_grads = [blk.to_v_user.weight.grad.abs().sum().item() for blk in branch.blocks.values()]
    assert all(g > 0 for g in v_grads)  # W_V^u gets signal; (P, W_K^u get none while W_V^u = 0)
    assert {id(p) for p in trainable_parameters(branch)} == {id(p) for p in unet.parameters() if p.requires_grad} | {
        id(branch.proj.weight), id(branch.proj.bias)}


def test_interpolation_endpoints():
    e_a, e_b = torch.randn(2, USER_TOKENS, USER_DIM), torch.randn(2, USER_TOKENS, USER_DIM)
    assert torch.equal(interpolate_users(e_a, e_b, 0.0), e_a) and torch.equal(interpolate_users(e_a, e_b, 1.0), e_b)
    torch.testing.assert_close(interpolate_users(e_a, e_b, 0.25), 0.75 * e_a + 0.25 * e_b)


def test_two_users_with_opposite_tastes():
    # user A prefers brighter latents (higher mean), user B darker; only the user branch trains
    unet, _, branch, _, _, _ = setup()
    g = torch.Generator().manual_seed(1)
    e_users = torch.randn(2, USER_TOKENS, USER_DIM, generator=g)
    text = torch.randn(1, 6, 8, generator=g)
    scorer = DiffusionPairScorer(PairNoiser(sd_schedule()))
    policy, reference = PPDDenoiser(unet, branch), PPDDenoiser(unet, branch, use_user=False)
    objective = get_objective("ppd", beta=400.0)

    def user_pairs(n, gen):
        base = 0.5 * torch.randn(n, 4, 8, 8, generator=gen)
        bright, dark = base + 0.5, base - 0.5
        who = torch.arange(n) % 2  # 0 = user A, 1 = user B
        chosen = torch.where((who == 0).reshape(-1, 1, 1, 1), bright, dark)
        rejected = torch.where((who == 0).reshape(-1, 1, 1, 1), dark, bright)
        cond = {"encoder_hidden_states": text.expand(n, -1, -1), "user_embeds": e_users[who]}
        return DiffusionPairs(chosen, rejected, cond), who

    optimizer = torch.optim.AdamW(trainable_parameters(branch), lr=3e-3, weight_decay=0.0)
    for _ in range(12):
        mb, _ = user_pairs(8, g)
        optimizer_step([mb], lambda m: objective(scorer(policy, m, reference, g)), trainable_parameters(branch),
                       optimizer, max_grad_norm=1.0)
    heldout, who = user_pairs(32, torch.Generator().manual_seed(5))
    with torch.no_grad():
        b = scorer(policy, heldout, reference, torch.Generator().manual_seed(6))
    z = (b.policy_chosen.sum - b.ref_chosen.sum) - (b.policy_rejected.sum - b.ref_rejected.sum)
    for user in (0, 1):  # each user's own preference holds on held-out pairs
        assert (z[who == user] > 0).float().mean().item() >= 0.9


def test_user_attention_is_added_with_the_branch_scale():
    """IP-Adapter's decoupled cross-attention (PPD's user branch): out = base + lambda * Attn(Q, K_u, V_u) W_o, so on
    one cross-attention block the added term at lambda = 0.5 is exactly half of the term at lambda = 1 (W_V^u
    initialised non-zero here: at the zero init both terms are 0)."""
    unet = tiny_unet(cross_attention_dim=8)
    torch.manual_seed(0)
    branch = install_user_branch(unet, USER_DIM, scale=1.0, zero_init=False)
    proc = next(iter(branch.blocks.values()))
    attn = next(m for m in unet.modules() if getattr(m, "processor", None) is proc)
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 16, attn.to_q.in_features, generator=g)
    text, user = torch.randn(2, 6, 8, generator=g), torch.randn(2, USER_TOKENS, 8, generator=g)
    with torch.no_grad():
        base = proc.base(attn, hidden, encoder_hidden_states=text)
        full = proc(attn, hidden, encoder_hidden_states=text, user_embeds=user) - base
        proc.scale = 0.5
        half = proc(attn, hidden, encoder_hidden_states=text, user_embeds=user) - base
    assert full.abs().max().item() > 1e-3
    torch.testing.assert_close(half, 0.5 * full, rtol=1e-6, atol=1e-7)
