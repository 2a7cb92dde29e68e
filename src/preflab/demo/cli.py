"""`preflab demo`: the built-in tiny model and task, end to end, in a few minutes on a CPU."""
from __future__ import annotations

# `preflab demo --help`: what the demo is for (its report says the same: preflab.demo.run.ABOUT)
DESCRIPTION = ("What the demo shows: preference optimization moves a model toward what its preference pairs reward, "
               "measured by a true reward known in code; on a CPU, no network, no files needed. text (the default): "
               "a tiny Llama is supervised-tuned on the loud-echo task (echo the prompt's words; the true reward is "
               "the share echoed in capitals, which the SFT data uses only 40% of the time), DPO trains on pairs "
               "that prefer capitals, and greedy answers to held-out prompts are scored with the true reward before "
               "and after DPO. Writes summary.json, training_curves.png, report.html and the SFT and DPO runs to "
               "--output-dir. vlm and diffusion run the same idea on a tiny image-text model and a tiny "
               "text-to-image pipeline.")


def register(sub) -> None:
    p = sub.add_parser("demo", help="SFT + DPO a tiny built-in model on a synthetic task; report true reward "
                                    "(`preflab demo vlm`: image-text model; `preflab demo diffusion`: text-to-image)",
                       description=DESCRIPTION)
    p.add_argument("which", nargs="?", default="text", choices=["text", "lm", "vlm", "diffusion"],
                   help="text (= lm): the loud-echo task on a tiny LM; vlm: the shape-colour task on a tiny "
                        "image-text model; diffusion: coloured shapes on a tiny text-to-image pipeline")
    p.add_argument("--output-dir", default=None, help="where to write data, runs, plots (default: outputs/demo, "
                   "outputs/demo-vlm or outputs/demo-diffusion)")
    p.add_argument("--seed", type=int, default=0, help="seed for data and models (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.quiet:  # transformers' own bars too ("Loading weights", "Writing model shards"); main() turns them back on
        from preflab.quiet import quiet_transformers

        quiet_transformers(verbosity_error=False, progress_bars=False)
    if args.which == "vlm":
        from preflab.demo.vlm import run_vlm_demo

        out = args.output_dir or "outputs/demo-vlm"
        summary = run_vlm_demo(out, seed=args.seed, quiet=args.quiet)
        print(f"colour accuracy on held-out images: before DPO {summary['true_reward_before']:.3f}, "
              f"after DPO {summary['true_reward_after']:.3f}")
        print(f"wrote {out}/summary.json and {summary['report']}; model in {summary['model_dir']}")
        return 0
    if args.which == "diffusion":
        return run_diffusion(args)
    from preflab.demo.run import run_demo

    args.output_dir = args.output_dir or "outputs/demo"
    summary = run_demo(args.output_dir, seed=args.seed, quiet=args.quiet)
    print(f"true reward on held-out prompts: before DPO {summary['true_reward_before']:.3f}, "
          f"after DPO {summary['true_reward_after']:.3f}")
    print(f"wrote {args.output_dir}/summary.json and {summary.get('plot')}"
          + (f" and {summary['report']}" if summary.get("report") else ""))
    return 0


def run_diffusion(args) -> int:
    from preflab.demo.diffusion import run_diffusion_demo

    out = args.output_dir or "outputs/demo-diffusion"
    summary = run_diffusion_demo(out, seed=args.seed, quiet=args.quiet)
    print(f"true reward of samples (same prompts and seeds): before preference training "
          f"{summary['true_reward_before']:.3f}, after {summary['true_reward_after']:.3f}")
    print(f"wrote {out}/summary.json, {summary['samples_png']} and {summary['report']}; trained pipeline in "
          f"{summary['model_dir']}")
    return 0
