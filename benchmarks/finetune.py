"""Fine-tuning EfficientNet-Lite0 from its packaged ImageNet weights on PneumoniaMNIST, picked on validation.

A small grid over the input size and the peak learning rate (and the same network from random initialization,
the paper's Section 3.3), each a ``raylab train`` run (:func:`raylab.train.finetune`); the configuration with the
best validation accuracy is the pick, its test accuracy the number to set beside the MedMNIST v2 benchmark.
Every model is saved, so ``raylab audit`` can be run on the pick and its from-scratch twin.

    python benchmarks/finetune.py --out runs/finetune --json docs/bench/cpu-finetune-lite0.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from raylab.bench import cpu_name  # noqa: E402
from raylab.data.medical import load_medical  # noqa: E402
from raylab.models import ModelSpec, save_classifier  # noqa: E402
from raylab.train import TrainConfig, finetune  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/pneumoniamnist.npz"))
    p.add_argument("--out", type=Path, default=Path("runs/finetune"))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128])
    p.add_argument("--lrs", type=float, nargs="+", default=[0.01, 0.05])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--scratch-epochs", type=int, default=None, help="epochs of the from-scratch twin (default: --epochs)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--scratch-only", action="store_true",
                   help="train only the from-scratch twin of the pick recorded in --json, and add it there")
    a = p.parse_args()
    data = load_medical(a.data)
    a.out.mkdir(parents=True, exist_ok=True)
    runs = []

    def train(size: int, lr: float, backbone: str | None, epochs: int) -> dict:
        name = f"lite0-{'transfer' if backbone else 'scratch'}-{size}px-lr{lr:g}-e{epochs}"
        path = a.out / f"{name}.pt"
        spec = ModelSpec(arch="efficientnet_lite0", num_classes=data.num_classes, in_channels=data.channels,
                         image_size=size, normalize="lite", class_names=data.class_names)
        started = time.perf_counter()
        model, m = finetune(data, spec=spec, config=TrainConfig(epochs=epochs, lr=lr, batch_size=64),
                            backbone_weights=backbone,
                            on_epoch=lambda e: print(f"  {name}: {e}", flush=True))
        save_classifier(model, path, extra={"test_accuracy": m["test_accuracy"]})
        row = {"name": name, "path": str(path), "size": size, "lr": lr, "epochs": epochs, "transfer": backbone is not None,
               "val_accuracy": m["history"][-1].get("val_accuracy"), "test_accuracy": m["test_accuracy"],
               "seconds": time.perf_counter() - started}
        print(json.dumps(row), flush=True)
        runs.append(row)
        return row

    if a.scratch_only:
        if not (a.json and a.json.exists()):
            p.error("--scratch-only needs --json naming an existing result with its pick")
        result = json.loads(a.json.read_text())
        pick = result["pick"]
        result["scratch"] = train(pick["size"], pick["lr"], None, a.scratch_epochs or pick["epochs"])
        result["runs"].append(result["scratch"])
        a.json.write_text(json.dumps(result, indent=2))
        print(f"from scratch, pick's settings: test {result['scratch']['test_accuracy']:.3f} "
              f"(transfer {pick['test_accuracy']:.3f})")
        return 0
    for size in a.sizes:
        for lr in a.lrs:
            train(size, lr, "imagenet", a.epochs)
    pick = max((r for r in runs if r["transfer"]), key=lambda r: r["val_accuracy"])
    twin = train(pick["size"], pick["lr"], None, a.scratch_epochs or a.epochs)
    result = {"machine": f"{cpu_name()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "data": str(a.data), "runs": runs, "pick": pick, "scratch": twin,
              "medmnist_v2_benchmark_test_accuracy": {"ResNet-18 (28)": 0.854, "ResNet-18 (224)": 0.864,
                                                      "ResNet-50 (28)": 0.854, "ResNet-50 (224)": 0.884}}
    print(f"pick (best validation accuracy): {pick['name']}: val {pick['val_accuracy']:.3f}, test {pick['test_accuracy']:.3f}; "
          f"from scratch, same settings: test {twin['test_accuracy']:.3f}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
