"""atheris harness: image decoding (format allowlist, pixel cap, mode table, resize) on arbitrary bytes.

The channel count (1, 3 or 4) comes from the input's length, so the seed corpus can be plain image files.
The only exception allowed out is CnnspecError (cnnspec.images.ImageError). Warnings are printed, not
failures; run with -W error::UserWarning to hunt for the ones that would leak into `run --json` stderr.
Run: python fuzz/fuzz_image_loader.py CORPUS_DIR -max_total_time=60 -rss_limit_mb=1024 -timeout=5
"""

import sys

import atheris

with atheris.instrument_imports(include=["cnnspec", "PIL"]):
    from cnnspec.errors import CnnspecError
    from cnnspec.images import decode, image_to_array


def test_one_input(data: bytes) -> None:
    channels = (1, 3, 4)[len(data) % 3]
    try:
        img = decode(data, "fuzz", (8, 8), "L" if channels == 1 else "RGB")
        image_to_array(img, channels, (8, 8), "stretch", "fuzz")
    except CnnspecError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
