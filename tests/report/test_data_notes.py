"""The report's data notes (preflab.report.data_notes) by hand: what each set left out (rows, not reasons; no note for
a count of 0), the prompts and responses cut, the run-wide counts where summary.json keeps them, and the held-out
eval's notes at the last eval step with the most unscored prompts."""
from preflab.report.data_notes import data_notes, held_out_generation_notes, online_notes


def test_data_notes_count_the_rows_left_out_and_the_cut_responses_and_read_the_run_wide_counts():
    summary = {"data": {"train_tokenize": {"total": 12, "source": "d.jsonl", "prompt_truncated": 0,
                                           "response_truncated": 3,
                                           "skipped": {"longer_than_max_length": 2, "empty_response": 1, "bad": 0}},
                        "eval_rows": {"total": 4, "skipped": {"bad_row": 0}, "prompt_truncated": 0},  # nothing
                        "margin_missing": 5},
               "unused_rows_per_epoch": 2}
    assert data_notes(summary) == [
        "data: training examples (tokenized) of d.jsonl: 3 of 12 left out (empty_response 1, "
        "longer_than_max_length 2); 3 with the response truncated",
        "data: 2 training examples per epoch are not trained on in that epoch (every step takes a full global batch; "
        "unused_rows_per_epoch)",
        "data: 5 reward rows without a margin beside rows with one were trained with margin 0 (margin_missing)"]
    cut_prompts = {"data": {"prompt_tokenize": {"total": 8, "prompt_truncated": 2}}}
    assert data_notes(cut_prompts) == ["data: training prompts (tokenized): 2 with the prompt truncated"]
    assert data_notes({"data": {"train_rows": {"total": 3, "skipped": {"bad_row": 0}}}}) == []


def test_online_notes_say_of_how_many_completions():
    online = {"online": {"rounds": 2, "completions": 64, "truncated_completions": 5, "empty_completions": 0,
                         "judge_dropped": 0}}
    assert online_notes(online) == data_notes(online) == [
        "generation: of 64 completions, 5 reached max_completion_length without EOS, so the judges scored cut-off "
        "text (completions/clipped_ratio)"]


def test_held_out_notes_give_the_last_eval_step_and_the_step_with_the_most_unscored_prompts():
    rows = [{"step": 2, "eval_completions/clipped_ratio": 0.25, "eval_judge/dropped": 1},
            {"step": 4, "eval_completions/clipped_ratio": 0.0, "eval_judge/dropped": 3},
            {"step": 6, "eval_completions/clipped_ratio": 0.5, "eval_judge/dropped": 2},
            {"step": 7, "eval_reward": 1.0}]  # a row logging neither
    assert held_out_generation_notes(rows) == [
        "held-out eval: greedy held-out answers reached max_completion_length without EOS at 2 of 3 eval steps "
        "(50.0% of them at the last, step 6), so eval_reward scored cut-off text there "
        "(eval_completions/clipped_ratio)",
        "held-out eval: the judges gave no score to some held-out prompts at 3 of 3 eval steps (at most 3, at step 4; "
        "2 at the last, step 6); those prompts are left out of eval_reward and the win rate (eval_judge/dropped)"]
    assert held_out_generation_notes([{"step": 2, "eval_completions/clipped_ratio": 0.0,
                                       "eval_judge/dropped": 0}]) == []
