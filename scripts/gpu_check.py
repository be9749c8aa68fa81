"""The first run on a GPU: versions, the CUDA tests, every scheme compiled in bf16 with its
attention kernel, host syncs in a training step, the benchmark with MFU, the Fashion-MNIST
recipe to its accuracy, and class folders at 224 px. Writes outputs/gpu_check/report.md and
report.json; needs no network.

    make gpu-check                         # on a machine with a CUDA GPU
    python scripts/gpu_check.py --cpu      # the same checks, small, on a CPU (what CI runs)
"""

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU: tests the script itself")
    parser.add_argument("--out", default="outputs/gpu_check", help="where report.md and report.json go")
    args = parser.parse_args(argv)
    import torch

    from vit.studies import device_check as dc

    if not args.cpu and not torch.cuda.is_available():
        print(
            "error: no CUDA GPU here: make gpu-check needs one (scripts/gpu_check.py --cpu checks the script on a CPU)",
            file=sys.stderr,
        )
        return 1
    out, small = Path(args.out).resolve(), args.cpu
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if small else "cuda"
    limit = 120 if small else 300  # seconds per scripted check
    machine = dc.versions()
    checks = [
        dc.run_check("tests", dc.tests, small, 600),
        dc.run_check("schemes", dc.schemes, device, not small, small),
        dc.run_check("host syncs", dc.host_syncs, device),
        dc.run_check("benchmark", dc.benchmark, out, small, limit),
        dc.run_check("fashion-mnist recipe", dc.recipe, out, small, limit),
        dc.run_check("class folders", dc.class_folders, out, small, limit),
    ]
    title = f"{'CPU' if small else 'GPU'} check: {machine.get('device', 'cpu')}, {time.strftime('%Y-%m-%d')}"
    (out / "report.md").write_text(dc.markdown(title, machine, checks))
    report = {"title": title, "machine": machine, "checks": [asdict(c) for c in checks]}
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [c.name for c in checks if c.status == "failed"]
    print(f"report: {out / 'report.md'}" + (f" ({len(failed)} failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
