#!/usr/bin/env python
"""Run preflab's offline DPO Trainer on the shared benchmark fixture and print one JSON result line.

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

GPU (`--device cuda --bf16 --model DIR --warmup-steps N`, as common.py): the model of DIR (make_model.py) in fp32
master weights under bf16 autocast, fused AdamW, every step timed between torch.cuda.synchronize() calls (the
runner reads each step's losses there, after the step, not inside it); `peak_gpu_mib` is the allocator's peak and
`mfu` the model FLOPs of the timed steps (benchmarks/mfu.py) over the measured bf16 matmul rate. preflab options
for the GPU: --pad-to-multiple-of (row lengths rounded up: shapes repeat), --attn-implementation flex_attention
(the prefix-shared mask as a FlexAttention block mask), --chunk-tokens.

Example:
  python benchmarks/dpo_throughput.py --steps 20 --batch-size 4                   # reference forward every step
  python benchmarks/dpo_throughput.py --steps 20 --batch-size 4 --precompute-ref  # reference log-probs cached
  python benchmarks/dpo_throughput.py --layout padded                              # the baseline layout
  python benchmarks/dpo_throughput.py --device cuda --bf16 --model /tmp/qwen2-0.5b --batch-size 8 --steps 25 \
      --warmup-steps 5 --pad-to-multiple-of 64
"""
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(os.environ.get("PREFBENCH_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "bench")
if not (BENCH / "common.py").is_file():
    sys.exit(f"dpo_throughput.py: the shared bench folder (common.py, make_fixture.py) is not at {BENCH}: set "
             "PREFBENCH_DIR to it (it is shared/bench beside this repository's checkout).")
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
    ap.add_argument("--torch-compile", action="store_true", help="torch_compile: true (inductor; the compile runs "
                    "in step 1, so read steady_tokens_per_s or use --warmup-steps; benchmarks/compile_compare.py)")
    ap.add_argument("--pad-to-multiple-of", type=int, default=None, help="round row lengths up (GPU: 64 or 128)")
    ap.add_argument("--attn-implementation", default=None, choices=["sdpa", "eager", "flex_attention"],
                    help="the model's attention (default: transformers' choice, sdpa)")
    ap.add_argument("--chunk-tokens", type=int, default=None, help="LM-head chunk (default: sized by the device)")
    ap.add_argument("--attention", default="auto", choices=["auto", "segments", "dense"],
                    help="prefix-shared / packed rows: segment attention or the dense 4-D mask (config `attention`)")
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
    cuda = args.device == "cuda"
    timer = common.StepTimer(args.device)
    pending = []  # (tokens, padded tokens, loss tensor) of this step's micro-batches: read after the step
    out_dir = tempfile.mkdtemp(prefix="preflab-dpo-bench-")
    cache_dir = tempfile.mkdtemp(prefix="preflab-dpo-bench-cache-")  # beside output_dir: that must stay empty
    if not args.reuse_ref_cache:
        os.environ["PREFLAB_CACHE_DIR"] = cache_dir

    class FileOrder(BatchPlan):
        """Global step s reads rows [s*G, (s+1)*G) of the file, wrapping around (common.py, rule 3)."""

        def indices(self, step, rank):
            g, b = self.global_batch, self.per_device
            window = [(step * g + k) % self.num_rows for k in range(g)]
            return [window[(m * self.world + rank) * b:(m * self.world + rank + 1) * b] for m in range(self.grad_accum)]

    class BenchTrainer(offline.Trainer):
        def before_train(self):  # the reference precompute runs here; TRL's runs in its __init__, before its
            super().before_train()  # peak-memory reset, so leave ours out of peak_gpu_mib as well
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def micro_batches(self, step):  # the batch collation is inside the timed step
            timer.begin_step()
            return super().micro_batches(step)

        def forward(self, mb):
            out = super().forward(mb)
            if self.policy.training:  # the loss is read after the step (no host sync inside it)
                pending.append((mb.num_tokens, mb.layout.input_ids.numel(), out.loss.detach()))
            return out

    original_step = driver.optimizer_step

    def timed_step(*a, **kw):
        result = original_step(*a, **kw)
        timer.sync()
        for tokens, padded_tokens, loss in pending:
            timer.add_microbatch(tokens, padded_tokens, float(loss))
        pending.clear()
        timer.end_step()
        return result

    driver.optimizer_step = timed_step

    timer.calibrate(torch)  # machine speed right before the run (again after it)
    t_setup = time.perf_counter()
    model_dir = common.model_dir(args)
    tokenizer = load_tokenizer(model_dir)
    pairs, differ = tokenized_pairs(args.fixture, tokenizer)
    cfg = config_from_dict(dict(
        model_name_or_path=model_dir, dataset_name=os.path.join(args.fixture, "train.jsonl"), output_dir=out_dir,
        max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr, lr_scheduler_type="linear",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, loss_type=args.loss_type, beta=args.beta,
        max_length=args.max_length, precompute_ref_log_probs=args.precompute_ref,
        gradient_checkpointing=args.grad_ckpt, torch_compile=args.torch_compile, layout=args.layout,
        seed=args.seed, use_cpu=not cuda, bf16=args.bf16, logging_steps=args.steps, disable_tqdm=True,
        report_to="none", pad_to_multiple_of=args.pad_to_multiple_of, chunk_tokens=args.chunk_tokens,
        attention=args.attention))
    if args.max_length is not None:
        raise SystemExit("--max-length: truncate as TRL does before comparing; this runner feeds whole pairs")
    policy = load_causal_lm(model_dir, dtype="float32")
    if args.attn_implementation:
        policy.set_attn_implementation(args.attn_implementation)
    ref = frozen_copy(policy)
    trainer = BenchTrainer(cfg, policy=policy, ref=ref, tokenizer=tokenizer, train_data=pairs)
    del ref  # the trainer holds it; with --precompute-ref it is released after the precompute
    trainer.plan = FileOrder(len(pairs), args.batch_size, 1, args.grad_accum, args.seed)
    setup_s = time.perf_counter() - t_setup

    if cuda:
        torch.cuda.reset_peak_memory_stats()
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
        attention=args.attention,
        token_ids_replaced=differ,
        preflab_num_tokens=summary["final_metrics"].get("num_tokens"),
        reference_cache=summary.get("reference_cache"),
        pad_to_multiple_of=args.pad_to_multiple_of,
        torch_compile=summary.get("torch_compile"),  # graphs compiled (their time is in first_step_s)
    )
    from mfu import mfu

    res["mfu"] = round(mfu(res, args.fixture, model_dir), 4) if res.get("calib_gflops") else None
    common.emit(res, args.out)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
