"""The documentation pages under docs/ build with warnings as errors, as ``sphinx-build -W`` does."""

from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.filterwarnings("ignore::sphinx.deprecation.RemovedInSphinx11Warning")  # Sphinx's own napoleon, and myst
def test_the_documentation_builds_with_warnings_as_errors(tmp_path, capsys):
    """Every page (myst Markdown) and the API reference (autodoc of every module's docstrings, read
    by napoleon) build into HTML without a warning: a broken link to a page or a heading, a
    docstring that is not valid reStructuredText, a module that does not import."""
    pytest.importorskip("myst_parser", reason="the docs extra is not installed: pip install -e '.[docs]'")
    from sphinx.cmd.build import build_main

    # in this process, where the zoo is already imported: a separate sphinx-build would import JAX again
    status = build_main(["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"), str(DOCS),
                         str(tmp_path / "html")])
    assert status == 0, capsys.readouterr().err
    html = (tmp_path / "html" / "results.html").read_text(encoding="utf-8")
    assert "Regenerating the tables" in html and "46.05" in html  # a page, and a generated table in it
    assert (tmp_path / "html" / "_api" / "zoo.functional.attention.html").is_file()  # the API reference
