"""Synthetic reward data with planted structure, shared by the reward tests."""
import random

WORDS = ("the cat sat on mat dog ran to park what is two plus three answer five please how many legs spider "
         "eight").split()


def marker_rows(n: int, seed: int, marker: str = "good") -> list[dict]:
    """Pairs whose chosen response contains `marker` and whose rejected response does not; subsets s1/s2."""
    rng = random.Random(seed)
    words = lambda k: [rng.choice(WORDS) for _ in range(k)]  # noqa: E731
    rows = []
    for i in range(n):
        chosen, rejected = words(rng.randrange(2, 5)), words(rng.randrange(2, 5))
        chosen.insert(rng.randrange(len(chosen) + 1), marker)
        rows.append({"prompt": " ".join(words(rng.randrange(2, 5))), "chosen": " " + " ".join(chosen),
                     "rejected": " " + " ".join(rejected), "subset": "s1" if i % 2 else "s2"})
    return rows


RATED_WORDS = "the cat sat on mat dog ran to park what is two plus three answer five please how many legs spider".split()


def rated_rows(n: int, seed: int, words: list[str] = RATED_WORDS) -> list[dict]:
    """Rated rows for attribute (DPA) reward models: helpfulness = 1 iff the response contains "good"; verbosity =
    number of words / 4."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        response = [rng.choice(words) for _ in range(rng.randrange(1, 8))]
        good = rng.random() < 0.5
        if good:
            response.insert(rng.randrange(len(response) + 1), "good")
        rows.append({"prompt": " ".join(rng.choice(words) for _ in range(3)), "response": " " + " ".join(response),
                     "ratings": {"helpfulness": float(good), "verbosity": len(response) / 4}})
    return rows
