"""The documentation a reader can follow: every document the code, tests and docs cite exists, and the README stays
a short entry point into docs/."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.md)\b")


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in out.stdout.split()]


def test_every_cited_document_exists():
    """A citation of a .md file (``docs/method.md``, a relative link in docs/, a page of docs/ by name, the report
    the pipeline writes) names a file of this repository; notes kept outside the repository are never cited."""
    missing = []
    for path in _tracked("*.py", "*.md", "*.yaml", "*.toml", "Makefile", ".ci/*"):
        for match in CITED.finditer(path.read_text()):
            name = match.group(1)
            if not any((folder / name).is_file() for folder in (ROOT, path.parent, ROOT / "docs", ROOT / "reports")):
                missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert missing == []


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if f"docs/{p}" not in readme] == []
