"""Redraw every figure of the README and docs/ from the committed results.

    python scripts/figures.py                       # results/ -> docs/figures/
    python scripts/figures.py --out /tmp/figures    # somewhere else

Nothing is trained or loaded: the figures come from results/ (per-run rows and small tables).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="the committed results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures", help="where the PNGs go")
    args = parser.parse_args(argv)

    from vit.studies import doc_figures, results

    try:
        paths = doc_figures.draw_all(args.results, args.out)
    except (results.ResultsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
