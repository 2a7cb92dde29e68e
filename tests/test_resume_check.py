"""preflab.resume_check: the one refuse-or-note rule of the resume checks, and the batch layout refusal on another
number of processes (processes, per-device batch and accumulation, old -> new, and what to set)."""
import re

import pytest

from preflab.config import config_from_dict
from preflab.errors import ConfigError
from preflab.resume_check import check_saved_config, refuse_unless_allowed


def _cfg(tmp_path, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "dataset_name": "d.jsonl",
                             "output_dir": str(tmp_path), **kw})


def test_refuse_unless_allowed_raises_the_refusal_or_says_the_note(tmp_path):
    notes = []
    with pytest.raises(ConfigError) as err:
        refuse_unless_allowed(_cfg(tmp_path), "refused: do X", "noted", notes.append)
    assert str(err.value) == "refused: do X" and notes == []
    refuse_unless_allowed(_cfg(tmp_path, allow_config_change=True), "refused: do X", "noted", notes.append)
    assert notes == ["noted"]
    refuse_unless_allowed(_cfg(tmp_path, allow_config_change=True), "refused: do X", "noted", None)  # said nowhere
    assert notes == ["noted"]


def test_resume_on_fewer_processes_and_less_accumulation_names_the_whole_batch_layout(tmp_path):
    """A checkpoint of 2 processes x per-device 2 x accumulation 2 (8 examples a step) resumed on 1 process with
    accumulation 1: the refusal said only 'gradient_accumulation_steps (2 -> 1)', not that the process count changed
    too nor what keeps the run on one process (per-device 4 with accumulation 2)."""
    saved = _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2).to_dict()
    state = {"world_size": 2, "config": saved}
    now = _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=1)
    with pytest.raises(ConfigError) as err:
        check_saved_config(state, now, "checkpoint-4", 1, note=print)
    message = str(err.value)
    for part in ("processes 2 -> 1", "per_device_train_batch_size 2 -> 2", "gradient_accumulation_steps 2 -> 1",
                 "8 examples an optimizer step", "this run has 2 (2 x 1) and 1, 2 (",
                 "Keep the run with per_device_train_batch_size: 4 and gradient_accumulation_steps: 2 on 1 process,",
                 "launch 2 processes with per_device_train_batch_size: 2 and gradient_accumulation_steps: 2"):
        assert part in message, (part, message)
    # what it says to set is a resume that passes; with allow_config_change the layout change is a note
    check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2),
                       "checkpoint-4", 1, note=print)
    notes = []
    check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                                   allow_config_change=True), "checkpoint-4", 1, note=notes.append)
    assert re.search(r"processes 2 -> 1.*Continuing \(allow_config_change: true\)", notes[0])
    assert "gradient_accumulation_steps (2 -> 1)" in notes[1]  # check_resume_config's note follows


def test_resume_with_the_same_global_batch_but_other_accumulation_on_another_world_is_refused(tmp_path):
    """2 x 2 x accumulation 2 -> 1 x 4 x accumulation 1: the global batch of a micro-step is kept, the optimizer
    step's is halved; the layout message names the accumulation change with the processes."""
    saved = _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2).to_dict()
    with pytest.raises(ConfigError, match=r"processes 2 -> 1, per_device_train_batch_size 2 -> 4, "
                                          r"gradient_accumulation_steps 2 -> 1\)"):
        check_saved_config({"world_size": 2, "config": saved},
                           _cfg(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=1),
                           "checkpoint-4", 1, note=print)


def test_resume_with_a_changed_dict_or_list_option_is_refused_naming_it(tmp_path):
    """Resuming an online GRPO run with epsilon=0.3 (kept in objective_params, a dict) stopped with "TypeError:
    unhashable type: 'dict'" from the comparison of the saved config (chaos trial); any dict or list option
    (objective_params, loss_type lists, reward_funcs, recipe_params) did. Now refused by name like a number."""
    saved = _cfg(tmp_path, loss_type=["robust", "sft"], objective_params={"label_smoothing": 0.1}).to_dict()
    now = _cfg(tmp_path, loss_type=["robust", "ipo"], objective_params={"label_smoothing": 0.2})
    with pytest.raises(ConfigError) as err:
        check_saved_config({"world_size": 1, "config": saved}, now, "checkpoint-2", 1, note=print)
    assert ("in key(s) that change what the run computes: loss_type (['robust', 'sft'] -> ['robust', 'ipo']), "
            "objective_params ({'label_smoothing': 0.1} -> {'label_smoothing': 0.2}). Resume with") in str(err.value)


@pytest.mark.parametrize("loss,parts", [({"loss_type": ["sigmoid", "sft"]}, "SFT"),
                                        ({"rpo_alpha": 1.0}, "SFT"), ({"loss_type": "aot"}, "AOT"),
                                        ({"loss_type": "orpo"}, "ORPO"), ({"loss_type": ["sigmoid", "cpo"]}, "CPO")])
def test_a_micro_batch_statistic_keeps_the_micro_batches_not_the_global_batch_on_another_world(tmp_path, loss, parts):
    """The sft term's per-micro-batch token mean, AOT's sorted margins, ORPO's and CPO's token-mean NLL terms
    (tests/objectives/test_micro_batch_coupling.py finds them): 2 processes x 2 rows equal 1 process x 2 rows x
    accumulation 2, not 1 x 4 (KTO's reference point, taken over the processes, has its own test below). Before, a 2 x 2 checkpoint resumed on 1 x 4 passed (another objective from the next step
    on) and 1 x 2 x accumulation 2, the same run, was refused. Plain DPO keeps the global batch as before."""
    saved = _cfg(tmp_path, per_device_train_batch_size=2, **loss).to_dict()
    state = {"world_size": 2, "config": saved}
    check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2, **loss),
                       "checkpoint-2", 1, note=print)
    with pytest.raises(ConfigError) as err:
        check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=4, **loss), "checkpoint-2", 1,
                           note=print)
    message = str(err.value)
    for part in ("micro-batches of 2 rows (per_device_train_batch_size), 2 an optimizer step (2 processes x "
                 "gradient_accumulation_steps 1); this run has 4 rows and 1 (1 x 1)",
                 f"The objective ({parts}) holds a statistic of each micro-batch",
                 "Keep the run with per_device_train_batch_size: 2 and gradient_accumulation_steps: 2 on 1 process,",
                 "launch 2 processes with per_device_train_batch_size: 2 and gradient_accumulation_steps: 1"):
        assert part in message, (part, message)
    # the same number of micro-batches of another size is another split too, said as one
    with pytest.raises(ConfigError, match="this run has 4 rows and 2 \\(1 x 2\\)"):
        check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                       **loss), "checkpoint-2", 1, note=print)
    # 3 processes cannot split 2 micro-batches: said so, with the launches that can
    with pytest.raises(ConfigError, match="2 micro-batches do not split over 3 processes: launch a number of "
                                          "processes that divides 2, or 2 processes with"):
        check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=2, **loss), "checkpoint-2", 3,
                           note=print)
    notes = []
    check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=4, allow_config_change=True, **loss),
                       "checkpoint-2", 1, note=notes.append)
    assert "another split trains another objective" in notes[0] and "Continuing" in notes[0]
    plain = {"world_size": 2, "config": _cfg(tmp_path, per_device_train_batch_size=2).to_dict()}
    check_saved_config(plain, _cfg(tmp_path, per_device_train_batch_size=4), "checkpoint-2", 1, note=print)
    with pytest.raises(ConfigError, match="global batch of 4"):
        check_saved_config(plain, _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2),
                           "checkpoint-2", 1, note=print)


def test_kto_on_another_number_of_processes_is_refused_whatever_the_split(tmp_path):
    """KTO's reference point z0 is the mean of every process's micro-batch KL estimate (as TRL's KTOTrainer gathers
    it) and its KL pairs form inside each process's micro-batch, so no split on 1 process continues a 2 x 2 rows
    checkpoint: 1 x 2 rows x accumulation 2 (the same run while z0 was each process's own mean) and 1 x 4 are both
    refused, naming the reason and the launch that continues it; allow_config_change continues with a note. The
    same number of processes resumes as before."""
    from preflab.objectives import get_objective
    from preflab.objectives.base import statistic_over_processes_parts

    state = {"world_size": 2, "config": _cfg(tmp_path, per_device_train_batch_size=2, loss_type="kto").to_dict()}
    for split in ({"gradient_accumulation_steps": 2}, {"per_device_train_batch_size": 4}):
        with pytest.raises(ConfigError) as err:
            check_saved_config(state, _cfg(tmp_path, **{"per_device_train_batch_size": 2, **split},
                                           loss_type="kto"), "checkpoint-2", 1, note=print)
        message = str(err.value)
        for part in ("checkpoint-2 was trained on 2 processes and this run has 1. The objective (KTO) takes its "
                     "reference point over the processes",
                     "Launch 2 processes with per_device_train_batch_size: 2 and gradient_accumulation_steps: 1 to "
                     "continue this run, or set allow_config_change: true"):
            assert part in message, (part, message)
    notes = []
    check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                   loss_type="kto", allow_config_change=True), "checkpoint-2", 1, note=notes.append)
    assert "no split on another number of processes computes the same loss" in notes[0] and "Continuing" in notes[0]
    check_saved_config(state, _cfg(tmp_path, per_device_train_batch_size=2, loss_type="kto"), "checkpoint-2", 2,
                       note=print)
    assert statistic_over_processes_parts(get_objective("kto")) == ["KTO"]
    assert statistic_over_processes_parts(get_objective("apo_zero_unpaired")) == []
    assert statistic_over_processes_parts(get_objective(["sigmoid", "sft"])) == []


def test_sft_token_mean_step_and_wpo_are_read_through_to_their_parts():
    """couples_micro_batch reads a weighted sum's parts and a WPO weighting's inner objective; the sft term with
    token_mean "step" (the step's token mean, additive over processes) and plain DPO hold no micro-batch statistic."""
    from preflab.objectives import WPOWeighted, get_objective
    from preflab.objectives.base import couples_micro_batch

    assert couples_micro_batch(get_objective("kto"))
    assert couples_micro_batch(WPOWeighted(get_objective(["sigmoid", "sft"])))
    assert not couples_micro_batch(get_objective(["sigmoid", "sft"], token_mean="step"))
    assert not couples_micro_batch(WPOWeighted(get_objective("sigmoid")))
    assert not couples_micro_batch(get_objective("apo_zero_unpaired"))


def _online(tmp_path, **kw):
    return config_from_dict({"model_name_or_path": "builtin:tiny-llama", "task": "online", "online_task": "demo",
                             "max_steps": 2, "output_dir": str(tmp_path), **kw})


@pytest.mark.parametrize("options,part", [({"trainer": "bnpo"}, "GRPO"), ({"trainer": "grpo", "entropy_coef": 0.1}, "GRPO"),
                                          ({"trainer": "grpo", "top_entropy_quantile": 0.5}, "GRPO")])
def test_an_online_objective_that_reads_each_micro_batch_is_not_resumed_on_another_number_of_processes(
        tmp_path, options, part):
    """OnlineRun.micro_batches deals a step's examples over processes x micro-batches: bnpo's normaliser (the
    micro-batch's completion tokens), the entropy bonus and top_entropy_quantile read each micro-batch (TRL's), so a
    checkpoint of 1 process resumed on 2 trains another objective. Before, task: online was never checked. The same
    number of processes resumes; allow_config_change continues with a note."""
    state = {"world_size": 1, "config": _online(tmp_path, **options).to_dict()}
    with pytest.raises(ConfigError) as err:
        check_saved_config(state, _online(tmp_path, **options), "checkpoint-2", 2, note=print)
    message = str(err.value)
    for text in ("resume_from_checkpoint: checkpoint-2 was trained on 1 process and this run has 2.",
                 f"The online objective ({part}) holds a statistic of each micro-batch", "Launch 1 process to continue",
                 "allow_config_change: true"):
        assert text in message, (text, message)
    check_saved_config(state, _online(tmp_path, **options), "checkpoint-2", 1, note=print)
    notes = []
    check_saved_config(state, _online(tmp_path, allow_config_change=True, **options), "checkpoint-2", 2,
                       note=notes.append)
    assert notes[0].startswith("preflab: note: resume_from_checkpoint: checkpoint-2 was trained on 1 process and "
                               "this run has 2.") and notes[0].endswith("Continuing (allow_config_change: true).")


@pytest.mark.parametrize("options", [{"trainer": "grpo"}, {"trainer": "dapo"}, {"trainer": "cispo"},
                                     {"trainer": "grpo", "scale_rewards": "batch"}, {"trainer": "dr_grpo"},
                                     {"trainer": "rloo", "normalize_advantages": True}, {"trainer": "online_dpo"}])
def test_an_online_objective_that_splits_over_micro_batches_resumes_on_any_number_of_processes(tmp_path, options):
    """The GRPO loss types whose offline batches couple (dapo, cispo, scale_rewards batch; RLOO's
    normalize_advantages) take the step's extras online (the round's advantages, tokens_per_prompt) and split over
    micro-batches, as grpo, dr_grpo with max_completion_length (the online default) and online DPO's sigmoid do:
    resumed on 2 processes and on 3, with no note."""
    from preflab.objectives.base import couples_micro_batch, micro_batch_statistic_parts

    state = {"world_size": 1, "config": _online(tmp_path, **options).to_dict()}
    notes = []
    for world in (2, 3):
        check_saved_config(state, _online(tmp_path, **options), "checkpoint-2", world, note=notes.append)
    assert notes == []
    objective = _online(tmp_path, **options).objective()
    assert micro_batch_statistic_parts(objective, online=True) == []
    if options.get("trainer") in ("dapo", "cispo") or "scale_rewards" in options or "normalize_advantages" in options:
        assert couples_micro_batch(objective)  # offline, the same objective holds a statistic of its micro-batch
