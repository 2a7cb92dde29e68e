"""TRL 1.16's distillation defaults (GKDConfig, DistillationConfig) against preflab's task: sft + teacher: the tables
config_trl keeps equal the installed TRL's dataclass fields; a config that claims to be one of TRL's (a GKDConfig by
max_new_tokens, a DistillationConfig by teacher_model_revision) gets that config's defaults for what it leaves out,
the same values as the full saved config; preflab's own distillation keeps its defaults (lmbda 0, beta 1.0), and a
TRL-shaped config (no task) is told them beside TRL's; the Python names (`from preflab import GKDTrainer`) name TRL's
defaults. Config only: no model is loaded."""
import dataclasses
import warnings

import pytest

from preflab.config import config_from_dict
from preflab.config_trl import DISTILLATION_CONFIG_DEFAULTS, GKD_CONFIG_DEFAULTS, PREFLAB_DISTILL_DEFAULTS
from preflab.errors import ConfigError

gkd_config = pytest.importorskip("trl.experimental.gkd").GKDConfig
distillation_config = pytest.importorskip("trl").DistillationConfig

BASE = {"model_name_or_path": "builtin:tiny-llama", "dataset_name": "examples/data/loud_echo_sft.jsonl",
        "teacher_model_name_or_path": "builtin:tiny-qwen2", "output_dir": "unused"}


def _trl_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _dump(cls) -> dict:
    """args.to_dict() of the TRL config at its defaults (the masked *_token placeholders left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = cls(output_dir="unused", teacher_model_name_or_path=BASE["teacher_model_name_or_path"], use_cpu=True,
                  bf16=False).to_dict()
    return {k: v for k, v in raw.items() if not k.endswith("_token")}


def _values(cfg) -> dict:
    """The distillation's values a run reads: the data mixture, the divergence, the sampling and the optimizer's."""
    loss = cfg.objective()
    return {"lmbda": cfg.lmbda, "seq_kd": cfg.seq_kd, "beta": loss.beta, "divergence_temperature": loss.temperature,
            "temperature": cfg.temperature, "max_completion_length": cfg.max_completion_length,
            "learning_rate": cfg.learning_rate, "disable_dropout": cfg.disable_dropout}


def test_the_default_tables_are_the_installed_trls_and_preflabs_own():
    gkd, distillation = _trl_defaults(gkd_config), _trl_defaults(distillation_config)
    assert GKD_CONFIG_DEFAULTS == {k: gkd[k] for k in GKD_CONFIG_DEFAULTS}
    assert DISTILLATION_CONFIG_DEFAULTS == {k: distillation[k] for k in DISTILLATION_CONFIG_DEFAULTS}
    assert "lmbda" not in distillation and "max_new_tokens" not in distillation  # its trainer samples every step
    assert "max_completion_length" not in gkd and "teacher_model_revision" not in gkd  # the two claims' fields
    assert (gkd["learning_rate"], gkd["disable_dropout"]) == (PREFLAB_DISTILL_DEFAULTS["learning_rate"],
                                                              PREFLAB_DISTILL_DEFAULTS["disable_dropout"])
    native = _values(config_from_dict({**BASE, "task": "sft"}))  # preflab's own distillation: kept
    assert native == {**{k: PREFLAB_DISTILL_DEFAULTS[k] for k in native if k in PREFLAB_DISTILL_DEFAULTS},
                      "divergence_temperature": 1.0}
    assert (native["lmbda"], native["beta"]) == (0.0, 1.0)


def test_a_hand_written_gkd_config_gets_gkdconfigs_defaults_as_its_saved_config_does(capsys):
    """{teacher, max_new_tokens} (GKDConfig's name) runs as a saved GKDConfig at its defaults: lmbda 0.5, beta 0.5,
    sampling at 0.9, the divergence at 1 (GKDTrainer.compute_loss), 128 new tokens; before, it was refused
    (max_new_tokens unread at preflab's lmbda 0), and with lmbda written it ran at preflab's beta 1.0 and
    temperature 1.0. A run's own config.yaml of it loads back to the same values."""
    gkd = _trl_defaults(gkd_config)
    saved = _values(config_from_dict({**_dump(gkd_config), **BASE}))
    capsys.readouterr()
    cfg = config_from_dict({**BASE, "max_new_tokens": gkd["max_new_tokens"]})
    assert _values(cfg) == saved == {
        "lmbda": gkd["lmbda"], "seq_kd": gkd["seq_kd"], "beta": gkd["beta"], "divergence_temperature": 1.0,
        "temperature": gkd["temperature"], "max_completion_length": gkd["max_new_tokens"],
        "learning_rate": gkd["learning_rate"], "disable_dropout": gkd["disable_dropout"]}
    assert "GKDConfig -> its defaults for the options left out: lmbda: 0.5, beta: 0.5, temperature: 0.9" in \
        capsys.readouterr().err
    assert _values(config_from_dict(cfg.to_dict())) == saved  # preflab's config.yaml of that run
    written = config_from_dict({**BASE, "max_new_tokens": 64, "lmbda": 1.0, "beta": 0.0, "temperature": 0.7})
    assert _values(written) == {**saved, "lmbda": 1.0, "beta": 0.0, "temperature": 0.7,
                                     "max_completion_length": 64}  # what it writes is kept
    off = config_from_dict({**BASE, "max_new_tokens": 64, "lmbda": 0.0})  # nothing sampled: lengths unread
    assert _values(off) == {**saved, "lmbda": 0.0, "temperature": 1.0, "max_completion_length": None}


def test_a_hand_written_distillation_config_gets_distillationconfigs_defaults_as_its_saved_config_does():
    """{teacher, teacher_model_revision} (DistillationConfig's field) runs as a saved DistillationConfig at its
    defaults: every completion the student's (lmbda 1), 512 new tokens, learning_rate 1e-6, dropout kept."""
    distillation = _trl_defaults(distillation_config)
    saved = config_from_dict({**_dump(distillation_config), **BASE, "teacher_model_revision": "main"})
    cfg = config_from_dict({**BASE, "teacher_model_revision": "main"})
    assert _values(cfg) == _values(saved) == {
        "lmbda": 1.0, "seq_kd": False, "beta": distillation["beta"],
        "divergence_temperature": distillation["temperature"],
        "temperature": distillation["temperature"], "max_completion_length": distillation["max_completion_length"],
        "learning_rate": distillation["learning_rate"], "disable_dropout": distillation["disable_dropout"]}
    assert cfg.teacher_model_init_kwargs == saved.teacher_model_init_kwargs == {"revision": "main"}


def test_preflabs_own_distillation_keeps_its_defaults_and_a_trl_shaped_config_is_told_trls(capsys):
    """No claim (neither max_new_tokens nor teacher_model_revision): lmbda 0 and beta 1.0. Without a task (the shape
    of a TRL config) the note says so beside GKDConfig's 0.5 / 0.5 / 0.9 and DistillationTrainer's sampling, for
    the options left out only; with task: sft (preflab's own) it says nothing. A sampling length written at lmbda 0
    is refused, the refusal saying TRL's lmbda defaults."""
    gkd = _trl_defaults(gkd_config)
    cfg = config_from_dict(dict(BASE))
    err = capsys.readouterr().err
    assert (cfg.task, cfg.lmbda, cfg.objective().beta, cfg.objective().temperature) == ("sft", 0.0, 1.0, 1.0)
    for key in ("lmbda", "beta", "temperature"):
        assert f"{key}: {PREFLAB_DISTILL_DEFAULTS[key]:g} (GKDConfig's {gkd[key]:g}" in err, key
    assert "DistillationTrainer samples every completion, lmbda: 1" in err
    config_from_dict({**BASE, "lmbda": 0.25, "max_completion_length": 16})
    err = capsys.readouterr().err
    assert "beta: 1 (GKDConfig's 0.5" in err and "lmbda: 0 (" not in err  # written: not listed
    config_from_dict({**BASE, "task": "sft"})
    assert "GKDConfig" not in capsys.readouterr().err
    with pytest.raises(ConfigError, match="lmbda: 0 is preflab's default, where TRL's GKDConfig has 0.5 and TRL's "
                                          "DistillationTrainer samples every completion, lmbda: 1"):
        config_from_dict({**BASE, "max_completion_length": 16})


@pytest.mark.parametrize("name,cls,keys", [
    ("GKDTrainer", gkd_config, ("lmbda", "beta", "temperature", "max_new_tokens", "seq_kd")),
    ("GKDConfig", gkd_config, ("lmbda", "beta", "temperature", "max_new_tokens", "seq_kd")),
    ("DistillationTrainer", distillation_config, ("max_completion_length", "learning_rate", "disable_dropout")),
    ("DistillationConfig", distillation_config, ("max_completion_length", "learning_rate", "disable_dropout"))])
def test_the_python_names_say_trls_defaults(name, cls, keys):
    """`from preflab import GKDTrainer` (TRL's name) says to write GKDConfig's defaults, each value the installed
    TRL's; the config written that way is the saved GKDConfig's (DistillationConfig: lmbda 1)."""
    import preflab

    with pytest.raises(ImportError) as info:
        getattr(preflab, name)
    trl = _trl_defaults(cls)
    text = str(info.value)
    shown = {k: (f"{trl[k]:g}" if isinstance(trl[k], float) else str(trl[k]).lower()) for k in keys}
    for key, value in shown.items():
        assert f"{key}: {value}" in text, key
    written = {k: trl[k] for k in keys} | ({"lmbda": 1.0} if cls is distillation_config else {})
    assert f"lmbda: {written['lmbda']:g}" in text
    saved = {**_dump(cls), **BASE} | ({"teacher_model_revision": "main"} if cls is distillation_config else {})
    assert _values(config_from_dict({**BASE, "task": "sft", **written})) == _values(config_from_dict(saved))
