"""PPD: personalized preference fine-tuning -- Diffusion-DPO conditioned on a user embedding.

"Personalized Preference Fine-tuning of Diffusion Models" (Dang et al., 2025; methods/reasoning-multimodal-diffusion.md
§28; no code released). A VLM turns a few of user u's labelled pairs into an embedding e_u, fed to the UNet through a
decoupled cross-attention branch (preflab.diffusion.user_branch):

    h <- Attn(Q, K_c, V_c) + lambda * Attn(Q, W_K^u P e_u, W_V^u P e_u)     (W_V^u zero-initialised)
    L = -log sigmoid( -(beta/2) * (Delta_theta(e_u) - Delta_ref) )          (f_theta(x_t, t, c, e_u))

The reference is the base UNet without the user branch, equal to the policy at init (zero W_V^u), so the first loss
is log 2. The loss is Diffusion-DPO's, per pair, so users may be mixed within a batch.

Deviation from the paper: unverified -- the abstract fixes only VLM embeddings, cross-attention and a DPO objective;
the branch design is IP-Adapter-style (preflab's choice) and beta = 5000 is Diffusion-DPO's default, not the paper's.
"""
from dataclasses import dataclass

from preflab.objectives.diffusion_dpo import DiffusionDPO


@dataclass(frozen=True)
class PPD(DiffusionDPO):
    beta: float = 5000.0  # unverified for PPD; Diffusion-DPO's SD default, salesforce convention

    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = "Dang et al. 2025, Personalized Preference Fine-tuning of Diffusion Models (PPD)"
    checked_against = "unverified: abstract only (no released code); beta = Diffusion-DPO's default"


OBJECTIVE = PPD
