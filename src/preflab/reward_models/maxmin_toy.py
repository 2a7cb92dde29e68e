"""MaxMin-RLHF's toy (models-and-loops.md #35, demo): two user groups on the demo's echo task disagree.

    majority (80% of users)  "loud":  the demo's true reward, the prompt words echoed in CAPITALS
    minority (20% of users)  "quiet": the words echoed in lower case
    r_loud(x, y)  = (1/n) sum_i 1[y_i == upper(x_i)]      r_quiet(x, y) = (1/n) sum_i 1[y_i == lower(x_i)]
(0 when the word count is wrong), so a response good for one group is bad for the other word by word.

`toy_rows` writes user-labelled pairs {prompt, chosen, rejected, user_id, group} over the demo's training prompts:
each user compares two responses (loud, quiet, word-by-word mixed case, or one with a wrong word) and prefers the one
its group's reward ranks higher (ties dropped). `group_true_rewards` scores a policy's greedy answers on held-out
prompts under both rewards. examples/online/maxmin.yaml and docs/online.md give the commands; the numbers are there.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from preflab.demo.task import WORDS, make_splits, prompt_words, true_reward

GROUPS = ("loud", "quiet")


def quiet_reward(prompt: str, response: str) -> float:
    """The minority's true reward: the fraction of prompt words echoed in place in lower case."""
    want, got = [w.lower() for w in prompt_words(prompt)], response.split()
    if len(got) != len(want):
        return 0.0
    return sum(a == b for a, b in zip(got, want)) / len(want)


def group_reward(group: str, prompt: str, response: str) -> float:
    return true_reward(prompt, response) if group == "loud" else quiet_reward(prompt, response)


def _candidates(words: list[str], rng: random.Random) -> list[str]:
    mixed = " ".join(w.upper() if rng.random() < 0.5 else w for w in words)
    wrong = list(words)
    wrong[rng.randrange(len(wrong))] = rng.choice([w for w in WORDS if w not in words])
    loud_wrong = " ".join(w.upper() for w in wrong)
    return [" ".join(w.upper() for w in words), " ".join(words), mixed, loud_wrong, " ".join(wrong)]


def toy_rows(seed: int = 0, users: int = 10, minority: int = 2, pairs_per_user: int = 12) -> list[dict]:
    """Pair rows of `users` users, the last `minority` of a seeded shuffle in the quiet group, the rest loud."""
    rng = random.Random(seed)
    _, pair_rows, _ = make_splits(0)
    prompts = [r["prompt"] for r in pair_rows]
    groups = ["loud"] * (users - minority) + ["quiet"] * minority
    rng.shuffle(groups)
    rows = []
    for u, group in enumerate(groups):
        made = 0
        while made < pairs_per_user:
            prompt = rng.choice(prompts)
            a, b = rng.sample(_candidates(prompt_words(prompt.strip()), rng), 2)
            ra, rb = group_reward(group, prompt, a), group_reward(group, prompt, b)
            if ra == rb:
                continue
            chosen, rejected = (a, b) if ra > rb else (b, a)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "user_id": f"user{u}",
                         "group": group})
            made += 1
    return rows


def write_toy_rows(path: str | Path, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in toy_rows(**kwargs)))
    return path


def group_true_rewards(model, tokenizer, prompts: list[str]) -> dict:
    """{"loud": mean r_loud, "quiet": mean r_quiet, "min": their min} of the greedy answers on `prompts`."""
    from preflab.demo.run import heldout_reward

    _, examples = heldout_reward(model, tokenizer, prompts)
    out = {g: sum(group_reward(g, e["prompt"], e["response"]) for e in examples) / len(examples) for g in GROUPS}
    return {**out, "min": min(out.values()), "examples": examples[:3]}


def policy_group_rewards(policy: str, seed: int = 0, prompts: int = 64) -> dict:
    """group_true_rewards of a policy: builtin:demo-sft or an online run's output_dir, on the demo's held-out
    prompts (the online demo's heldout_prompts, 64 by default)."""
    from preflab.demo.sft_model import demo_sft
    from preflab.eval.loading import load_for_eval  # builtin:demo-sft, run directories and checkpoints
    from preflab.models.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer("char")
    model, _ = load_for_eval(policy, tokenizer=tokenizer, seed=seed, demo_sft=demo_sft)
    return group_true_rewards(model, tokenizer, make_splits(0)[2][:prompts])


def main(argv: list[str] | None = None) -> int:
    """python -m preflab.reward_models.maxmin_toy data PATH  |  rewards POLICY [POLICY ...]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m preflab.reward_models.maxmin_toy", description=__doc__.split(
        "\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="write the user-labelled pair rows")
    data.add_argument("path")
    data.add_argument("--users", type=int, default=20)
    data.add_argument("--minority", type=int, default=4)
    data.add_argument("--pairs-per-user", type=int, default=12)
    rewards = sub.add_parser("rewards", help="each group's true reward of policies' greedy held-out answers")
    rewards.add_argument("policies", nargs="+", help="builtin:demo-sft or online output_dirs")
    args = parser.parse_args(argv)
    if args.command == "data":
        print(write_toy_rows(args.path, users=args.users, minority=args.minority, pairs_per_user=args.pairs_per_user))
        return 0
    for policy in args.policies:
        result = policy_group_rewards(policy)
        print(json.dumps({"policy": policy, **{k: round(result[k], 4) for k in ("loud", "quiet", "min")}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
