"""Cost of TRL's DPO token metrics (LogProbScorer want_token_stats): scorer forward+backward (or, with "step", a
whole DPO step: reference forward, policy forward+backward, AdamW) on the bench fixture's shape (Llama, hidden 384,
6 layers, intermediate 1024, random weights), 4 pairs of random tokens, prefix-shared layout, one thread; with and
without the statistics, interleaved repeats, median time.

    python benchmarks/token_metrics_overhead.py VOCAB REPEATS [step|compile]     # e.g. 8192 9, 131072 3 step

"compile": the scorer under torch.compile (inductor, preflab.scoring.compile.compile_scorer), forward+backward, after
one call of each kind (two graphs): what a compiled run pays for computing the statistics on every step.
"""
import random
import statistics
import sys
import time
import torch
from types import SimpleNamespace
from transformers import LlamaConfig, LlamaForCausalLM
from preflab.data.prefix import prefix_shared
from preflab.scoring.lm import LogProbScorer

torch.set_num_threads(1)
vocab = int(sys.argv[1]) if len(sys.argv) > 1 else 8192
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 7
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=vocab, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                  num_attention_heads=6, num_key_value_heads=6, max_position_embeddings=1024)
model = LlamaForCausalLM(cfg)
rng = random.Random(0)
draw = lambda k: [rng.randrange(3, vocab) for _ in range(k)]
pairs = [SimpleNamespace(prompt_ids=[1] + draw(rng.randrange(40, 120)), chosen_ids=draw(rng.randrange(40, 160)) + [2],
                         rejected_ids=draw(rng.randrange(40, 160)) + [2]) for _ in range(4)]
layout = prefix_shared(pairs, pad_id=0)
scorer = LogProbScorer(model)
full = len(sys.argv) > 3 and sys.argv[3] == "step"
if len(sys.argv) > 3 and sys.argv[3] == "compile":
    from preflab.scoring.compile import compile_scorer
    scorer = compile_scorer(scorer, SimpleNamespace(torch_compile_backend=None, torch_compile_mode=None))
if full:  # a whole DPO step: reference forward (no grad), policy forward+backward, AdamW
    import copy
    ref = LogProbScorer(copy.deepcopy(model).requires_grad_(False))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
def once(flag):
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    if full:
        with torch.no_grad():
            r = ref(layout).token_logps.sum(-1)
    s = scorer(layout, want_token_stats=flag)
    s.token_logps.sum().backward()
    if full:
        opt.step()
    return time.perf_counter() - t
once(False); once(True)
times = {False: [], True: []}
for _ in range(reps):
    for flag in (False, True):
        times[flag].append(once(flag))
a, b = statistics.median(times[False]), statistics.median(times[True])
print(f"vocab {vocab} response tokens {int(layout.response_mask.sum())}: without {a:.4f}s with {b:.4f}s ratio {b/a:.4f}"
      f" (min ratio {min(times[True])/min(times[False]):.4f})")
