"""`preflab train` with the PRO toy's echo rewards replaced by a dense one (the share of the completion's letters in
the wanted case), so a tiny run's GRPO groups get different rewards: run under `accelerate launch` by
tests/tools/test_recipe_processes.py (and `dense_echo` in-process there)."""
import sys

from preflab.online import pro_recipe


def dense_echo(prompts, completions, upper: bool) -> list[float]:
    """The share of each completion's letters in capitals (upper) or lower case."""
    out = []
    for c in completions:
        letters = [ch for ch in c if ch.isalpha()]
        out.append(sum(ch.isupper() == upper for ch in letters) / len(letters) if letters else 0.0)
    return out


if __name__ == "__main__":
    from preflab.cli import main

    pro_recipe._echo = dense_echo
    sys.exit(main(sys.argv[1:]))
