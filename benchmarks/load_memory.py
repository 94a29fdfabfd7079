"""Peak memory of decoding a photo folder into one tensor (what `raylab uap` and `raylab audit` hold): raylab's
:class:`raylab.data.memory.ImageStack`, which writes each image into its place, beside the list of images and
``torch.stack`` it replaced, side by side on the same photos.

    python benchmarks/load_memory.py [--source DIR] [--size 299] [--channels 3] [--out FILE]

Each way runs in a process of its own: the kernel's peak resident set (VmHWM) is reset after the imports
(``/proc/self/clear_refs``, Linux), and the figure is the peak's rise over the resident set before the load, in MiB,
beside the size of the images' tensor.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA  # noqa: E402


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(way: str, source: str, size: int, channels: int) -> dict:
    import torch

    from raylab.data.natural import iter_image_folder, list_images, load_image_folder

    list_images(source)  # warm the listing and the imports it makes
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the resident set now
    before = _kib("VmRSS")
    if way == "stack":
        images = load_image_folder(source, channels=channels, size=size)[0]
    else:  # the code before: every image in a list, then one stacked copy of them all
        images = torch.stack([im for _, im in iter_image_folder(source, channels=channels, size=size)])
    return {"way": way, "images": len(images), "tensor_mib": images.numel() * images.element_size() / 2**20,
            "peak_rise_mib": (_kib("VmHWM") - before) / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=str(DATA / "imagenet-samples"))
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.source, a.size, a.channels)))
        return
    from raylab.bench import cpu_name, write_figures

    runs = {}
    for way in ("list", "stack"):
        out = subprocess.run([sys.executable, __file__, "--child", way, "--source", a.source, "--size", str(a.size),
                              "--channels", str(a.channels)], check=True, capture_output=True, text=True).stdout
        runs[way] = json.loads(out.strip().splitlines()[-1])
    write_figures({"machine": cpu_name(), "source": a.source, "size": a.size, "channels": a.channels, **runs,
                   "peak_ratio_stack_over_list": runs["stack"]["peak_rise_mib"] / runs["list"]["peak_rise_mib"]}, a.out)


if __name__ == "__main__":
    main()
