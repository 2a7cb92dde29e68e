"""Self-NPO: data-free negative preference optimization by truncated diffusion fine-tuning (regression part).

"Self-NPO: Data-Free Diffusion Model Enhancement via Truncated Diffusion Fine-Tuning" (Wang et al., 2025; released
G-U-N/Diffusion-NPO Self-NPO/train.py; methods/reasoning-multimodal-diffusion.md §4). The student, from a re-noised
state x_s, regresses the EMA teacher's unconditional x0-prediction at the end of a <= 5-step truncated DDIM rollout:

    huber: L = mean_d( sqrt((x0_theta - x0_tgt)^2 + c^2) - c ),  c = 0.001 (latent units)
    l2:    L = mean_d( (x0_theta - x0_tgt)^2 )

Batch: an UnpairedBatch whose `policy` holds the student's x0_theta flattened to [B, D] (as "token" values, mask all
True) and whose `ref` holds the teacher target x0_tgt [B, D] (built by preflab.diffusion.self_npo.self_npo_batch);
`label` is not read (every example is a regression target). The trained model is the *negative* model of
`preflab.diffusion.guidance.npo_guidance`.

Deviation from the paper: none in the loss. From the released code: the target is always evaluated at the truncated
state x_e (the release takes it from the previous state when every sample runs out of grid); save the trained model
as full weights or a task vector (the release calls get_peft_model_state_dict without an adapter).
"""
from dataclasses import dataclass

from preflab.objectives._diffusion_loss import pseudo_huber
from preflab.errors import ConfigError
from preflab.objectives.base import Objective, ObjectiveOutput, UnpairedBatch, as_loss_dtype


@dataclass(frozen=True)
class SelfNPO(Objective):
    loss_type: str = "huber"  # huber | l2 (train.sh uses huber)
    huber_c: float = 0.001    # pseudo-Huber c, in latent units (x 0.18215 space for SD)

    batch_type = UnpairedBatch
    modality = "diffusion"  # scored by preflab.scoring.diffusion (-MSE), not LM log-probs
    paper = "Wang et al. 2025, Self-NPO: Data-Free Diffusion Model Enhancement via Truncated Diffusion Fine-Tuning"
    checked_against = ("official code: G-U-N/Diffusion-NPO@a14f1db Self-NPO/train.py (pseudo-Huber c = 0.001 on x0; "
                       "train.sh loss_type=huber), re-read 2026-12")
    tags = {"data": ("data-free", "diffusion"), "framework": ("offline",), "constraint": ("reference",),
            "property": ("negative",)}

    def validate(self):
        super().validate()
        if self.loss_type not in ("huber", "l2") or not self.huber_c > 0:
            raise ConfigError(f"SelfNPO: loss_type must be 'huber' or 'l2' and huber_c > 0; got {self.loss_type!r}, "
                              f"{self.huber_c}.")

    def compute(self, batch: UnpairedBatch) -> ObjectiveOutput:
        student, target = as_loss_dtype(batch.policy.token_logps), as_loss_dtype(batch.ref.token_logps)
        mask = (batch.policy.mask & batch.ref.mask).to(student.dtype)
        if self.loss_type == "huber":
            dist = pseudo_huber(student, target, self.huber_c)
        else:
            dist = (student - target) ** 2
        losses = (dist * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        rmse = (((student - target).detach() ** 2 * mask).sum(-1) / mask.sum(-1).clamp_min(1)).sqrt()
        return ObjectiveOutput(losses.mean(), losses, {"x0/rmse": rmse.mean()})


OBJECTIVE = SelfNPO
