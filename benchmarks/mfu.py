"""Model FLOPs of the timed steps of a benchmark run, for MFU on any model (the fixture's or a make_model.py shape).

The FLOP model of the shared bench's flops_limit.py (the same numerator for every library, a property of the data):

    forward(sequence of s tokens) = 2 * P_matmul * s + n_layers * 2 * s^2 * d_attn     (causal attention)
    step = 3 * forward (policy forward + backward) + 1 * forward (reference; 0 when precomputed)

over the chosen and rejected sequences (BOS + prompt + response + EOS) of the pairs the step consumed: rows of
train.jsonl in file order, step i using rows [i*B*GA, (i+1)*B*GA) wrapped around. P_matmul counts the weights of
every nn.Linear (the LM head included, the input embedding not), from the model's config on the meta device.
MFU = model FLOPs of the timed steps / wall_s / (calib_gflops * 1e9): calib_gflops is the runner's matmul rate
(fp32 2048^2 on CPU; bf16 8192^2 on a GPU: common.gpu_matmul_gflops), measured before and after the run.
"""
import functools
import json
import os


@functools.lru_cache(maxsize=None)
def model_shape(model_dir: str) -> tuple[int, int, int]:
    """(P_matmul, n_layers, d_attn) of the causal LM in model_dir (config.json only; no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return matmul, cfg.num_hidden_layers, cfg.num_attention_heads * head_dim


def timed_flops(result: dict, fixture: str, model_dir: str) -> float:
    """Model FLOPs of the steps a runner's result line timed (its warm-up steps left out)."""
    with open(os.path.join(fixture, "fixture_info.json")) as f:
        info = json.load(f)
    p, c, r = (info["row_tokens"][k] for k in ("prompt", "chosen", "rejected"))
    rows = len(p)
    per_step = result["batch_size"] * result["grad_accum"]
    warmup = min(result.get("warmup_steps") or 0, result["steps"] - 1)
    matmul, layers, d_attn = model_shape(model_dir)
    total = 0
    for i in range(warmup * per_step, result["steps"] * per_step):
        k = i % rows
        for s in (p[k] + c[k] + 2, p[k] + r[k] + 2):
            total += 2 * matmul * s + layers * 2 * s * s * d_attn
    return total * (3 if result["precompute_ref"] else 4)


def mfu(result: dict, fixture: str, model_dir: str) -> float | None:
    """Model-FLOPs utilisation of a result line against its own matmul calibration (None without one)."""
    if not result.get("calib_gflops"):
        return None
    return timed_flops(result, fixture, model_dir) / result["wall_s"] / (result["calib_gflops"] * 1e9)
