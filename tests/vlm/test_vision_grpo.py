"""Vision-R1 GRPO on a tiny VLM: the GRPO loop's hooks with image prompts, generation and the vision scorer."""
import json

import torch

from preflab.loops.grpo import GRPOConfig, GroupMicroBatch
from preflab.loops.vlm_grpo import VisionGRPOLoop
from preflab.objectives.base import ListBatch, SequenceLogps
from preflab.scoring.vlm import naive_vision_token_logps
from preflab.verifiers.vision_r1 import vision_r1_rewards

from vlm_helpers import image, tiny


def _rows():
    return [{"images": [image((200, 20, 20), seed=i)], "prompt": "Locate the red square. Answer in JSON.",
             "solution": json.dumps([["square", [2, 2, 12, 12]]]), "num_instances": 1} for i in range(2)]


def test_vision_r1_grpo_step_matches_objective_on_full_forward():
    model, processor = tiny("qwen2_vl")
    cfg = GRPOConfig(num_generations=3, prompts_per_step=2, groups_per_micro_batch=2, max_steps=1,
                     max_completion_length=6, learning_rate=1e-3, beta=0.04, temperature=1.0, seed=0)
    loop = VisionGRPOLoop(model, processor, _rows(), vision_r1_rewards(), cfg)
    rows = loop.generation_round()
    assert len(rows) == 1 and loop.global_step == 1
    # the logged rewards are Vision-R1's rewards of the rollout's completions (with the rows' columns)
    fmt = vision_r1_rewards()[0](loop.rollout.prompts(), loop.rollout.completions,
                                 **{k: [c[k] for c in loop.rollout.columns()] for k in ("solution", "num_instances")})
    assert abs(rows[0]["rewards/vision_r1_format/mean"] - sum(fmt) / len(fmt)) < 1e-9
    # every completion is scored with its own prompt's image: the loop's loss equals the GRPO objective on the
    # model's full forward (log_softmax of .logits) over the same sequences
    groups = [0, 1]
    loop.policy.eval()
    out = loop._forward(GroupMicroBatch(groups, [0, 1]))
    layout = loop._layout(groups)
    with torch.no_grad():
        lp = naive_vision_token_logps(model, layout)
    G, width = cfg.num_generations, lp.shape[-1]
    policy = SequenceLogps(lp.view(2, G, width), layout.response_mask.view(2, G, width))
    ref = SequenceLogps(loop._side(loop.ref_logps, groups, width), policy.mask)
    extras = {"advantages": loop.advantages[groups], "tokens_per_prompt": loop.tokens_per_prompt}
    expected = loop.objective(ListBatch(policy, loop.rewards[groups], ref, loop.valid[groups], extras))
    assert torch.allclose(out.loss.detach(), expected.loss, atol=1e-5)
    # the completions were sampled for these images: they end in eos or at the length limit
    assert all(len(c) <= 6 for c in loop.rollout.completion_ids)


def test_image_placeholders_are_never_sampled():
    from preflab.loops.vlm_grpo import placeholder_ids

    model, processor = tiny("qwen2_vl")
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_id in placeholder_ids(model)

    def favour_placeholder(module, args, logits):  # the image placeholder becomes by far the likeliest next token
        logits = logits.clone()
        logits[..., image_id] += 100.0
        return logits

    model.lm_head.register_forward_hook(favour_placeholder)
    cfg = GRPOConfig(num_generations=2, prompts_per_step=2, groups_per_micro_batch=2, max_steps=1,
                     max_completion_length=4, beta=0.0, seed=0)
    loop = VisionGRPOLoop(model, processor, _rows(), vision_r1_rewards(), cfg)
    rollout = loop.sample(loop.rows, seed=0)
    assert not any(image_id in c for c in rollout.completion_ids)
    layout = loop._layout.__func__(type("L", (), {"cfg": cfg, "rollout": rollout, "pad_id": loop.pad_id,
                                                    "device": loop.device})(), [0, 1])
    with torch.no_grad():  # and the rollout scores (it would raise on an image token without image features)
        assert torch.isfinite(loop.scorer(layout).token_logps).all()
