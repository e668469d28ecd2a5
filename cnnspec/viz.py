"""Pictures (the optional extra `cnnspec[viz]`, matplotlib on the Agg backend): training curves, confusion
matrices, the most confident mistakes, the first convolution's kernels and the feature maps of an image.

Each picture has a function that computes its numbers (`confusion_counts`, `confident_errors`, `first_conv_kernels`,
`feature_maps`) and one that draws them, so tests check the numbers and the files separately. Files are written
atomically (PNG bytes rendered in memory, then files.atomic_write).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CnnspecError, UsageError
from .files import atomic_write

POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
CONV_OPS = ("Conv", "ConvTranspose")
MAX_TILES = 64


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed), or one clear error naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise CnnspecError("pictures need matplotlib, which is not installed: pip install 'cnnspec[viz]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def plot_dir(path: Path) -> Path:
    """--plots DIR: created when missing; an existing file there is a usage error."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--plots '{path}' is a file; give a folder for the pictures")
    pyplot()  # fail before training or evaluating when matplotlib is missing
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- training curves ---------------------------------------------------------------------------------------------


def plot_curves(history: Sequence[dict[str, Any]], path: Path) -> Path:
    """curves.png: loss and accuracy per epoch, train and (when there is validation) validation."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [row["epoch"] for row in history]
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.plot(epochs, [row[f"train_{metric}"] for row in history], "o-", label=f"train {metric}")
        val = [row.get(f"val_{metric}") for row in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], "s--", label=f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, path)


# ---- confusion matrix and mistakes -------------------------------------------------------------------------------


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """[classes, classes] counts, rows the true class and columns the predicted one."""
    counts = np.zeros((classes, classes), np.int64)
    np.add.at(counts, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return counts


def row_normalized(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the per-class recall on the diagonal); empty rows stay 0."""
    sums = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, sums, out=np.zeros(counts.shape), where=sums > 0)


def plot_confusion(counts: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """confusion_matrix.png: counts (left) and row-normalized (right), labels on both axes."""
    plt = pyplot()
    k = len(labels)
    side = min(4 + 0.45 * k, 22)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, values, name in ((axes[0], counts, "counts"), (axes[1], row_normalized(counts), "row-normalized")):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-9))
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}{' ' if title else ''}{name}")
        if k <= 25:  # the numbers in the cells while they stay legible
            limit = float(values.max()) / 2
            for i in range(k):
                for j in range(k):
                    text = f"{values[i, j]:d}" if values.dtype.kind == "i" else f"{values[i, j]:.2f}"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8,
                            color="white" if values[i, j] > limit else "black")  # fmt: skip
    return save(fig, path)


@dataclass
class Mistake:
    index: int
    true: int
    predicted: int
    confidence: float


def confident_errors(probs: np.ndarray, y_true: np.ndarray, count: int = 16) -> list[Mistake]:
    """The misclassified samples, most confident (highest predicted probability) first, ties by index."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != y_true)
    confidence = probs[wrong, pred[wrong]]
    order = wrong[np.lexsort((wrong, -confidence))][:count]
    return [Mistake(int(i), int(y_true[i]), int(pred[i]), float(probs[i, pred[i]])) for i in order]


def as_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Raw pixels [C, H, W] -> what imshow takes: grey [H, W] or RGB [H, W, 3] scaled to 0..1 (min-max)."""
    low, high = float(x.min()), float(x.max())
    scaled = (x - low) / (high - low) if high > low else np.zeros_like(x)
    if x.shape[0] == 3:
        return scaled.transpose(1, 2, 0), None
    return scaled[0], "gray"


def plot_errors(x: np.ndarray, mistakes: list[Mistake], labels: Sequence[str], path: Path) -> Path:
    """errors.png: a grid of the most confident mistakes, each titled 'true -> predicted (confidence)'."""
    plt = pyplot()
    cols = max(1, min(4, len(mistakes)))
    rows = max(1, math.ceil(len(mistakes) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not mistakes:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center", fontsize=14)
    for ax, m in zip(axes.ravel(), mistakes, strict=False):
        image, cmap = as_image(x[m.index])
        ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(f"{labels[m.true]} -> {labels[m.predicted]} ({m.confidence:.2f})\n#{m.index}", fontsize=9)
    fig.suptitle("most confident mistakes: true -> predicted (probability)")
    return save(fig, path)


def evaluation_plots(classifier: Any, x: np.ndarray, y: np.ndarray, folder: Path, batch_size: int = 256) -> list[Path]:
    """`evaluate --plots DIR`: confusion_matrix.png and errors.png."""
    probs = classifier.scores(x, batch_size)
    counts = confusion_counts(y, probs.argmax(axis=1), classifier.classes)
    return [
        plot_confusion(counts, classifier.labels, folder / "confusion_matrix.png"),
        plot_errors(x, confident_errors(probs, y), classifier.labels, folder / "errors.png"),
    ]


# ---- kernels and feature maps ------------------------------------------------------------------------------------


def first_conv_kernels(model: Any) -> tuple[str, np.ndarray]:
    """(layer, weight [out, in, kh, kw]) of the model's first convolution with a constant weight."""
    from onnx import numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in weights:
            return layer_of(node), numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
    raise CnnspecError("the model has no convolution with constant weights: there are no kernels to show")


def plot_filters(layer: str, kernels: np.ndarray, path: Path) -> Path:
    """filters.png: each kernel as a small image; RGB kernels (3 input channels) in colour, others per channel."""
    plt = pyplot()
    out_ch, in_ch = kernels.shape[:2]
    colour = in_ch == 3
    tiles = [(o, None) for o in range(out_ch)] if colour else [(o, i) for o in range(out_ch) for i in range(in_ch)]
    tiles = tiles[:MAX_TILES]
    cols = min(8, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (o, i) in zip(axes.ravel(), tiles, strict=False):
        k = kernels[o] if colour else kernels[o, i : i + 1]
        image, cmap = as_image(k)
        ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(f"{o}" if colour else f"{o}/{i}", fontsize=7)
    more = f", first {len(tiles)}" if len(tiles) < (out_ch if colour else out_ch * in_ch) else ""
    what = "filter" if colour else "filter/input channel"
    fig.suptitle(f"{layer}: {out_ch} kernels {kernels.shape[2]}x{kernels.shape[3]} ({what}{more})")
    return save(fig, path)


def layer_of(node: Any) -> str:
    """The layer a node belongs to: cnnspec names nodes '<layer>/<Op>'; other models' nodes are their own layer."""
    return node.name.split("/")[0] if "/" in node.name else (node.name or node.output[0])


def visual_layers(model: Any) -> dict[str, str]:
    """Convolution and pooling layers (global pooling aside) -> the tensor their last node writes (the layer's
    output, after a fused activation), in graph order."""
    outputs: dict[str, str] = {}
    kinds: dict[str, bool] = {}
    for node in model.graph.node:
        layer = layer_of(node)
        outputs[layer] = node.output[0]
        kinds[layer] = kinds.get(layer, False) or node.op_type in CONV_OPS + POOL_OPS
    return {layer: tensor for layer, tensor in outputs.items() if kinds[layer]}


def feature_maps(data: bytes, image: np.ndarray, layers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Each chosen layer's output [C, H, W] for one image [C, H, W] (raw pixels): a copy of the model with those
    tensors as extra graph outputs, run in memory (the file is not changed)."""
    import onnx

    from .modelfile import parse_model
    from .sessions import make_session

    model = parse_model(data, "model")
    available = visual_layers(model)
    chosen = list(available) if layers is None else list(layers)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise UsageError(f"--layers: no convolution or pooling layer named {', '.join(unknown)}; the model's are "
                         f"{', '.join(available) or 'none'}")  # fmt: skip
    graph_outputs = {o.name for o in model.graph.output}
    for name in chosen:
        if available[name] not in graph_outputs:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(available[name]))
    session = make_session(model.SerializeToString(), "cpu")
    tensors = [available[name] for name in chosen]
    values = session.run(tensors, {model.graph.input[0].name: image[None].astype(np.float32)})
    return {name: value[0] for name, value in zip(chosen, values, strict=True)}


def plot_feature_maps(layer: str, maps: np.ndarray, path: Path) -> Path:
    """feature_maps-<layer>.png: one grey tile per channel (a shared colour scale), titled with the layer's name,
    shape and value range."""
    plt = pyplot()
    channels = min(len(maps), MAX_TILES)
    cols = min(8, channels)
    rows = math.ceil(channels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.7), squeeze=False)
    low, high = float(maps.min()), float(maps.max())
    for ax in axes.ravel():
        ax.axis("off")
    for c, ax in enumerate(axes.ravel()[:channels]):
        ax.imshow(maps[c], cmap="viridis", vmin=low, vmax=high if high > low else low + 1, interpolation="nearest")
        ax.set_title(str(c), fontsize=7)
    shown = f" (first {channels})" if channels < len(maps) else ""
    fig.suptitle(f"{layer}: {len(maps)} x {maps.shape[1]} x {maps.shape[2]} (C x H x W){shown}, "
                 f"values {low:.3g} .. {high:.3g}")  # fmt: skip
    return save(fig, path)


def visualize(model_path: Path, image_path: Path, folder: Path, layers: Sequence[str] | None = None) -> list[Path]:
    """`cnnspec visualize`: filters.png and feature_maps-<layer>.png for one image."""
    from .images import load_image
    from .modelfile import read_model_bytes
    from .runtime import Classifier

    plot_dir(folder)
    classifier = Classifier(model_path)  # the untrusted-model checks and the sandboxed first load
    image = load_image(image_path, classifier.chw)
    classifier.scores(image[None])  # runs in a session only once the sandboxed probe has passed
    data = read_model_bytes(model_path)
    from .modelfile import parse_model

    layer, kernels = first_conv_kernels(parse_model(data, str(model_path)))
    written = [plot_filters(layer, kernels, folder / "filters.png")]
    for name, maps in feature_maps(data, image, layers).items():
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
        written.append(plot_feature_maps(name, maps, folder / f"feature_maps-{safe}.png"))
    return written
