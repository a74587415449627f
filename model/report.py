"""Model-card numbers from a training run: the held-out table and the learning-curve PNG.

Reads ``model/work/runs/<name>/log.jsonl`` (written by ``model/train.py``), prints the markdown
table of held-out evaluations and draws ``model/learning_curve.png`` (not committed: it plots the run named).

    python -m model.report long
"""

from __future__ import annotations

import argparse
import json

from model.train import WORK, plot

HEADER = (
    "| step | tokens seen | train hours (wall) | held-out acc t=1.0 | acc t=0.5 | held-out encoder loss |\n"
    "|---|---|---|---|---|---|"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", help="run directory under model/work/runs/")
    args = ap.parse_args()

    log_path = WORK / "runs" / args.name / "log.jsonl"
    with open(log_path) as fh:
        rows = [json.loads(line) for line in fh]
    train = [r for r in rows if r["kind"] == "train"]
    print(HEADER)
    for e in (r for r in rows if r["kind"] == "eval"):
        hours = max((t["train_hours"] for t in train if t["step"] <= e["step"]), default=0.0)
        print(
            f"| {e['step']} | {e['tokens'] / 1e6:.2f}M | {hours:.2f} | {100 * e['acc_t1.0']:.1f}% "
            f"| {100 * e['acc_t0.5']:.1f}% | {e['val_enc_loss']:.3f} |"
        )
    plot(log_path, WORK.parent / "learning_curve.png")


if __name__ == "__main__":
    main()
