"""Every ```python block of README.md and docs/*.md runs (pytest-examples), so the documentation
cannot drift from the API. Bash blocks are not run. A block fenced as ```python test="skip"
reason="..."``` is skipped with its reason; a block that reads the Maia-1 networks by their
documented path (../shared/models) runs where they are and skips, like the other shared_data tests,
where they are not."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from pytest_examples import CodeExample, EvalExample, find_examples

ROOT = Path(__file__).resolve().parents[1]
SHARED_MODELS = "../shared/models"
# one torch thread: the examples are tiny, and two threads on shared cores spin against each other
pytestmark = pytest.mark.usefixtures("one_thread")


def _examples():
    paths = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [pytest.param(ex, marks=[pytest.mark.shared_data] if SHARED_MODELS in ex.source else [],
                         id=f"{ex.path.relative_to(ROOT)}:{ex.start_line}")
            for ex in find_examples(*paths)]


def test_every_page_with_python_is_collected():
    # a fence the collector does not see (```Python3, an indented block) would silently go untested
    found = {ex.path.name for ex in find_examples(ROOT / "README.md", ROOT / "docs")}
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        if "```python" in page.read_text():
            assert page.name in found, page


@pytest.mark.parametrize("example", _examples())
def test_example_runs(example: CodeExample, eval_example: EvalExample, request, monkeypatch):
    settings = example.prefix_settings()
    if settings.get("test") == "skip":
        pytest.skip(settings.get("reason", "marked test=\"skip\" in the page"))
    if SHARED_MODELS in example.source:
        models = request.getfixturevalue("shared_models")  # skips when the networks are absent
        if (ROOT.parent / "shared" / "models").resolve() != Path(models).resolve():
            example.source = example.source.replace(SHARED_MODELS, os.fspath(models))
    monkeypatch.chdir(ROOT)  # the examples name files as from the repository root
    import torch

    threads = torch.get_num_threads()  # an example may set one thread (the Maia-1 fast paths do)
    failure = None
    try:
        eval_example.run(example)
    except Exception as e:
        # pytest-examples' rewritten code objects break pytest's traceback report (INTERNALERROR, the
        # failure uncounted), so the failure is one line naming the page's line, raised outside the
        # `except` so that pytest does not walk the original traceback
        lines, tb = [], e.__traceback__
        while tb is not None:  # not traceback.extract_tb, which fails on those code objects too
            if tb.tb_frame.f_code.co_filename in (str(example.path), example.module_name):
                lines.append(tb.tb_lineno)
            tb = tb.tb_next
        where = f"{example.path.relative_to(ROOT)}:{lines[-1] if lines else example.start_line}"
        failure = f"{where}: {type(e).__name__}: {e}"
    finally:
        torch.set_num_threads(threads)
    if failure:
        pytest.fail(failure, pytrace=False)


def test_config_reference_lists_every_key_of_the_schema():
    """docs/gen_config_ref.py (the MkDocs hook) writes one row per key of the typed schema, with the
    comment beside it in maia_adapt/config.py: compared here with the keys OmegaConf itself builds."""
    import importlib.util

    from omegaconf import OmegaConf

    from maia_adapt.config import Config

    spec = importlib.util.spec_from_file_location("gen_config_ref", ROOT / "docs" / "gen_config_ref.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    page = gen.markdown()
    documented = {line.split("`")[1] for line in page.splitlines() if line.startswith("| `")}

    def keys(node, prefix=""):
        for k in node.keys():
            v = node._get_node(k)
            if OmegaConf.is_dict(v) and OmegaConf.is_missing(node, k):
                # a group (model, data, ...) is missing until its option is chosen: its schema's keys
                v = OmegaConf.structured(v._metadata.ref_type)
            if OmegaConf.is_dict(v) and OmegaConf.get_type(v) not in (dict, None):
                yield from keys(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"

    schema = set(keys(OmegaConf.structured(Config)))
    assert schema and schema == documented, (schema ^ documented)
    assert "| `train.teacher_contrast` | `float` | `0.0` |" in page  # type and default from the dataclass
    assert "the part of the policy the Elo changes" in page  # the comment written above the field
