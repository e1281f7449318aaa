"""The README is the user's manual: short, its zoo table generated from the manifest, its links alive.

Torch-free and offline: it reads README.md, docs/*.md and zoo/pretrained_models/manifest.json.
"""

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from zoo.storage.zoo_table import END, MANIFEST, START, read_manifest, zoo_table

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 350

# The commands the README promises, byte for byte: the main job, and the tests (which .ci/run runs).
MAIN_JOB = "pip install torch==2.13.0 -e '.[train]' && rnnzoo fit --config zoo/configs/ptb_lstm_small.yaml"
TEST_COMMAND = (
    "pip install torch==2.13.0 -e '.[train,ray,dev]' && ruff check . && "
    "pytest -q -n auto --maxprocesses 4 --dist loadgroup"
)

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def code_lines(text: str) -> list[str]:
    """Every line inside a fenced code block."""
    return [line for block in FENCE.finditer(text) for line in block.group(0).splitlines()[1:-1]]


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lowercased, punctuation dropped,
    spaces to hyphens; a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # http:, https:, mailto:
    ]


def table_block(text: str) -> str:
    start, end = text.find(START), text.find(END)
    missing = f"README.md has no {START} ... {END} block: run `python -m zoo.storage.zoo_table`"
    assert start >= 0 and end > start, missing
    return text[start + len(START) : end].strip("\n")


def test_zoo_table_is_generated_from_the_manifest():
    block = table_block(README.read_text(encoding="utf-8"))
    assert block == zoo_table(read_manifest()).strip("\n"), (
        "README.md's zoo table differs from zoo/pretrained_models/manifest.json: run `python -m zoo.storage.zoo_table`"
    )


def test_zoo_table_has_one_row_per_entry():
    manifest = json.loads(MANIFEST.read_text(encoding="utf-8"))
    rows = zoo_table(read_manifest()).strip("\n").splitlines()[2:]  # below the header and its rule
    assert sorted(row.split(" | ")[0].strip("| `") for row in rows) == sorted(manifest["entries"])
    for name, entry in manifest["entries"].items():
        (row,) = [row for row in rows if row.startswith(f"| `{name}` |")]
        size = sum(f["size"] for f in entry["files"].values()) / 1e6
        assert f"{size:.1f} MB" in row
        assert f"{entry['parameters'] / 1e6:.1f} M" in row


def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines, at most {MAX_README_LINES}: move details into docs/ and link them"
    )


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / unquote(file)).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            broken.append(f"{target} (no heading #{anchor} in {resolved.relative_to(REPO)})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {', '.join(broken)}"


def test_docs_are_linked_from_the_readme():
    linked = {(REPO / target.partition("#")[0]).resolve() for target in relative_links(README)}
    missing = [doc.name for doc in DOCS if doc.resolve() not in linked]
    assert not missing, f"docs not linked from README.md: {', '.join(missing)}"


@pytest.mark.parametrize("command", [MAIN_JOB, TEST_COMMAND], ids=["main job", "tests"])
def test_readme_shows_the_commands_verbatim(command: str):
    assert command in code_lines(README.read_text(encoding="utf-8")), (
        f"README.md must show this command on a line of its own in a code block: {command}"
    )


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text(encoding="utf-8")
