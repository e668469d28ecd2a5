"""Write the seed corpora under fuzz/corpus/{spec,image,model}/ (deterministic; rerun after format changes).

    python fuzz/make_corpus.py

Seeds: the example specs and the bad-input shapes for the loader; tiny PNG/JPEG/GIF/BMP/WebP/TIFF images,
truncated copies and bomb headers for the image loader; compiled models, truncated and hand-broken ones
for the model check.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

TINY = {
    "name": "tiny",
    "input": {"shape": [8, 8, 1]},
    "labels": ["a", "b"],
    "preprocess": {"scale": 0.5, "mean": [0.1], "std": [0.2]},
    "training": {"optimizer": "adam", "learning_rate": 1e-3},
    "layers": [
        {"type": "Conv2D", "filters": 4, "kernel_size": [3, 3], "padding": "same", "activation": "relu"},
        {"type": "BatchNormalization"},
        {"type": "MaxPooling2D", "pool_size": 2},
        {"type": "ZeroPadding2D", "padding": 1},
        {"type": "AveragePooling2D", "pool_size": 2, "strides": 1},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0.5},
        {"type": "Dense", "units": 2, "activation": "softmax"},
    ],
}


def spec_seeds() -> dict[str, bytes]:
    import yaml

    seeds = {f"example-{p.stem}.yaml": p.read_bytes() for p in sorted((ROOT / "specs").glob("*.yaml"))}
    seeds["tiny.json"] = json.dumps(TINY, indent=1).encode()
    seeds["tiny.yaml"] = yaml.safe_dump(TINY, sort_keys=False).encode()
    seeds["alias.yaml"] = b"a: &x [1, 2]\nb: *x\n"
    seeds["tag.yaml"] = b"!!python/object/apply:os.system [true]\n"
    seeds["two-docs.yaml"] = b"a: 1\n---\nb: 2\n"
    seeds["dup.json"] = b'{"a": 1,\n "a": 2}'
    seeds["deep.json"] = b"[" * 70 + b"]" * 70
    seeds["scalars.yaml"] = b"a: [1e-3, 010, yes, 1:30, .nan, -.inf, 0x1F, 0o17, ~, '', \"\\ud83d\\ude00\"]\n"
    seeds["bigint.yaml"] = b"filters: " + b"9" * 30 + b"\n"
    return seeds


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: only the header, as a decompression-bomb probe."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def image_seeds() -> dict[str, bytes]:
    from PIL import Image

    seeds = {}
    base = Image.new("RGB", (5, 3), (200, 30, 60))
    for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "I;16"), ("PNG", "LA"),
                      ("JPEG", "RGB"), ("JPEG", "CMYK"), ("JPEG", "L"), ("GIF", "P"), ("BMP", "RGB"),
                      ("WEBP", "RGB"), ("TIFF", "RGB"), ("TIFF", "F")):  # fmt: skip
        buffer = io.BytesIO()
        base.convert(mode).save(buffer, format=fmt)
        seeds[f"{mode.replace(';', '')}.{fmt.lower()}"] = buffer.getvalue()
    for name in ("RGB.png", "RGB.jpeg"):
        data = seeds[name]
        seeds[f"truncated-{name}"] = data[: len(data) // 2]
    seeds["bomb-20000.png"] = png_header(20000, 20000)
    seeds["zero-size.png"] = png_header(0, 0)
    return seeds


def model_seeds() -> dict[str, bytes]:
    import onnx

    from cnnspec.compiler import compile_spec, model_bytes
    from cnnspec.spec import spec_from_data

    small = {**TINY, "layers": TINY["layers"][:3] + TINY["layers"][5:]}
    seeds = {"tiny.model": model_bytes(compile_spec(spec_from_data(TINY), seed=0))}
    seeds["small.model"] = model_bytes(compile_spec(spec_from_data(small), seed=1))
    seeds["truncated.model"] = seeds["small.model"][: len(seeds["small.model"]) // 2]
    model = onnx.load_model_from_string(seeds["small.model"])
    model.graph.node[0].op_type = "Loop"
    seeds["bad-op.model"] = model.SerializeToString()
    model = onnx.load_model_from_string(seeds["small.model"])
    model.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    seeds["external.model"] = model.SerializeToString()
    return seeds


def main() -> None:
    for kind, make in (("spec", spec_seeds), ("image", image_seeds), ("model", model_seeds)):
        folder = HERE / "corpus" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    main()
