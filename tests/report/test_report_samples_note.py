"""The report's Samples section under a run that started from a built-in random-init pipeline says its samples are
noise in both rows and names what shows a method's effect on images (user trial 6: the shipped diffusion examples'
grids were pure noise with nothing saying why); a run from any other pipeline gets no such note."""
from PIL import Image

from preflab.report.html import _samples
from preflab.report.runs import RunData


def _run(tmp_path, name, model, loss_type="diffusion_dpo"):
    path = tmp_path / name
    path.mkdir()
    Image.new("RGB", (8, 4)).save(path / "samples.png")
    return RunData(name=name, path=path, config={"task": "diffusion", "model_name_or_path": model,
                                                 "loss_type": loss_type})


def test_samples_of_a_builtin_pipeline_run_are_said_to_be_noise_and_a_real_pipelines_are_not(tmp_path):
    html = _samples([_run(tmp_path, "tiny", "builtin:tiny-sd"), _run(tmp_path, "real", "models/my-sd")])
    assert html.count("its samples are noise in both rows") == 1
    assert "tiny started from builtin:tiny-sd, a tiny random-init text-to-image pipeline" in html
    assert "preflab demo diffusion" in html
    assert html.count("top row reference, bottom row trained model") == 2      # both grids are still shown
    assert "real started from" not in html


def test_the_note_counts_the_rows_of_the_grid_it_is_under(tmp_path):
    """User trial 22: a self_npo grid has one row (the negative model) and a ppd grid the base model's and one per
    user, yet the note said "noise in both rows" under every grid."""
    html = _samples([_run(tmp_path, "npo", "builtin:tiny-sd", "self_npo"),
                     _run(tmp_path, "ppd", "builtin:tiny-sd", "ppd"), _run(tmp_path, "dpo", "builtin:tiny-sd")])
    assert html.count("its samples are noise in its one row, as expected") == 1
    assert html.count("its samples are noise in every row, as expected") == 1
    assert html.count("its samples are noise in both rows, as expected") == 1
