"""PPD's user-embedding branch: decoupled cross-attention on every cross-attention block of a diffusers UNet.

"Personalized Preference Fine-tuning of Diffusion Models" (Dang et al., 2025; abstract: VLM user embeddings fed
through cross-attention; methods §28, design [derived]) in the decoupled form of IP-Adapter (Ye et al., 2023,
arXiv:2308.06721, Eq. 5):

    h <- Attn(Q, K_c, V_c) + lambda * Attn(Q, W_K^u P e_u, W_V^u P e_u)

P: d_u -> d_cross, shared by all blocks (in `UserBranch`); W_K^u, W_V^u per block, W_V^u zero-initialised so the model
starts identical to the base. The text path is the block's original processor, untouched; since its output
projection is linear, the user stream is added after it as W_out Attn_u / rescale_output_factor (exactly
to_out(Attn_c + lambda Attn_u) for the UNet's blocks). Calling the UNet without `user_embeds` gives the base model:
that is the reference. Users are interpolated with e = (1 - gamma) e_a + gamma e_b.
"""
from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from preflab.errors import PreflabError


class DecoupledCrossAttnProcessor(nn.Module):
    """Wraps a cross-attention block's processor and adds the user stream (user_embeds [B, L_u, d_cross],
    already projected by P). `__call__` is overridden so diffusers sees the `user_embeds` keyword."""

    def __init__(self, base_processor: Any, cross_dim: int, inner_dim: int, scale: float = 1.0,
                 zero_init: bool = True):
        super().__init__()
        self.base = base_processor
        self.scale = scale
        self.to_k_user = nn.Linear(cross_dim, inner_dim, bias=False)
        self.to_v_user = nn.Linear(cross_dim, inner_dim, bias=False)
        if zero_init:
            nn.init.zeros_(self.to_v_user.weight)

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 user_embeds: Tensor | None = None) -> Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                        attention_mask=attention_mask, temb=temb)
        if user_embeds is None or self.scale == 0:
            return out
        if hidden_states.dim() != 3 or attn.group_norm is not None or attn.spatial_norm is not None:
            raise PreflabError("DecoupledCrossAttnProcessor supports transformer-block cross-attention on [B, N, C] "
                               "tokens without group/spatial norm (UNet2DConditionModel's attn2).")
        b, heads = hidden_states.shape[0], attn.heads
        split = lambda v: v.reshape(b, v.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        query = split(attn.to_q(hidden_states))
        key, value = split(self.to_k_user(user_embeds)), split(self.to_v_user(user_embeds))
        user = F.scaled_dot_product_attention(query, key, value)       # [B, heads, N, head_dim]
        user = user.transpose(1, 2).reshape(b, -1, heads * user.shape[-1])
        user = F.linear(user.to(query.dtype), attn.to_out[0].weight)
        return out + self.scale * user / attn.rescale_output_factor


class UserAgnosticProcessor:
    """A self-attention block's processor that accepts (and ignores) `user_embeds`, so diffusers does not warn."""

    def __init__(self, base_processor: Any):
        self.base = base_processor

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 user_embeds: Tensor | None = None) -> Tensor:
        return self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                         attention_mask=attention_mask, temb=temb)


class UserBranch(nn.Module):
    """The trainable add-on: P (user_dim -> cross_dim) and the per-block processors (also registered in the UNet)."""

    def __init__(self, user_dim: int, cross_dim: int):
        super().__init__()
        self.proj = nn.Linear(user_dim, cross_dim)
        self.blocks = nn.ModuleDict()


def install_user_branch(unet: nn.Module, user_dim: int, scale: float = 1.0, zero_init: bool = True) -> UserBranch:
    """Freeze `unet`, put a DecoupledCrossAttnProcessor on every cross-attention block; returns the branch, whose
    parameters are the only trainable ones."""
    unet.requires_grad_(False)
    cross_dim = unet.config.cross_attention_dim
    branch = UserBranch(user_dim, cross_dim)
    for name, module in list(unet.named_modules()):
        if not (hasattr(module, "set_processor") and hasattr(module, "is_cross_attention")):
            continue
        base = module.processor
        if module.is_cross_attention:
            proc = DecoupledCrossAttnProcessor(base, cross_dim, module.to_q.out_features, scale, zero_init)
            branch.blocks[name.replace(".", "_")] = proc
            module.set_processor(proc)
        else:
            module.set_processor(UserAgnosticProcessor(base))
    if not branch.blocks:
        raise PreflabError("install_user_branch found no cross-attention block in this model.")
    return branch


class PPDDenoiser:
    """f(x_t, t, cond) with cond = {"encoder_hidden_states": text [B, L, d], "user_embeds": e_u [B, L_u, d_u]}.
    use_user=False (or no "user_embeds") runs the base UNet: the PPD reference."""

    def __init__(self, unet: nn.Module, branch: UserBranch, use_user: bool = True):
        self.unet, self.branch, self.use_user = unet, branch, use_user

    def __call__(self, x_t: Tensor, t: Tensor, cond: dict) -> Tensor:
        kwargs = {}
        if self.use_user and cond.get("user_embeds") is not None:
            kwargs["cross_attention_kwargs"] = {"user_embeds": self.branch.proj(cond["user_embeds"])}
        return self.unet(x_t, t, encoder_hidden_states=cond["encoder_hidden_states"], **kwargs).sample


def interpolate_users(e_a: Tensor, e_b: Tensor, gamma: float) -> Tensor:
    """(1 - gamma) e_a + gamma e_b; gamma in {0, 1} returns the endpoints exactly."""
    return (1 - gamma) * e_a + gamma * e_b


def trainable_parameters(branch: UserBranch) -> list[Tensor]:
    """The branch's parameters (P, W_K^u, W_V^u of every block)."""
    return [p for p in branch.parameters() if p.requires_grad]


def normalize_user_embeddings(e: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-token standardisation over the feature axis (VLM hidden states vary widely in scale)."""
    return (e - e.mean(-1, keepdim=True)) / (e.std(-1, keepdim=True) + eps)


__all__ = ["DecoupledCrossAttnProcessor", "UserBranch", "install_user_branch", "PPDDenoiser", "interpolate_users",
           "normalize_user_embeddings", "trainable_parameters", "UserAgnosticProcessor"]
