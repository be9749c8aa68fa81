"""The README and docs/ link to files and headings that exist, as GitHub renders them."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a comment in a code block is no heading
    return {slug(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def test_every_relative_link_reaches_its_file_and_heading():
    broken = []
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if link.startswith(("http://", "https://")):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in anchors(target)):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []


def test_the_slug_follows_githubs_rule():
    assert slug("The patch-wise ViT near convergence (`ablation=fmnist_patch`)") == (
        "the-patch-wise-vit-near-convergence-ablationfmnist_patch"
    )
    assert slug("torch.compile on a CPU") == "torchcompile-on-a-cpu"
