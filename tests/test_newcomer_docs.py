"""Issue 19, docs: the README's spec example is specs/seed.yaml, every training field and metadata key is
documented, --patience is on the command line, and the GPU install advice follows what is installed."""

from __future__ import annotations

import re

from conftest import ROOT, SPECS_DIR, run_cli

from cnnspec.analysis import analyze
from cnnspec.compiler import compile_spec
from cnnspec.sessions import GPU_HINT, gpu_install_hint
from cnnspec.spec import Training, load_spec

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_spec_example_is_seed_yaml_with_its_parameter_count():
    first_yaml = re.search(r"```yaml\n(.*?)```", README, re.S).group(1)
    assert first_yaml == (SPECS_DIR / "seed.yaml").read_text(encoding="utf-8")
    params = analyze(load_spec(SPECS_DIR / "seed.yaml")).total_params
    assert f"({params:,} parameters;" in README


def test_every_training_field_is_in_the_readme_table():
    table = README[README.index("The `training` section of a spec") :]
    table = table[: table.index("\n\n", table.index("| field |"))]
    for field in Training.model_fields:
        assert f"`{field}`" in table, field


def test_every_metadata_key_is_listed():
    model = compile_spec(load_spec(SPECS_DIR / "digits_residual.yaml"))
    for prop in model.metadata_props:
        assert f"`{prop.key}`" in README, prop.key


def test_patience_is_a_train_option_and_documented():
    code, out, _ = run_cli("train", "--help")
    assert code == 0 and "--patience" in out
    assert "[--patience N]" in README


def test_gpu_install_hint_follows_what_is_installed():
    both = {"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}
    hint = gpu_install_hint(both.get)
    assert "both installed" in hint
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu" in hint
    assert "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu" in README
    assert "cuDNN 9" in gpu_install_hint({"onnxruntime-gpu": "1.32.0"}.get)
    assert gpu_install_hint({"onnxruntime": "1.32.0"}.get) == GPU_HINT
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'gpu = ["onnxruntime-gpu' in pyproject


def test_cuda_on_a_cpu_install_names_the_fix():
    import pytest

    from cnnspec.errors import ModelError
    from cnnspec.sessions import available_providers, resolve_device

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("a GPU install: nothing to refuse")
    with pytest.raises(ModelError) as err:
        resolve_device("cuda")
    assert gpu_install_hint() in str(err.value)
