"""jaxgrad.report.plots: the figures say what the console says (percent, chance, whole epochs)."""

import pytest

import jaxgrad.report.plots
from jaxgrad.report.plots import plot_run_curves, run_title


@pytest.fixture
def figs(monkeypatch):
    captured = []
    monkeypatch.setattr(jaxgrad.report.plots, "save_figure", lambda fig, path: captured.append(fig))
    return captured


def test_run_curves_accuracy_in_percent_with_chance_line_and_whole_epochs(figs):
    ep = [1, 2, 3]
    plot_run_curves(
        "unused.png",
        loss={"train": (ep, [2.0, 1.5, 1.2])},
        accuracy={"train": (ep, [0.25, 0.5, 0.625]), "val": (ep, [0.2, 0.4, 0.5])},
        chance=0.1,
        title="t",
    )
    loss_ax, acc_ax = figs[0].axes
    assert loss_ax.get_ylabel() == "cross-entropy loss"
    assert acc_ax.get_ylabel() == "accuracy (%)" and acc_ax.get_ylim() == (0.0, 100.0)
    train, val, chance = acc_ax.lines
    assert list(train.get_ydata()) == [25.0, 50.0, 62.5]  # the console's percentages
    assert list(chance.get_ydata()) == [10.0, 10.0]
    assert train.get_linestyle() != val.get_linestyle() and train.get_color() != val.get_color()
    ticks = [t for t in acc_ax.get_xticks() if 1 <= t <= 3]
    assert ticks == [1.0, 2.0, 3.0]  # whole epochs, no 1.5


def test_run_title_says_what_ran_and_marks_synthetic_data():
    assert run_title("CLIP", source="synthetic", flags=("--freeze-image",), loss="clip") == (
        "CLIP · data: synthetic — NOT a real dataset · loss clip · --freeze-image"
    )
    assert run_title("ViT", source="imagefolder:data/train") == "ViT · data: imagefolder:data/train"
