"""Online, self-play and Nash training of language models as `preflab train` runs (task: online).

    preflab train examples/online/grpo.yaml           # or any examples/online/<recipe>.yaml

Per generation round: sample K completions per prompt from the current policy (generator.py), judge them
(judges.py), turn them into pairs or groups (trainers.py), then take optimizer steps with the recipe's objective
through the shared TrainingRun / step.py (run.py). Tasks (tasks.py): a dataset's prompts, the demo's loud-echo
task with its true reward, or the built-in preference game (game.py).
"""
