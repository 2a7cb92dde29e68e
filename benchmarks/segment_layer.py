#!/usr/bin/env python
"""One attention layer's forward + backward CPU time on the benchmark fixture's prefix-shared batches: the dense
mask (sdpa with the layout's [R, 1, T, T] mask), segment attention with every response in one call (MAX_PIECES 1:
the shape of the segment path before the pieces) and with the default pieces (preflab.models.segment_attention).

Batches: the fixture's pairs in file order, `--batches` micro-batches of 4 (prefix_shared layout); query / key /
value: random, with the fixture model's heads (6 query, 2 key/value heads of 64). Each setting runs once per batch
per repeat, settings interleaved; printed: per repeat, the sum over batches of the thread CPU time (1 thread).

  PREFBENCH_DIR=../shared/bench python benchmarks/segment_layer.py --repeats 3
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", default="/tmp/prefbench-fixture")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import preflab.models.segment_attention as seg
    from dpo_throughput import tokenized_pairs
    from preflab.data.prefix import prefix_shared
    from preflab.models.load import load_tokenizer

    pairs, _ = tokenized_pairs(args.fixture, load_tokenizer(os.path.join(args.fixture, "model")))
    heads, kv_heads, dim = 6, 2, 64
    default_pieces = seg.MAX_PIECES

    def dense(q, k, v, layout, plan):
        mask = torch.where(layout.attention_mask, 0.0, float("-inf"))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dim ** -0.5,
                                                                enable_gqa=True)

    def segments(q, k, v, layout, plan):
        return seg.segment_attention_forward(None, q, k, v, None, scaling=dim ** -0.5, segments=plan)[0]

    settings = {"dense mask": (dense, default_pieces), "segments, 1 piece": (segments, 1),
                f"segments, {default_pieces} pieces": (segments, default_pieces)}
    for repeat in range(args.repeats):
        totals = dict.fromkeys(settings, 0.0)
        for b in range(args.batches):
            batch = pairs[4 * b:4 * b + 4]
            for name, (attend, pieces) in settings.items():
                seg.MAX_PIECES = pieces
                layout = prefix_shared(batch, pad_id=0)
                rows, width = layout.input_ids.shape
                torch.manual_seed(b)
                q, k, v = (torch.randn(rows, width, h, dim).transpose(1, 2).requires_grad_()
                           for h in (heads, kv_heads, kv_heads))
                start = time.thread_time()
                attend(q, k, v, layout, layout.segments).sum().backward()
                totals[name] += time.thread_time() - start
        seg.MAX_PIECES = default_pieces
        print(f"repeat {repeat + 1}: " + ", ".join(f"{name} {t * 1e3:.0f} ms" for name, t in totals.items()),
              flush=True)


if __name__ == "__main__":
    main()
