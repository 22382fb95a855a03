"""The Python snippets of the README, the landing page and the user guide run as shown.

The code blocks of one page run in order in one namespace (a later block may use what an earlier
one defined, as a reader would), and every DEQ solve they run must converge: a non-convergence
warning fails the test. Bash blocks are not run here (the command line has its own tests).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from deepinv_deq import DEQ

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", "docs/index.rst"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs" / "user_guide").glob("*.rst")
)


def python_blocks(path: Path) -> list[str]:
    """The ``python`` code blocks of a Markdown or reStructuredText file, dedented."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    blocks = []
    for match in re.finditer(
        r"^( *)\.\. code-block:: python\n((?:\1 +:.*\n)*)\n", text, flags=re.M
    ):
        lines = []
        for line in text[match.end() :].splitlines():
            if line.strip() and not line.startswith(match.group(1) + " "):
                break
            lines.append(line)
        indent = min(len(l) - len(l.lstrip()) for l in lines if l.strip())
        blocks.append("\n".join(l[indent:] for l in lines).strip() + "\n")
    return blocks


PAGES_WITH_CODE = [p for p in PAGES if python_blocks(ROOT / p)]


def test_pages_have_snippets():
    assert "README.md" in PAGES_WITH_CODE and "docs/index.rst" in PAGES_WITH_CODE


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE)
def test_snippets_run_and_converge(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a snippet writes lands in a temporary folder
    namespace: dict = {"__name__": "__snippet__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, block in enumerate(python_blocks(ROOT / page)):
            exec(compile(block, f"{page}[block {i}]", "exec"), namespace)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "converge" in m or "diverge" in m], messages
    # the forward solve does not warn on MAX_ITER: read the last statistics of every DEQ left
    models = [v for v in namespace.values() if isinstance(v, DEQ)]
    for model in models:
        for stats in (model.forward_stats, model.backward_stats):
            if stats is not None:
                assert stats.status_names() == ["CONVERGED"] * len(stats.status_names()), stats
