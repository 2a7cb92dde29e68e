"""A saved TRL ORPOConfig / CPOConfig (`args.to_dict()`) trains the method it was written for: before, an
ORPOConfig loaded as DPO (sigmoid, with a reference model) without a word, and a CPOConfig was refused for its
cpo_alpha / simpo_gamma / alpha (and its sigmoid, CPO's reference-free loss, named DPO's)."""
import pytest

from preflab.config import config_from_dict
from preflab.config_trl_methods import DUMP_MARKERS
from preflab.errors import ConfigError
from preflab.objectives import get_objective

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "x.jsonl"}


def _dump(kind, **fields):
    pytest.importorskip("trl")
    if kind == "orpo":
        from trl.experimental.orpo import ORPOConfig as cls
    else:
        from trl.experimental.cpo import CPOConfig as cls
    return cls(output_dir="out", bf16=False, **fields).to_dict()


def test_saved_orpoconfig_is_orpo_with_its_beta(capsys):
    cfg = config_from_dict({**BASE, **_dump("orpo", beta=0.25)})
    assert cfg.objective() == get_objective("orpo", beta=0.25)
    assert "a saved TRL ORPOConfig" in capsys.readouterr().err


def test_trimmed_orpoconfig_without_loss_type_is_refused_naming_the_fix():
    """padding_value / is_encoder_decoder without TrainingArguments' fields: ORPOConfig or a TRL 0.2x DPOConfig."""
    raw = {k: v for k, v in _dump("orpo", beta=0.25).items() if k not in DUMP_MARKERS}
    with pytest.raises(ConfigError, match="could be a TRL ORPOConfig .* Add loss_type: orpo"):
        config_from_dict({**BASE, **raw})
    assert config_from_dict({**BASE, **raw, "loss_type": "orpo"}).objective() == get_objective("orpo", beta=0.25)
    assert config_from_dict({**BASE, **raw, "loss_type": "sigmoid"}).objective() == get_objective("sigmoid",
                                                                                                   beta=0.25)


def test_saved_cpoconfig_sigmoid_is_cpo_not_dpo(capsys):
    cfg = config_from_dict({**BASE, **_dump("cpo", beta=0.2, label_smoothing=0.1, cpo_alpha=0.5, simpo_gamma=0.7)})
    assert cfg.objective() == get_objective("cpo", beta=0.2, label_smoothing=0.1, cpo_alpha=0.5)
    err = capsys.readouterr().err
    assert "loss_type: cpo (reference-free CPO" in err and "simpo_gamma: 0.7 is not used" in err
    # CPOConfig's default loss_type (sigmoid) when the YAML leaves it out
    cfg = config_from_dict({**BASE, "cpo_alpha": 0.5, "beta": 0.2})
    assert cfg.objective() == get_objective("cpo", beta=0.2, cpo_alpha=0.5)


def test_saved_cpoconfig_simpo_carries_every_parameter():
    cfg = config_from_dict({**BASE, **_dump("cpo", loss_type="simpo", beta=2.0, simpo_gamma=0.8, cpo_alpha=0.3,
                                            label_smoothing=0.05)})
    assert cfg.objective() == get_objective("simpo", beta=2.0, simpo_gamma=0.8, cpo_alpha=0.3, label_smoothing=0.05)


def test_saved_cpoconfig_alphapo_is_alphapo_with_trls_values():
    """CPOConfig(loss_type='alphapo') is saved as simpo with cpo_alpha 0 and alpha: that is AlphaPO."""
    raw = _dump("cpo", loss_type="alphapo", alpha=0.3, beta=2.5, simpo_gamma=0.2)
    assert (raw["loss_type"], raw["cpo_alpha"]) == ("simpo", 0.0)
    cfg = config_from_dict({**BASE, **raw})
    assert cfg.objective() == get_objective("alphapo", beta=2.5, simpo_gamma=0.2, cpo_alpha=0.0, alpha=0.3,
                                            label_smoothing=0.0)


@pytest.mark.parametrize("fields,why", [
    ({"loss_type": "hinge"}, "reference-free hinge loss .* preflab's loss_type hinge is DPO's"),
    ({"loss_type": "ipo"}, "reference-free ipo loss"),
    ({"alpha": 0.2}, "alpha=0.2 with loss_type sigmoid .* use loss_type: alphapo"),
])
def test_cpoconfig_losses_preflab_does_not_have_are_refused(fields, why):
    with pytest.raises(ConfigError, match=why) as err:
        config_from_dict({**BASE, **_dump("cpo", **fields)})
    assert "unknown config key" not in str(err.value)


def test_hand_written_simpo_with_cpo_fields_says_whose_defaults(capsys):
    """A preflab simpo config keeps preflab's defaults (pure SimPO: cpo_alpha 0); a note names TRL's."""
    cfg = config_from_dict({**BASE, "loss_type": "simpo", "simpo_gamma": 0.3})
    assert cfg.objective() == get_objective("simpo", beta=0.1, simpo_gamma=0.3, cpo_alpha=0.0)
    assert ("loss_type simpo with simpo_gamma but no cpo_alpha: preflab's simpo defaults apply (cpo_alpha 0.0), not "
            "TRL CPOConfig's (cpo_alpha 1.0)") in capsys.readouterr().err
    config_from_dict({**BASE, "loss_type": "simpo", "simpo_gamma": 0.3, "beta": 2.0, "cpo_alpha": 0.0})
    assert capsys.readouterr().err == ""
