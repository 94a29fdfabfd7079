"""What the benchmark scripts share: where the real data lives, and the options naming a model, its data and a source."""

from __future__ import annotations

import argparse
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def uap_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with --model (required), --data (PneumoniaMNIST) and --source (the ImageNet photos)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True)
    p.add_argument("--data", default=str(DATA / "pneumoniamnist.npz"))
    p.add_argument("--source", default=str(DATA / "imagenet-samples"))
    return p
