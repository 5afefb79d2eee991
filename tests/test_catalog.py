from pathlib import Path

import pytest

from detkd import catalog
from detkd.cli import main

ROOT = Path(__file__).resolve().parents[1]


BUILTIN = {
    "feature": ["mse", "fine_grained", "fgd", "cwd", "mgd", "pkd", "relation"],
    "logit": ["bce", "kl"],
    "box": ["ld", "iou", "bounded_l2"],
}


def test_every_method_is_in_the_catalog_once():
    listed = [(m.family, m.name) for m in catalog.all_methods()]
    assert listed == [(f, n) for f, names in BUILTIN.items() for n in names]


@pytest.mark.parametrize(
    "cls", [m.options for m in catalog.all_methods() if m.options] + list(catalog.SECTIONS.values())
)
def test_every_option_is_documented(cls):
    docs = catalog.attribute_docs(cls)
    scalar = [n for n, _, _ in catalog.options_of(cls)]
    assert scalar and all(docs.get(n) for n in scalar), (cls.__name__, set(scalar) - set(docs))


def test_method_options_live_where_the_config_expects_them():
    for m in catalog.all_methods():
        if m.options:
            section = catalog.FAMILIES[m.family]()
            assert type(getattr(section, m.name)) is m.options and section.method_options[m.name] == m.options()


def test_docs_reference_matches_the_code():
    page = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    block = page.split("<!-- kd-reference:start -->\n", 1)[1].split("<!-- kd-reference:end -->", 1)[0]
    assert block == catalog.render_markdown(), "docs/recipe.md out of date: run python tools/update_kd_reference.py"


def test_readme_method_table_matches_the_registry():
    page = (ROOT / "README.md").read_text(encoding="utf-8")
    block = page.split("<!-- methods:start -->\n", 1)[1].split("<!-- methods:end -->", 1)[0]
    assert block == catalog.render_method_table(), "README.md out of date: run python tools/update_kd_reference.py"


def test_losses_command_lists_methods_and_defaults(capsys):
    assert main(["losses"]) == 0
    out = capsys.readouterr().out
    for m in catalog.all_methods():
        assert f"- {m.name}: " in out
    assert "kd.feature.cwd.temperature = 1.0" in out and "kd.box.bounded_l2.margin = 0.0" in out
    assert main(["losses", "--markdown"]) == 0
    assert capsys.readouterr().out == catalog.render_markdown()


def test_docs_kd_yaml_example_loads(tmp_path):
    from detkd.config import load_kd_config

    page = (ROOT / "docs" / "recipe.md").read_text(encoding="utf-8")
    block = "# kd.yaml" + page.split("```yaml\n# kd.yaml", 1)[1].split("```", 1)[0]
    (tmp_path / "kd.yaml").write_text(block)
    cfg = load_kd_config(tmp_path / "kd.yaml")
    assert cfg.feature.method == "pkd" and cfg.feature.schedule.stop_epoch == -10
