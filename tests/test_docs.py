"""The guides in docs/ are tested: every ```python block runs, so a guide cannot drift from the code.

The blocks of one guide run in order in one shared namespace (later blocks use earlier names), with
the repository root on sys.path and a fresh temporary folder as the working directory. Every relative
link in the guides must point to a file that exists (and, for a guide, to a heading it has).
"""

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS = REPO_ROOT / "docs"
GUIDES = sorted(DOCS.glob("*.md"))

# A fence opening with exactly ```python (not ```python-text or ```pycon), up to the closing ```.
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
# [text](target) and ![alt](target); the target ends at whitespace or ")".
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number of the block's first line, code) for every ```python block of a Markdown file."""
    text = path.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in PYTHON_BLOCK.finditer(text)]


def without_code(text: str) -> str:
    """The Markdown outside fenced code blocks, where links and headings live."""
    return re.sub(r"^```.*?^```[ \t]*$", "", text, flags=re.MULTILINE | re.DOTALL)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # markup, and links to their text
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_there_are_guides():
    names = [path.name for path in GUIDES]
    assert names[:6] == ["01-data.md", "02-attention.md", "03-loss.md", "04-model.md", "05-training.md", "06-reading-a-run.md"]


@pytest.mark.parametrize("guide", GUIDES, ids=[path.name for path in GUIDES])
def test_guide_snippets_run(guide, tmp_path, monkeypatch):
    blocks = python_blocks(guide)
    assert blocks, f"{guide.name} has no ```python blocks"
    # A guide whose snippets check nothing could drift from the code without a test noticing.
    assert any(re.search(r"^\s*assert\b", code, re.MULTILINE) for _, code in blocks), f"{guide.name} asserts nothing"
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO_ROOT))
    namespace = {"__name__": f"docs_{guide.stem.replace('-', '_')}"}
    # The snippets use tiny tensors, where a second intra-op thread gains nothing; on a busy machine
    # threads waiting for a descheduled peer made them up to 70x slower (a 0.2 s loop took 15 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for line, code in blocks:
            # Line numbers in tracebacks are the guide's own: the code is padded to start at its line.
            exec(compile("\n" * (line - 1) + code, str(guide), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        # A snippet that failed half-way must not leave a process group or open figures behind.
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        torch.set_grad_enabled(True)


@pytest.mark.parametrize("guide", GUIDES, ids=[path.name for path in GUIDES])
def test_relative_links_point_to_existing_files(guide):
    broken = []
    for target in MARKDOWN_LINK.findall(without_code(guide.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # https:, mailto: and the like
        path_part, _, fragment = target.partition("#")
        linked = (guide.parent / path_part).resolve() if path_part else guide
        if not linked.exists():
            broken.append(f"{target} ({linked} does not exist)")
        elif fragment and linked.suffix == ".md":
            anchors = {anchor(h) for h in HEADING.findall(without_code(linked.read_text()))}
            if fragment not in anchors:
                broken.append(f"{target} (no heading with anchor #{fragment} in {linked.name})")
    assert not broken, f"{guide.name} has broken links: {broken}"


def test_link_checker_catches_a_broken_link(tmp_path):
    """The link test above must be able to fail."""
    guide = tmp_path / "guide.md"
    guide.write_text("# Top\n\n[ok](#top) [missing](nothere.py) [bad anchor](#nowhere)\n\n```python\n# [in code](ignored.py)\n```\n")
    with pytest.raises(AssertionError, match=r"nothere\.py.*#nowhere"):
        test_relative_links_point_to_existing_files(guide)
