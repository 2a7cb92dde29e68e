#!/usr/bin/env python
"""Run preflab's offline DPO Trainer on the shared benchmark fixture (CPU, fp32) and print one JSON result line.

Same arguments, token accounting and JSON fields as the TRL runner (common.py in the shared bench folder, found
at $PREFBENCH_DIR or ../shared/bench next to this repository). What is held equal to trl_dpo.py:
  * the pairs of train.jsonl in file order: optimizer step i uses rows [i*B*GA, (i+1)*B*GA) (wrapping around);
  * the token ids: BOS + prompt, and response + EOS, exactly as TRL 1.16 tokenizes them (checked row by row);
  * the model (a fresh load of the fixture, fp32) and the reference (a frozen copy of the same weights);
  * AdamW (betas 0.9/0.999, eps 1e-8, no weight decay, `--lr`), linear decay to 0 without warmup, clipping at 1.0;
  * the loss (`--loss-type`, `--beta`), reported per micro-batch as the mean over its pairs, before the update.
Timed region: first optimizer step begin -> last optimizer step end (the batch collation is inside it). Model
loading and tokenization are `setup_s`; the reference precompute (`--precompute-ref`) is `ref_precompute_s`,
computed afresh in a temporary cache folder unless --reuse-ref-cache is given.

Example:
  python benchmarks/dpo_throughput.py --steps 20 --batch-size 4                   # reference forward every step
  python benchmarks/dpo_throughput.py --steps 20 --batch-size 4 --precompute-ref  # reference log-probs cached
  python benchmarks/dpo_throughput.py --layout padded                              # the baseline layout
"""
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(os.environ.get("PREFBENCH_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "bench")
sys.path.insert(0, str(BENCH))
import common  # noqa: E402


def trl_token_ids(rows, tokenizer):
    """(prompt_ids, chosen_ids, rejected_ids) per row as TRL 1.16 builds them for text rows: EOS text appended to
    each response, prompt and prompt+response tokenized with special tokens, the completion after the prompt."""
    out = []
    for row in rows:
        prompt = tokenizer(row["prompt"])["input_ids"]
        chosen = tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"]
        rejected = tokenizer(row["prompt"] + row["rejected"] + tokenizer.eos_token)["input_ids"]
        if chosen[:len(prompt)] != prompt or rejected[:len(prompt)] != prompt:
            raise SystemExit("fixture prompt is not a token prefix of prompt+response; rebuild the fixture")
        out.append((prompt, chosen[len(prompt):], rejected[len(prompt):]))
    return out


def tokenized_pairs(fixture, tokenizer):
    """preflab's own tokenization of the fixture, replaced by TRL's ids where they differ (counted)."""
    from preflab.data.rows import load_rows
    from preflab.data.tokenize import TokenizedPair, tokenize_pairs

    examples, _ = load_rows(os.path.join(fixture, "train.jsonl"), kind="pairwise")
    pairs, _ = tokenize_pairs(examples, tokenizer, max_length=None)
    reference = trl_token_ids(common.load_pairs(fixture), tokenizer)
    differ = 0
    out = []
    for pair, (p, c, r) in zip(pairs, reference, strict=True):
        if (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids) != (p, c, r):
            differ += 1
            pair = TokenizedPair(pair.row_id, p, c, r, pair.extras)
        out.append(pair)
    return out, differ


def main():
    ap = common.make_parser(__doc__)
    ap.add_argument("--layout", default="prefix_shared", choices=["prefix_shared", "padded", "packed",
                                                                   "prefix_packed"])
    ap.add_argument("--reuse-ref-cache", action="store_true", help="keep the reference cache in the default folder")
    ap.add_argument("--torch-compile", action="store_true")
    args = ap.parse_args()
    common.setup_env(args.threads)
    if args.wait_idle:
        common.wait_idle(args.wait_idle)

    import torch
    import transformers

    import preflab
    import preflab.loops.driver as driver
    import preflab.loops.offline as offline
    from preflab.config import config_from_dict
    from preflab.loops.batches import BatchPlan
    from preflab.models.load import frozen_copy, load_causal_lm, load_tokenizer

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    timer = common.StepTimer()
    out_dir = tempfile.mkdtemp(prefix="preflab-dpo-bench-")
    if not args.reuse_ref_cache:
        os.environ["PREFLAB_CACHE_DIR"] = os.path.join(out_dir, "cache")

    class FileOrder(BatchPlan):
        """Global step s reads rows [s*G, (s+1)*G) of the file, wrapping around (common.py, rule 3)."""

        def indices(self, step, rank):
            g, b = self.global_batch, self.per_device
            window = [(step * g + k) % self.num_rows for k in range(g)]
            return [window[(m * self.world + rank) * b:(m * self.world + rank + 1) * b] for m in range(self.grad_accum)]

    class BenchTrainer(offline.Trainer):
        def micro_batches(self, step):  # the batch collation is inside the timed step
            timer.begin_step()
            return super().micro_batches(step)

        def forward(self, mb):
            out = super().forward(mb)
            if self.policy.training:
                timer.add_microbatch(mb.num_tokens, mb.layout.input_ids.numel(), float(out.loss.detach()))
            return out

    original_step = driver.optimizer_step

    def timed_step(*a, **kw):
        result = original_step(*a, **kw)
        timer.end_step()
        return result

    driver.optimizer_step = timed_step

    timer.calibrate(torch)  # machine speed right before the run (again after it)
    t_setup = time.perf_counter()
    model_dir = os.path.join(args.fixture, "model")
    tokenizer = load_tokenizer(model_dir)
    pairs, differ = tokenized_pairs(args.fixture, tokenizer)
    cfg = config_from_dict(dict(
        model_name_or_path=model_dir, dataset_name=os.path.join(args.fixture, "train.jsonl"), output_dir=out_dir,
        max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, loss_type=args.loss_type, beta=args.beta,
        max_length=args.max_length, precompute_ref_log_probs=args.precompute_ref,
        gradient_checkpointing=args.grad_ckpt, torch_compile=args.torch_compile, layout=args.layout,
        seed=args.seed, use_cpu=True, logging_steps=args.steps, disable_tqdm=True, report_to="none"))
    if args.max_length is not None:
        raise SystemExit("--max-length: truncate as TRL does before comparing; this runner feeds whole pairs")
    policy = load_causal_lm(model_dir, dtype="float32")
    ref = frozen_copy(policy)
    trainer = BenchTrainer(cfg, policy=policy, ref=ref, tokenizer=tokenizer, train_data=pairs)
    del ref  # the trainer holds it; with --precompute-ref it is released after the precompute
    trainer.plan = FileOrder(len(pairs), args.batch_size, 1, args.grad_accum, args.seed)
    setup_s = time.perf_counter() - t_setup

    summary = trainer.train()
    timer.calibrate(torch)
    timer.ref_precompute_s = (trainer.ref_cache_info or {}).get("seconds")

    res = common.result(
        args,
        timer,
        library="preflab",
        library_version=getattr(preflab, "__version__", "dev"),
        torch_version=torch.__version__,
        optim="adamw_torch_fused",
        padding_free_effective=trainer.layout in ("packed", "prefix_packed"),
        setup_s=round(setup_s, 3),
        transformers_version=transformers.__version__,
        attn_implementation=policy.config._attn_implementation,
        layout=trainer.layout,
        token_ids_replaced=differ,
        preflab_num_tokens=summary["final_metrics"].get("num_tokens"),
        reference_cache=summary.get("reference_cache"),
    )
    common.emit(res, args.out)
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
