"""The order in which CI's pytest-xdist workers (`-n 2 --dist loadfile`: a worker takes whole files) are handed the
test files: the slowest files first, so that the run does not end with one worker busy on a long multi-process file
while the other has run out of files. pytest-xdist's own order (most tests first) put exactly those files last: they
have few tests (a launch shared by two or three), and take up to a minute or two each.

SLOW_FILES_SECONDS holds rough seconds of the slowest files, from `--durations` runs on the loaded 2-core development
machine (December 2026), scaled by about one half towards a quiet core; the multi-process files include their
launches and the ranks' imports. A file missing here is ordered as xdist would order it; a stale number only changes
the order, never a result. A new file that takes more than about 10 s belongs here.
tests/test_ci_command.py checks that every file named here exists.
"""

SLOW_FILES_SECONDS = {
    "tests/loops/test_deepspeed_multiprocess.py": 125,  # 2-process ZeRO-2 / ZeRO-3 / FSDP2 launches shared by the
    # plain ZeRO, spo_degree, sparsepo and LoRA reward tests, 2 one-process ZeRO launches, 1 DDP launch
    "tests/loops/test_deepspeed_checkpoint.py": 60,  # the ZeRO-3 offload run: the first to run compiles cpu_adam
    "tests/online/test_game.py": 55,  # 200-step equilibrium runs; its 2-process runs: test_trainers_two_processes
    "tests/perf/test_torch_compile.py": 76,
    "tests/online/test_online_run.py": 31,  # its 2-process runs: test_trainers_two_processes.py
    "tests/online/test_trainers_two_processes.py": 76,  # one 2-process launch of 31 runs (those of test_online_run,
    # test_game and the entropy bonus test of test_grpo_trl_options too), then each 1-process run
    "tests/online/test_environment_two_processes.py": 38,  # one plain process and one 2-process launch, 4 runs each
    # (test_environment_factory's, test_environment_no_dataset's, test_environment_no_prompt's, test_tool_calling's)
    "tests/online/test_environment_factory.py": 15,  # TRL's GRPOTrainer built once
    "tests/loops/test_distill_run.py": 20,
    "tests/loops/test_ddp_cli_launch.py": 75,  # one DDP launch of 7 `preflab train` runs (the 2-process runs of
    # test_streaming's, test_spo_degree_run's, test_distill_run's, test_diffusion_run's, test_accelerate_configs'
    # and test_best_model's tests and a user's objective by path), test_trainer's and test_ref_cache's tiny runs,
    # test_hub_push's upload run, test_best_model's 2 extras runs, test_grpo_clip_extrema's step and
    # test_resume_verify's damaged DDP checkpoint, then each 1-process run
    "tests/report/test_report_every_trainer.py": 25,
    "tests/online/test_resume_every_trainer.py": 25,
    "tests/report/test_report_recipe_runs.py": 25,
    "tests/loops/test_optimizers.py": 20,
    "tests/loops/test_optim_bnb.py": 35,  # one 2-process launch (adamw_8bit under DDP) and the bitsandbytes import
    "tests/loops/test_scale_matrix.py": 50,  # 3 launches (the LoRA reward run shares test_deepspeed_multiprocess's;
    # the FSDP2 one also runs test_fsdp2's, test_vlm_ref_cache's 2-process runs and test_resume_verify's damaged
    # FSDP2 checkpoints)
    "tests/online/test_recipes.py": 43,
    "tests/diffusion/test_demo_diffusion.py": 37,
    "tests/diffusion/test_diffusion_run.py": 20,
    "tests/tools/test_recipe_processes.py": 27,
    "tests/test_reliability.py": 25,
    "tests/online/test_grpo_trl_options.py": 24,
    "tests/loops/test_best_model.py": 9,  # its 2-process runs: test_ddp_cli_launch.py
    "tests/loops/test_ref_sync.py": 18,
    "tests/online/test_rso.py": 16,
    "tests/loops/test_trainer.py": 15,
    "tests/vlm/test_demo_vlm.py": 14,
    "tests/loops/test_multiprocess.py": 13,
    "tests/perf/test_flex_attention.py": 12,
    "tests/online/test_rloo_recipe.py": 12,
    "tests/loops/test_spo_degree_combinations.py": 11,
    "tests/demo/test_demo.py": 11,
    "tests/loops/test_flex_cpu_refusal.py": 11,
    "tests/test_reliability_checklist.py": 10,
    "tests/loops/test_spo_degree_run.py": 10,
    "tests/online/test_online_trial2.py": 10,
    "tests/loops/test_streaming.py": 8,
    "tests/test_resume_identity.py": 8,
}


def slowest_files_first(paths: list[str]) -> list[str]:
    """The files of `paths` (one entry per test, its node id's file part, in collection order) in the order to run
    them: those of SLOW_FILES_SECONDS longest first, then the others by their number of tests, most first (what
    pytest-xdist's loadfile does by default), ties in collection order."""
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for i, path in enumerate(paths):
        counts[path] = counts.get(path, 0) + 1
        first.setdefault(path, i)
    return sorted(counts, key=lambda p: (-SLOW_FILES_SECONDS.get(p, 0), -counts[p], first[p]))
