"""The shipped Vision-R1 recipe (examples/vlm/vision_r1.yaml) trains the released trainer's loss.

jefferyZhan/Griffon@499aa8b `Vision-R1/vision_r1/trainer/qwen_trainer.py::compute_loss` (read in paper audit 9):
A = (R - mean_g R) / (std_g R + 1e-4) (torch's unbiased std), KL3 = exp(lp_ref - lp) - (lp_ref - lp) - 1,
per-token loss -(exp(lp - sg(lp)) A - beta KL3), the mean over a completion's tokens, then over completions; beta
0.04 and G = 4 from `run_qwen_vision_r1.sh` / TRL 0.14. TRL 1.16's default use_bias_correction_kl multiplies KL3
by the importance ratio, which adds KL3 grad lp to the gradient: the recipe turns it off."""
import dataclasses

import torch

from preflab.config import load_config
from preflab.objectives import ListBatch, SequenceLogps


def _released_loss(lp, lp_ref, mask, rewards, beta):
    """A transcription of the released compute_loss from the per-token log-probs on (one prompt, G completions)."""
    mean, std = rewards.mean(), rewards.std()
    adv = (rewards - mean) / (std + 1e-4)
    kl = torch.exp(lp_ref - lp) - (lp_ref - lp) - 1
    per_token = -(torch.exp(lp - lp.detach()) * adv.unsqueeze(1) - beta * kl)
    return ((per_token * mask).sum(1) / mask.sum(1)).mean()


def test_the_shipped_recipe_equals_the_released_loss_and_gradient():
    cfg = load_config("examples/vlm/vision_r1.yaml")
    assert (cfg.num_generations, cfg.temperature, cfg.beta) == (4, 1.0, 0.04)
    objective = cfg.objective()
    lp_values = torch.tensor([[-0.3, -1.2, -0.7], [-2.0, -0.1, 0.0], [-0.9, -0.4, -1.5], [-0.2, -0.6, -0.8]],
                             dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    lp_values = lp_values * mask
    lp_ref = torch.tensor([[-0.5, -1.0, -0.9], [-1.5, -0.3, 0.0], [-1.1, -0.2, -1.0], [-0.4, 0.0, 0.0]],
                          dtype=torch.float64) * mask
    rewards = torch.tensor([2.3, 1.5, 3.0, 0.0], dtype=torch.float64)   # R = R_P + R_fmt + R_R of 4 completions

    ours = lp_values.clone().unsqueeze(0).requires_grad_(True)
    out = objective(ListBatch(SequenceLogps(ours, mask.unsqueeze(0)), rewards.unsqueeze(0),
                              ref=SequenceLogps(lp_ref.unsqueeze(0), mask.unsqueeze(0))))
    out.loss.backward()

    theirs = lp_values.clone().requires_grad_(True)
    released = _released_loss(theirs, lp_ref, mask.double(), rewards, 0.04)
    released.backward()
    torch.testing.assert_close(out.loss, released, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.grad[0] * mask, theirs.grad * mask, rtol=0, atol=1e-12)

    # TRL 1.16's default (KL3 times the ratio) would give another gradient on these log-probs: the option matters
    corrected = dataclasses.replace(objective, use_bias_correction_kl=True)
    other = lp_values.clone().unsqueeze(0).requires_grad_(True)
    corrected(ListBatch(SequenceLogps(other, mask.unsqueeze(0)), rewards.unsqueeze(0),
                        ref=SequenceLogps(lp_ref.unsqueeze(0), mask.unsqueeze(0)))).loss.backward()
    assert (other.grad[0] * mask - theirs.grad * mask).abs().max() > 1e-4


def test_the_python_api_takes_the_released_kl_term_unless_told_otherwise():
    """vision_grpo_train's options (preflab.online.api.vision_grpo_options): loss_type grpo, beta 0.04 and
    use_bias_correction_kl false, as the shipped YAML; a caller's objective_params still win."""
    from preflab.config import config_from_dict
    from preflab.online.api import vision_grpo_options

    def objective(**options):
        raw = vision_grpo_options(options)
        raw.update(online_task="vision_dataset", model_name_or_path="(in memory)", dataset_name="(in memory)")
        return config_from_dict(raw).objective()

    default = objective()
    assert (default.loss_type, default.beta, default.use_bias_correction_kl) == ("grpo", 0.04, False)
    assert objective(objective_params={"use_bias_correction_kl": True}).use_bias_correction_kl is True
    assert objective(beta=0.0).beta == 0.0
