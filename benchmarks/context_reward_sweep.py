"""Does a context-aware reward model learn to reverse its preference with the context? Trains
`preflab train task=reward` on a toy where every pair appears under two contexts with opposite labels, then
`evaluate_reward_model` on 32 held-out prompts (64 rows): accuracy, reversal accuracy, accuracy per context.

Toys: `brevity` ("prefer brevity" / "prefer detail": a 1-word vs a 5-7-word response, 3-word prompt), `loud`
("prefer loud" / "prefer quiet": the same 3 words in capitals with "!" vs lower case with "."), `loud_longprompt`
(loud with a 30-word prompt: ~100 tokens between the context and the response). 96 training prompts (192 rows),
batch 16, constant lr, max_length 128, one thread.

    python benchmarks/context_reward_sweep.py TOY,LR,STEPS[,MODEL[,KEY=VALUE...]] ...
    python benchmarks/context_reward_sweep.py loud_longprompt,1e-3,120 loud_longprompt,3e-3,60,builtin:tiny-llama,seed=1
"""
import contextlib
import io
import json
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = "the cat sat on mat dog ran to park what is two plus three answer five please how many legs spider".split()


def brevity(n: int, seed: int, prompt_words: int = 3) -> list[dict]:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(prompt_words))
        short = " " + rng.choice(WORDS)
        long = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randrange(5, 8)))
        rows += [{"prompt": prompt, "context": "prefer brevity", "chosen": short, "rejected": long},
                 {"prompt": prompt, "context": "prefer detail", "chosen": long, "rejected": short}]
    return rows


def loud(n: int, seed: int, prompt_words: int = 3) -> list[dict]:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(prompt_words))
        words = [rng.choice(WORDS) for _ in range(3)]
        shout, calm = " " + " ".join(w.upper() for w in words) + "!", " " + " ".join(words) + "."
        rows += [{"prompt": prompt, "context": "prefer loud", "chosen": shout, "rejected": calm},
                 {"prompt": prompt, "context": "prefer quiet", "chosen": calm, "rejected": shout}]
    return rows


TOYS = {"brevity": brevity, "loud": loud, "loud_longprompt": lambda n, seed: loud(n, seed, prompt_words=30)}


def run(toy: str, lr: float, steps: int, model: str = "builtin:tiny-llama", extra: tuple = ()) -> dict:
    from preflab.cli import main  # here: `--help` and the spec check need neither torch nor transformers
    from preflab.reward_models.eval import evaluate_reward_model

    out = Path(tempfile.mkdtemp(prefix="ctx-sweep-"))
    data = out / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in TOYS[toy](96, 0)))
    start = time.time()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main(["train", "task=reward", f"model_name_or_path={model}", f"dataset_name={data}",
                   f"output_dir={out / 'run'}", f"learning_rate={lr}", "per_device_train_batch_size=16",
                   f"max_steps={steps}", f"logging_steps={steps}", "lr_scheduler_type=constant", "max_length=128",
                   "disable_tqdm=true", "use_cpu=true", *extra])
    if rc != 0:
        raise SystemExit(f"training failed (exit {rc}): {toy} {lr} {steps} {model} {extra}")
    result = evaluate_reward_model(str(out / "run"), TOYS[toy](32, 1))
    per_context = {k: round(v["accuracy"], 2) for k, v in result["per_context"].items()}
    return {"toy": toy, "model": model, "lr": lr, "steps": steps, "extra": list(extra),
            "accuracy": round(result["accuracy"], 2), "reversal_accuracy": round(result["reversal_accuracy"], 2),
            "per_context": per_context, "train_seconds": round(time.time() - start, 1)}


USAGE = ("usage: python benchmarks/context_reward_sweep.py TOY,LR,STEPS[,MODEL[,KEY=VALUE...]] ...  (TOY: "
         f"{' | '.join(TOYS)}; e.g. loud_longprompt,1e-3,120)")


def parse_spec(spec: str) -> tuple:
    """`TOY,LR,STEPS[,MODEL[,KEY=VALUE...]]` -> run()'s arguments; a malformed spec is a SystemExit naming it and the
    form (before: a ValueError traceback from the tuple unpacking, also for `--help`)."""
    parts = spec.split(",")
    try:
        toy, lr, steps, *rest = parts
        if toy not in TOYS:
            raise ValueError(f"unknown toy {toy!r}")
        return toy, float(lr), int(steps), (rest[:1] or ["builtin:tiny-llama"])[0], tuple(rest[1:])
    except ValueError as err:
        raise SystemExit(f"context_reward_sweep: {spec!r} is not TOY,LR,STEPS ({err}).\n{USAGE}") from None


if __name__ == "__main__":
    if not sys.argv[1:] or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + USAGE)
        raise SystemExit(0 if sys.argv[1:] else 2)
    specs = [parse_spec(spec) for spec in sys.argv[1:]]  # every spec checked before the first run trains
    import torch

    torch.set_num_threads(1)
    for toy, lr, steps, model, extra in specs:
        print(json.dumps(run(toy, lr, steps, model, extra)), flush=True)
