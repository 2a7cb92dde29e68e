"""SparsePO: token-level DPO whose per-token reward and KL terms are weighted by learned, sparse, non-negative masks.

Paper: Christopoulou, Cardenas, Lampouras, Bou-Ammar, Wang, 2024, "SparsePO: Controlling Preference Alignment of
LLMs via Sparse Token Masks" (arXiv:2410.05102), learned-mask objective. Checked against the official code
(huawei-noah/HEBO `SparsePO/src/trainers/sparse_trainer.py`: loss line and L1 halving re-read here;
`src/masks/mask_models.py::SimpleMaskAllLayers`). Loss in _sparse.sparse_pair_loss:

    L = -log sigmoid(beta [(sum_t mu h - sum_t md k)_w - (...)_l]) + l1_u |mu|_1 + l1_d |md|_1,   k_t = -KL_t
    mask_t = ReLU(w . LayerNorm(hidden_t) + b): non-negative, unbounded; one common module (l1_u, l1_d halved, as
    in the code) or two with `independent=True`.

Extras (token_needs): chosen/rejected_token_kl [B, T] = KL(pi_ref || pi_theta); chosen/rejected_hidden [B, T, H],
the state at the position predicting token t. Hidden states are detached (the code reads the frozen reference).
An nn.Module: the trainer adds `objective.parameters()` (the masks, trained jointly with the policy) to its
optimizer; hence a mutable dataclass. Set `hidden_size`; 0 builds the masks on the first batch. The trained masks
are saved in every checkpoint (extra.safetensors) and beside the final model as sparsepo_masks.safetensors (state_dict
names: SparsePO(hidden_size=H, <the run's objective_params>).load_state_dict(load_file(...)) rebuilds them).

Deviation from the paper: masks read the scorer's last policy hidden state instead of every reference layer, so the
layer mixer is dropped (for one layer it only rescales or kills the mask); init w = 0, b = 1 (all-ones masks, the
TDPO-style loss) instead of random; dropout defaults to 0 (code 0.01) to keep the loss deterministic.
"""
from dataclasses import dataclass

import torch
from torch import nn

from preflab.errors import ConfigError
from preflab.objectives._sparse import sparse_pair_loss
from preflab.objectives.base import Objective, ObjectiveOutput, PairBatch


def _mask_net(hidden_size: int, dropout: float) -> nn.Module:
    proj = nn.Linear(hidden_size, 1)
    nn.init.zeros_(proj.weight)
    nn.init.ones_(proj.bias)
    return nn.Sequential(nn.LayerNorm(hidden_size), proj, nn.ReLU(), nn.Dropout(dropout))


@dataclass(eq=False)
class SparsePO(Objective, nn.Module):
    reward_meaning = "beta * SparsePO's mask-weighted token reward"
    beta: float = 0.1             # inverse temperature (code: 0.1 HH/MBPP, 0.8 IMDB/TL;DR)
    l1_u: float = 0.0             # L1 weight on the reward mask (code default 0; HH recipe 1e-3)
    l1_d: float = 0.0             # L1 weight on the KL mask
    independent: bool = False     # two mask modules (reward, KL) instead of one common mask
    mask_on_reward: bool = True   # False: reward mask = 1
    mask_on_kl: bool = True       # False: KL mask = 1
    hidden_size: int = 0          # H of the hidden states; 0 = build on the first batch
    dropout: float = 0.0          # dropout on the mask (code: 0.01)

    token_needs = ("token_kl", "hidden")
    state_file = "sparsepo_masks.safetensors"  # the learned masks beside the final model (the paper plots them)
    paper = "Christopoulou et al. 2024, SparsePO (arXiv:2410.05102)"
    checked_against = ("official code: huawei-noah/HEBO@04f4ece SparsePO/src/trainers/sparse_trainer.py (loss, token "
                       "KL sign, L1 halving for a common mask), re-read 2026-12")
    tags = {"data": ("pair-wise", "token"), "framework": ("offline",), "constraint": ("reference",), "property": ()}

    def __post_init__(self):
        nn.Module.__init__(self)
        self.validate()
        self.nets = nn.ModuleDict()
        if self.hidden_size:
            self._build(self.hidden_size)

    def validate(self):
        super().validate()
        if self.hidden_size < 0 or not 0 <= self.dropout < 1 or self.l1_u < 0 or self.l1_d < 0:
            raise ConfigError("SparsePO: need hidden_size >= 0, 0 <= dropout < 1, l1_u >= 0, l1_d >= 0.")

    def _build(self, H: int, device=None):
        names = [n for n, on in (("u", self.mask_on_reward), ("d", self.mask_on_kl)) if on]
        for name in names[: 2 if self.independent else 1]:
            self.nets[name] = _mask_net(H, self.dropout).to(device)

    def token_masks(self, hidden: torch.Tensor, kind: str) -> torch.Tensor:
        """[B, T] mask of kind 'u' (reward) or 'd' (KL) from hidden states [B, T, H]."""
        if not len(self.nets):
            self._build(hidden.shape[-1], hidden.device)
        net = self.nets[kind] if kind in self.nets else next(iter(self.nets.values()))
        if net[0].normalized_shape[0] != hidden.shape[-1]:
            raise ConfigError(f"SparsePO: hidden_size is {net[0].normalized_shape[0]} but the batch's hidden "
                              f"states have H={hidden.shape[-1]}; set hidden_size to the model's hidden size.")
        return net(hidden.detach().to(net[1].weight.dtype)).squeeze(-1)

    def compute(self, batch: PairBatch) -> ObjectiveOutput:
        masks = {}
        for side in ("chosen", "rejected"):
            hidden = batch.extra(f"{side}_hidden", "SparsePO")
            for kind, on in (("u", self.mask_on_reward), ("d", self.mask_on_kl)):
                masks[f"{kind}_{side}"] = self.token_masks(hidden, kind) if on else None
        common = self.mask_on_reward and self.mask_on_kl and not self.independent
        scale = 0.5 if common else 1.0
        return sparse_pair_loss(batch, self.beta, masks, scale * self.l1_u, scale * self.l1_d, "SparsePO")

    @classmethod
    def example_extras(cls, batch) -> dict:
        g = torch.Generator().manual_seed(0)
        out = {}
        for side in ("chosen", "rejected"):
            shape = getattr(batch, f"policy_{side}").token_logps.shape
            out[f"{side}_token_kl"] = torch.rand(shape, generator=g, dtype=torch.float64) * 0.1
            out[f"{side}_hidden"] = torch.randn(*shape, 8, generator=g, dtype=torch.float64)
        return out


OBJECTIVE = SparsePO
