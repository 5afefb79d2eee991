"""detkd's KD plot (``kd_terms.png``) and the local font that lets Ultralytics plot offline."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkd._offline import local_font, offline_guards
from detkd.engine.kd_terms import plot_kd_terms, read_terms, write_epoch_row


def _terms_csv(tmp_path: Path) -> Path:
    path = tmp_path / "kd_terms.csv"
    for epoch in (1, 2, 3):
        row = {"kd/cls": 0.5 / epoch, "kd/box": 0.2, "unweighted/kd/feat/p3": 10.0 / epoch, "data/images": 8}
        if epoch > 1:  # a term that a schedule switched on late: the first row lacks it
            row["kd/feat"] = 0.1 * epoch
        write_epoch_row(path, epoch, row)
    return path


def test_read_terms_keeps_epochs_and_marks_missing_values(tmp_path):
    epochs, columns = read_terms(_terms_csv(tmp_path))
    assert epochs == [1, 2, 3]
    assert columns["kd/cls"] == pytest.approx([0.5, 0.25, 0.5 / 3], rel=1e-5)  # 6 significant digits
    assert np.isnan(columns["kd/feat"][0]) and columns["kd/feat"][1:] == pytest.approx([0.2, 0.3])


def test_plot_kd_terms_draws_a_png_and_leaves_pyplot_alone(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    out = plot_kd_terms(_terms_csv(tmp_path))
    assert out == tmp_path / "kd_terms.png"
    with Image.open(out) as im:
        assert im.size[0] > 600 and im.size[1] > 300
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas
    assert plt.get_fignums() == before


def test_plot_kd_terms_without_terms_is_a_warning_not_an_error(tmp_path, caplog):
    path = tmp_path / "kd_terms.csv"
    write_epoch_row(path, 1, {"data/images": 8})
    assert plot_kd_terms(path) is None and "no KD terms to plot" in caplog.text
    assert plot_kd_terms(tmp_path / "missing.csv") is None and "cannot read" in caplog.text


def test_local_font_falls_back_to_the_font_matplotlib_ships(tmp_path, monkeypatch):
    import ultralytics.utils as ul_utils

    monkeypatch.setattr(ul_utils, "USER_CONFIG_DIR", tmp_path)
    font = local_font("Arial.ttf")
    assert font is not None and font.name == "DejaVuSans.ttf" and font.is_file()
    (tmp_path / "Arial.ttf").write_bytes(font.read_bytes())
    assert local_font("Arial.ttf") == tmp_path / "Arial.ttf"


def test_offline_guards_swap_the_plotting_font_lookup_and_restore_it():
    import ultralytics.data.utils as ul_data
    import ultralytics.utils.plotting as ul_plotting

    original = (ul_plotting.check_font, ul_data.check_font)
    with offline_guards():
        assert ul_plotting.check_font is local_font and ul_data.check_font is local_font
    assert (ul_plotting.check_font, ul_data.check_font) == original
