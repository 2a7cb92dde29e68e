"""PPD: personalized preference fine-tuning -- Diffusion-DPO conditioned on a user embedding.

"Personalized Preference Fine-tuning of Diffusion Models" (Dang et al., 2025; methods/reasoning-multimodal-diffusion.md
§28; no code released). A VLM turns a few of user u's labelled pairs into an embedding e_u, fed to the UNet through a
decoupled cross-attention branch (preflab.diffusion.user_branch):

    h <- Attn(Q, K_c, V_c) + lambda * Attn(Q, W_K^u P e_u, W_V^u P e_u)     (W_V^u zero-initialised)
    L = -log sigmoid( -(beta/2) * (Delta_theta(e_u) - Delta_ref) )          (f_theta(x_t, t, c, e_u))

The reference is the base UNet without the user branch, equal to the policy at init (zero W_V^u), so the first loss
is log 2. The loss is Diffusion-DPO's, per pair, so users may be mixed within a batch.

Audit 2026-12: a third-party paper note (CVPR 2025) restates the objective as the user-conditioned Diffusion-DPO loss
-log sigmoid(-beta T omega(lambda_t) Delta) with eps_theta(x_t, c, u, t), user embeddings from LLaVA-OneVision hidden
states of N = 4 labelled pairs, IP-Adapter-style decoupled cross-attention Z' = Attn(Q, K, V) + Attn(Q, K', V')
with only W_k', W_v' trained (Stable Cascade stage C), and user-embedding dropout in training -- the form above.

Audit 8 (2026-12): the authors' release (Asap7772/Personalized-Text-To-Image-Diffusion, read as the first three
commits of its copy RoyceCho1/PPD, fe3835f) holds stage 1 only -- the user embeddings, a user classifier and win-rate
evaluations; no diffusion training code, so this loss and beta are still unchecked against code. Stage 1
(`llava_embeddings/pick_a_pick_user_emb.py`): LLaVA-OneVision (qwen2-7b-ov-chat) is shown N = 4 of a user's Pick-a-Pic
pairs (caption, preferred image, dispreferred image), asked to describe each pair and summarise a user profile, and
decodes greedily; the embedding is the hidden state of the last decoding step at the embedding layer and at every
decoder layer, one [n_layers + 1, d] matrix per (user, 4-pair subset) (up to 20 subsets per user in `gen_emb.sh`);
the user classifier reads its last row. preflab takes such a matrix as the [L_u, d_u] of `user_embeddings`, and a
user's subsets as one [S, L_u, d_u] stack: a training pair reads subset ppd_subset(seed, epoch, position, S) of its
user, drawn anew each epoch (methods §28: "resample the few-shot subset each epoch as augmentation";
preflab.loops.diffusion), evaluation reads subset 0. preflab standardises each row (its choice: the release does not
normalise).

Deviation from the paper: beta = 5000 is Diffusion-DPO's default, not a value from the paper (not in the note); the
lambda scale on the user branch is preflab's (1 = the note's plain sum); user-embedding dropout belongs to the
run, not this loss (`user_embedding_dropout`, zeroing the embedding as IP-Adapter does; the note gives no rate).
"""
from dataclasses import dataclass

from preflab.objectives.diffusion_dpo import DiffusionDPO


@dataclass(frozen=True)
class PPD(DiffusionDPO):
    beta: float = 5000.0  # unverified for PPD; Diffusion-DPO's SD default, salesforce convention

    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = "Dang et al. 2025, Personalized Preference Fine-tuning of Diffusion Models (PPD)"
    checked_against = ("3rd-party: a CVPR 2025 paper note (user-conditioned Diffusion-DPO, IP-Adapter-style decoupled "
                       "cross-attention); the authors' release has the user-embedding stage only (no training code), "
                       "beta unverified")


OBJECTIVE = PPD
