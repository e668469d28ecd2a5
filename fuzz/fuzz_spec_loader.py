"""atheris harness: the spec loader, then the spec models and the shape walk, on arbitrary bytes.

Each input is parsed both as YAML and as JSON. The only exception allowed out is CnnspecError; anything
else (a RecursionError, a KeyError, a hang past -timeout, memory past -rss_limit_mb) is a finding.
Run: python fuzz/fuzz_spec_loader.py CORPUS_DIR -max_total_time=60 -rss_limit_mb=1024 -timeout=5
"""

import sys

import atheris

with atheris.instrument_imports(include=["cnnspec", "yaml"]):
    from cnnspec.analysis import analyze
    from cnnspec.errors import CnnspecError
    from cnnspec.loader import parse_spec_text
    from cnnspec.spec import spec_from_data


def test_one_input(data: bytes) -> None:
    for json_format in (False, True):
        try:
            analyze(spec_from_data(parse_spec_text(data, json_format=json_format, source="fuzz")))
        except CnnspecError:
            pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
