"""The options a trained model's parts are built from: LoRA adapters (use_peft, lora_*), task: vlm's vision freezing
and CAT's clue aggregator, with their defaults. TrainConfig takes these fields' defaults from ModelPartOptions (the
one place they are written), and preflab.models.vlm_run rebuilds a task: vlm checkpoint's model from its run's
config.yaml through model_part_options, below the config layer (preflab.config imports the models, so the models do
not import it). An option the config.yaml leaves out is TrainConfig's default, as a run started from that file had;
each value is checked as the config layer checks it (preflab.option_types.check_type, the option table's range)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from preflab.config_options import range_errors
from preflab.errors import ConfigError
from preflab.option_types import check_type


@dataclasses.dataclass(frozen=True)
class ModelPartOptions:
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: Any = "all-linear"
    use_rslora: bool = False          # TRL ModelConfig: adapter scale lora_alpha / sqrt(lora_r) (rsLoRA)
    use_dora: bool = False            # TRL ModelConfig: weight-decomposed adapters (DoRA magnitude vectors)
    lora_modules_to_save: Any = None  # TRL ModelConfig: modules trained whole beside the adapters (PEFT modules_to_save)
    freeze_vision_tower: bool = True
    freeze_multi_modal_projector: bool = False
    clue_aggregator: bool = False


def model_part_options(saved: dict, source) -> ModelPartOptions:
    """The model-part options of a run's saved config (`source`: the file it came from, named in every error); a
    value of the wrong type or out of its range is a ConfigError listing each."""
    hints = typing.get_type_hints(ModelPartOptions)
    values, errors = {}, []
    for f in dataclasses.fields(ModelPartOptions):
        if f.name in saved:
            try:
                values[f.name] = check_type(f.name, saved[f.name], hints[f.name])
            except ConfigError as err:
                errors.append(str(err))
    errors += range_errors(values)
    if errors:
        raise ConfigError(f"{source}: " + " ".join(errors) + " Rebuilding the run's model needs the values it was "
                          "trained with: mend the file, or load the run's final directory.")
    return ModelPartOptions(**values)
