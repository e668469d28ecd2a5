"""atheris harness: the pre-onnxruntime model check (parse from bytes, external data, operator allowlist,
attributes, initializer sizes, input contract) on arbitrary bytes. onnxruntime is never called here.

The only exception allowed out is CnnspecError (ModelError).
Run: python fuzz/fuzz_model_check.py CORPUS_DIR -max_total_time=60 -rss_limit_mb=1024 -timeout=5
"""

import sys

import atheris

with atheris.instrument_imports(include=["cnnspec"]):
    from cnnspec.errors import CnnspecError
    from cnnspec.modelfile import check_runnable, parse_model


def test_one_input(data: bytes) -> None:
    try:
        check_runnable(parse_model(data, "fuzz"), "fuzz")
    except CnnspecError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
