"""Every citation of the repository's docs resolves: a cited docs/*.md file exists, a cited
numbered section of it ("docs/spec.md section 2") is one of its headings, and a cited title
(docs/kernels.md, "Images") is a heading of that file or the name that opens one of its
paragraphs or bullets. The code and docs point readers there (issue 16), so a renamed or
removed section must not leave a dangling citation behind."""
import os
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SUFFIXES = {".py", ".cu", ".cuh", ".cpp", ".h", ".md", ".rst", ".sh"}
SKIP_DIRS = {".git", ".venv", "build", "rounds", "oneoff", "__pycache__"}
# docs/<file>.md, then a quoted title or "section N"; a citation may wrap across comment lines
CITATION = re.compile(r'(docs/[\w/]+\.md)`?,? (?:"([^"]+)"|section (\d+[a-z]?)\b)')
CONTINUATION = re.compile(r"\n[ \t]*(?://|#|\*)?[ \t]*")


def _sources():
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            if pathlib.Path(name).suffix in SUFFIXES:
                yield pathlib.Path(folder) / name


def _citations():
    for path in _sources():
        flat = CONTINUATION.sub(" ", path.read_text(encoding="utf-8", errors="replace"))
        for m in CITATION.finditer(flat):
            yield path.relative_to(ROOT), m.group(1), m.group(2), m.group(3)


def _names(doc):
    """Headings of doc (without the #s) and the names that open its paragraphs and bullets."""
    headings, leads = [], []
    for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            headings.append(line.lstrip("#").strip())
        else:
            leads.append(re.sub(r"^\s*(?:[-*]\s+)?\**", "", line))
    return headings, leads


def test_the_repository_cites_its_docs():
    assert len(list(_citations())) >= 50  # the pattern still finds the citations


@pytest.mark.parametrize("source,doc,title,section", list(_citations()),
                         ids=lambda v: str(v) if v else "-")
def test_citation_resolves(source, doc, title, section):
    assert (ROOT / doc).is_file(), f"{source} cites {doc}, which does not exist"
    headings, leads = _names(doc)
    if section is not None:
        assert any(re.match(rf"{section}\.\s", h) for h in headings), (
            f"{source} cites {doc} section {section}; its numbered headings: "
            f"{[h for h in headings if h[:1].isdigit()]}")
    else:
        assert any(title in h for h in headings) or any(l.startswith(title) for l in leads), (
            f'{source} cites {doc}, "{title}": neither a heading nor a paragraph of that name')
