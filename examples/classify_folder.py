"""Compile a spec, classify a folder of images with it, and print the table `cnnspec run` prints.

  python examples/classify_folder.py                          # specs/seed.yaml on 6 generated digit-like images
  python examples/classify_folder.py specs/vgg32.yaml my_photos/

The weights are freshly initialized (compile --seed 0), so the predictions are not meaningful until the spec is
trained (`cnnspec train`); the point is the path from a spec to predictions on real files.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnspec import Classifier  # noqa: E402
from cnnspec.compiler import compile_spec, model_bytes  # noqa: E402
from cnnspec.files import atomic_write  # noqa: E402
from cnnspec.images import expand_inputs  # noqa: E402
from cnnspec.run_report import render_results  # noqa: E402
from cnnspec.spec import load_spec  # noqa: E402


def generate_images(folder: Path, count: int = 6) -> None:
    """Light strokes on black, in assorted sizes and modes (the loader resizes and converts them)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        size = int(rng.integers(20, 120))
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        draw.text((size // 3, size // 4), str(i), fill=255, font_size=size // 2)
        img.convert(["L", "RGB", "RGBA"][i % 3]).save(folder / f"digit_{i}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=ROOT / "specs" / "seed.yaml")
    parser.add_argument("images", nargs="?", type=Path, help="a folder of images (default: generate some)")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        atomic_write(model, model_bytes(compile_spec(load_spec(args.spec), seed=0)))
        folder = args.images
        if folder is None:
            folder = Path(tmp) / "images"
            folder.mkdir()
            generate_images(folder)
        classifier = Classifier(model)
        results = classifier.predict(expand_inputs([str(folder)]), top_k=args.top_k)
        from rich.console import Console

        render_results(results, Console(width=140))


if __name__ == "__main__":
    main()
