"""A direction-conditioned (DPA) policy on the demo task, for `python -m preflab.online.rps --generator RUN_DIR`.

One offline DPA rejection-sampling round (Wang et al. 2024) from the demo's SFT policy: 8 samples per training
prompt, for each training angle the best under v^T r (`directional_best_of_n`, r = (demo_true_reward,
demo_echo_reward), attribute names true / echo), then SFT on the conditioned rows (DPA's system message with the
angle's integer weights in the prompt).

    python benchmarks/rps_dpa_policy.py OUT ANGLES N_PROMPTS STEPS      # e.g. OUT -30,-15,0,15,30 200 150
    python -m preflab.online.rps --generator OUT/run --target-deg 45 --prompts 64 --seed 0 --output-dir D
"""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from preflab.config import config_from_dict
from preflab.demo.sft_model import demo_sft_model
from preflab.demo.task import make_splits
from preflab.loops.sft import SFTTrainer
from preflab.models.tiny import tiny_tokenizer
from preflab.online.generator import TransformersGenerator
from preflab.online.rps import demo_score
from preflab.reward_models.multi_objective import directional_best_of_n


def main(out: Path, angles: list[float], n_prompts: int, steps: int) -> None:
    torch.set_num_threads(1)
    tok = tiny_tokenizer("char")
    model = demo_sft_model(SimpleNamespace(seed=0), tok).eval()
    prompts = [r["prompt"] for r in make_splits(0)[1]][:n_prompts]
    gen = TransformersGenerator(model, tok.eos_token_id, tok.pad_token_id, 16, 1.0)
    ids = [[tok.bos_token_id] + tok(p + "\n", add_special_tokens=False).input_ids for p in prompts]
    outs = gen.generate(ids, 8, 12345)
    cands = [[tok.decode(o, skip_special_tokens=True) for o in outs[i * 8:(i + 1) * 8]] for i in range(len(prompts))]
    rows = directional_best_of_n(prompts, angles, lambda ps, rs: demo_score(ps[0], rs), candidates=cands,
                                 names=("true", "echo"))
    out.mkdir(parents=True, exist_ok=True)
    data = out / "dpa_rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"], "angle": r["angle"]})
                            + "\n" for r in rows))
    cfg = config_from_dict(dict(task="sft", model_name_or_path="builtin:demo-sft", dataset_name=str(data),
                                output_dir=str(out / "run"), max_length=320, seed=0, logging_steps=20, use_cpu=True,
                                learning_rate=1e-3, per_device_train_batch_size=16, max_steps=steps, warmup_steps=5,
                                lr_scheduler_type="cosine", disable_tqdm=True, on_bad_row="skip"))
    model.train()
    SFTTrainer(cfg, policy=model, ref=None, tokenizer=tok).train()
    print(f"rows {len(rows)}, mean chosen score {sum(r['score'] for r in rows) / len(rows):.4f}, run {out / 'run'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [float(a) for a in sys.argv[2].split(",")], int(sys.argv[3]), int(sys.argv[4]))
