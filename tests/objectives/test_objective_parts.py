"""preflab.objectives.objective_parts: the one reading of "the parts of the run's loss" (a WeightedSum's parts, else
the objective alone) that every per-part check uses (modality, gradient extras, intra rows, KTO weights, panels,
the step token mean, the extras producer)."""
from preflab.loops.prepare import accepts_intra_rows
from preflab.objectives import WeightedSum, get_objective, objective_parts
from preflab.objectives._panels import declared_panels
from preflab.objectives.sft import wants_step_token_mean


def test_objective_parts_of_a_weighted_sum_are_its_parts_and_of_one_objective_itself():
    combo = get_objective(["sigmoid", "sft"])
    assert isinstance(combo, WeightedSum)
    assert objective_parts(combo) == combo.parts and len(combo.parts) == 2
    alone = get_objective("sigmoid")
    assert objective_parts(alone)[0] is alone and len(objective_parts(alone)) == 1
    assert objective_parts("sigmoid") == ("sigmoid",)  # a loss_type name (check_modality reads names too)
    assert objective_parts(None) == (None,)


def test_objective_parts_readers_agree_for_a_sum_and_its_parts():
    """Each reader says of a weighted sum what its every / any part says: sft token_mean 'step' in a later part is
    seen; intra rows are accepted only when every part compares prompts; panels are every part's, in order."""
    combo = get_objective(["sigmoid", "sft"], token_mean="step")
    assert wants_step_token_mean(combo) and not wants_step_token_mean(get_objective("sigmoid"))
    assert accepts_intra_rows(get_objective("rc_dpo"))
    assert not accepts_intra_rows(get_objective(["rc_dpo", "sigmoid"]))
    degree = get_objective(["ipo", "spo_degree"], align_weight=0.0)
    assert declared_panels(degree) == declared_panels(degree.parts[1]) != []
    assert declared_panels(None) == []
