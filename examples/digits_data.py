"""Write scikit-learn's 8x8 digits as a cnnspec data set: train/test .npz and a folder of PNGs.

The digits' pixels are 0..16; they are rescaled to 8-bit levels (round(v * 255 / 16)) so that the
.npz files, the PNGs and `cnnspec run` all feed the model the same raw range. The 80/20 split is fixed
(stratified, seed 0), so every run and test sees the same test set.

    python examples/digits_data.py out/digits
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): x uint8 (N, 8, 8) in 0..255, y int64."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    return x_train, y_train, x_test, y_test


def write_digits(out: Path, n_images: int = 20) -> None:
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = digits_split()
    np.savez(out / "train.npz", x=x_train, y=y_train)
    np.savez(out / "test.npz", x=x_test, y=y_test)
    images = out / "images"
    images.mkdir(exist_ok=True)
    for i in range(min(n_images, len(x_test))):
        Image.fromarray(x_test[i]).save(images / f"test{i:03d}_label{y_test[i]}.png")
    print(f"wrote {out}/train.npz ({len(x_train)}), test.npz ({len(x_test)}), {min(n_images, len(x_test))} PNGs")


if __name__ == "__main__":
    write_digits(Path(sys.argv[1] if len(sys.argv) > 1 else "out/digits"))
