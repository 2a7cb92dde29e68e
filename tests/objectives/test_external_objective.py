"""An objective outside preflab, named "package.module:Class" or "path/to/file.py:Class" (get_objective and
loss_type): it loads through preflab.plugins.import_object, as reward functions do."""
import pytest
import torch

from preflab.errors import ConfigError
from preflab.objectives import get_objective

from pair_fixture import toy

SOURCE = '''
from preflab.objectives.dpo import DPO


class HalfDPO(DPO):
    """DPO's loss times 1/2: a user's own objective."""

    def __call__(self, batch):
        out = super().__call__(batch)
        out.loss = out.loss / 2
        return out
'''


def test_an_objective_from_a_file_or_a_module_is_that_class(tmp_path, monkeypatch):
    (tmp_path / "my_losses_ext.py").write_text(SOURCE)
    batch, _, _ = toy()
    plain = get_objective("sigmoid", beta=0.1)(batch).loss
    from_file = get_objective(f"{tmp_path}/my_losses_ext.py:HalfDPO", beta=0.1)
    assert type(from_file).__name__ == "HalfDPO"
    assert torch.allclose(from_file(batch).loss, plain / 2, rtol=0, atol=1e-12)
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = get_objective("my_losses_ext:HalfDPO", beta=0.1)
    assert torch.allclose(from_module(batch).loss, plain / 2, rtol=0, atol=1e-12)
    with pytest.raises(ConfigError, match="Did you mean 'HalfDPO'"):
        get_objective("my_losses_ext:HalfDP0", beta=0.1)
    with pytest.raises(ConfigError, match="the file .*nothere.py does not exist"):
        get_objective(f"{tmp_path}/nothere.py:HalfDPO")


def test_a_user_objective_in_a_loss_type_list_logs_under_its_class_name(tmp_path):
    """loss_type [sigmoid, /abs/path/x.py:HalfDPO] logged `loss//abs/path/x.py:HalfDPO`; the part is now
    `loss/HalfDPO`, its value the part's own loss, and two parts of one name are refused."""
    (tmp_path / "my_losses_list.py").write_text(SOURCE)
    spec = f"{tmp_path}/my_losses_list.py:HalfDPO"
    batch, _, _ = toy()
    out = get_objective(["sigmoid", spec], beta=0.1)(batch)
    plain = get_objective("sigmoid", beta=0.1)(batch).loss
    assert sorted(k for k in out.metrics if k.startswith("loss/")) == ["loss/HalfDPO", "loss/sigmoid"]
    assert torch.allclose(out.metrics["loss/HalfDPO"], plain / 2, rtol=0, atol=1e-12)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "my_losses_list.py").write_text(SOURCE)
    with pytest.raises(ConfigError, match=r"more than one part is named 'HalfDPO'"):
        get_objective([spec, f"{tmp_path}/other/my_losses_list.py:HalfDPO"], beta=0.1)
    with pytest.raises(ConfigError, match=r"more than one part is named 'sigmoid'"):
        get_objective(["sigmoid", "sigmoid"], beta=0.1)
