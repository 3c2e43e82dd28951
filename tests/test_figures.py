"""Every figure says what it shows: titles that name the model, the data and the class asked for,
full grids, labelled rows and colour bars, data and reconstructions on one scale; checked on the
figure objects as they are saved, and on the PNG files."""

import numpy as np
import pytest
import torch
from matplotlib import image as mpimg

from pyro_vae import plots
from pyro_vae.runs import figures


@pytest.fixture
def saved(monkeypatch):
    """Each figure as it is saved: (path, [axes titles], [(image array shape, y tick labels)], colour bar labels)."""
    seen = []
    real = plots.save

    def record(fig, path, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
        bars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
        seen.append({"path": path, "titles": [ax.get_title() for ax in axes],
                     "images": [(ax.images[0].get_array().shape, [t.get_text() for t in ax.get_yticklabels()])
                                for ax in axes if ax.images], "bars": bars})
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(plots, "save", record)
    return seen


def trained(name, digits, make_model):
    torch.manual_seed(0)
    return make_model(name, digits).eval()


def test_unconditional_samples_fill_a_square_grid_and_name_model_and_data(tmp_path, digits, make_model, saved):
    figures.sample_grid(trained("vae", digits, make_model), digits, tmp_path / "s.png", n=64)
    (shape, _), = saved[-1]["images"]
    assert shape == (8 * 9 - 1, 8 * 9 - 1)  # 64 images of 8 x 8 in 8 full rows, a pixel between
    assert "VAE on digits" in saved[-1]["titles"][0] and "p(z)" in saved[-1]["titles"][0]
    png = mpimg.imread(tmp_path / "s.png")
    assert png.shape[0] > 100 and png.shape[1] > 100


def test_titles_name_the_parts_that_are_not_the_models_defaults(tmp_path, digits, make_model, saved):
    torch.manual_seed(0)
    model = make_model("vae", digits, prior="mog", guide="iaf", likelihood="bernoulli").eval()
    figures.sample_grid(model, digits, tmp_path / "s.png", n=4)
    figures.latent_figure(model, digits, tmp_path / "l.png")
    titles = [" ".join(figure["titles"][0].split()) for figure in saved]  # wrapped titles read as one line
    assert titles[0].startswith("VAE (prior mog, guide iaf) on digits")  # bernoulli is vae's own
    assert titles[1].startswith("VAE (prior mog, guide iaf) latent space")
    torch.manual_seed(0)
    figures.sample_grid(make_model("cvae1", digits).eval(), digits, tmp_path / "c.png", n=10)
    assert " ".join(saved[-1]["titles"][0].split()).startswith("CVAE1 on digits")  # its own prior, the conditional one


def test_conditional_samples_one_full_labelled_row_per_class(tmp_path, digits, make_model, saved):
    figures.sample_grid(trained("cvae1", digits, make_model), digits, tmp_path / "s.png", n=64)
    (shape, ticks), = saved[-1]["images"]
    assert shape == (10 * 9 - 1, 7 * 9 - 1)  # 64 asked -> 7 per class, 70 in all: no ragged row
    assert ticks == [str(k) for k in range(10)]
    figures.sample_grid(trained("cvae1", digits, make_model), digits, tmp_path / "s3.png", n=64, label=3)
    assert "class 3" in " ".join(saved[-1]["titles"][0].split())


def test_reconstructions_put_binary_data_beside_binary_draws(tmp_path, digits, make_model, saved):
    figures.reconstructions(trained("vae", digits, make_model), digits, tmp_path / "r.png", n=16)
    (shape, ticks), = saved[-1]["images"]
    assert shape == (3 * 9 - 1, 16 * 9 - 1) and ticks == ["data", "draw", "mean"]


def test_latent_figure_has_a_labelled_colour_bar(tmp_path, digits, make_model, saved):
    figures.latent_figure(trained("vae", digits, make_model), digits, tmp_path / "l.png")
    assert saved[-1]["bars"] == ["true class"]
    assert "latent space, digits test set" in saved[-1]["titles"][0]


def test_grid_canvas_geometry_for_grey_and_colour():
    grey = plots.grid_canvas(torch.rand(10, 12), (3, 4), ncol=5)
    assert grey.shape == (2 * 4 - 1, 5 * 5 - 1)
    colour = plots.grid_canvas(torch.rand(4, 3 * 6 * 5), (3, 6, 5), ncol=2)
    assert colour.shape == (2 * 7 - 1, 2 * 6 - 1, 3)
    assert np.all(colour[6, :, :] == 1.0)  # the gap between rows is white


def test_close_values_keep_their_own_tick_labels_with_no_offset(tmp_path):
    """Validation bounds that differ by hundredths (-226.30 to -226.22) read as themselves on every
    figure's axes, not as small numbers under an offset in the corner."""
    panels = {"validation IWAE bound": {"trained on": [[-226.30 + 0.005 * e for e in range(16)]]}}
    path = plots.curve_bands(panels, tmp_path / "c.png", "close values", "nats")
    assert mpimg.imread(path).shape[0] > 100
    import matplotlib.pyplot as plt
    fig, (curve, dots) = plt.subplots(1, 2)
    curve.plot([1, 2, 3], [-226.30, -226.26, -226.22])
    dots.errorbar([-227.14, -227.19], [0, 1], xerr=[0.27, 0.23], fmt="o")  # as compare's intervals
    plots.save(fig, tmp_path / "d.png")
    for axis in (curve.yaxis, dots.xaxis):
        assert axis.get_major_formatter().get_offset() == ""
        assert any(t.get_text().lstrip("\u2212-").startswith(("226", "227")) for t in axis.get_ticklabels())
