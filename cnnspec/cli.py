"""The command line: thin commands over the library, and the one place errors become exit codes.

Exit codes: 0 success, 1 an error in the input (spec, image, model, data), 2 usage, 130 Ctrl-C.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from .cli_help import CnnspecTyper, complete_model, complete_spec
from .errors import CnnspecError, SpecError, UsageError

app = CnnspecTyper(
    name="cnnspec",
    help="Describe a CNN in YAML/JSON; validate it, compile it to ONNX, train it and run it on images.",
    pretty_exceptions_enable=False,
    add_completion=True,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SpecPath = Annotated[
    Path, typer.Argument(help="Spec file (.yaml, .yml or .json).", show_default=False, autocompletion=complete_spec)
]
ModelPath = Annotated[
    Path, typer.Argument(help="An .onnx model file.", show_default=False, autocompletion=complete_model)
]
_JSON_HELP = "Print one JSON object on stdout (messages go to stderr)."


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"cnnspec {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", "-V", is_eager=True, callback=_print_version, help="Print the version, exit.")
    ] = False,
) -> None:
    # No docstring: the app's help above stays the group's help.
    pass


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output gets a wide, fixed width so tables are not squeezed to 80 columns.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def _print_warnings(lines: list[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _max_pixels(value: Optional[int]) -> None:
    if value is not None:
        from .images import set_max_pixels

        set_max_pixels(value)


MaxPixelsOpt = Annotated[
    Optional[int],
    typer.Option("--max-pixels", min=1, help="Raise the 64 MP decompression-bomb cap for images you trust."),
]


def _print_issues(issues, prefix: str = "error") -> None:
    from .errors import collapse

    for line in collapse(list(issues)):  # the same fault in many layers: one line
        print(f"{prefix}: {line}", file=sys.stderr)


@app.command()
def validate(
    spec: SpecPath,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the table.")] = False,
) -> None:
    """Check a spec (fields, then shapes) and summarize every layer."""
    with _no_pydantic_plugins():
        from .analysis import analyze
        from .spec import load_spec
        from .summary import format_report, report_json

    try:
        report = analyze(load_spec(spec))
    except SpecError as err:
        if not as_json:
            raise
        print(json.dumps(report_json(None, err.issues, name=None)))
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report_json(report)))
    else:
        if report.layers:
            print(format_report(report))
        _print_issues(report.warnings, "warning")
        _print_issues(report.issues)
    raise typer.Exit(0 if report.valid else 1)


@contextmanager
def _no_pydantic_plugins() -> Iterator[None]:
    """Build cnnspec's Pydantic models without Pydantic's plugin discovery.

    On the first model it builds, Pydantic reads the entry points of every installed distribution
    looking for plugins (~15 ms with 120 packages); cnnspec's models use none. Typer does the same.
    """
    previous = os.environ.get("PYDANTIC_DISABLE_PLUGINS")
    os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYDANTIC_DISABLE_PLUGINS", None)
        else:
            os.environ["PYDANTIC_DISABLE_PLUGINS"] = previous


@app.command()
def schema() -> None:
    """Print the JSON Schema of the spec (for editors and other tools)."""
    from .spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))


@app.command("compile")
def compile_cmd(
    spec: SpecPath,
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the .onnx model.")],
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the initial weights.")] = 0,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset (default 17).")] = None,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="An .npz of the spec's weights (cnnspec import writes one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Lower a spec to an ONNX model with initialized weights."""
    from .compiler import DEFAULT_OPSET, compile_spec, model_bytes
    from .files import atomic_write, check_output_path
    from .spec import load_spec

    check_output_path(output, not_same_as={"spec": spec})
    loaded, opset = load_spec(spec), DEFAULT_OPSET if opset is None else opset
    if weights is not None:  # the given weights instead of initialized ones (--seed does not apply)
        from .weights import compile_with_weights, read_weights

        params, source = read_weights(weights)
        model = compile_with_weights(loaded, params, source, opset)
    else:
        model = compile_spec(loaded, seed=seed, opset=opset)
    atomic_write(output, model_bytes(model))
    print(f"wrote {output} ({output.stat().st_size:,} bytes)", file=sys.stderr)
    if as_json:
        from .analysis import check
        from .command_reports import compile_report

        print(json.dumps(compile_report(output, loaded, check(loaded), opset, seed)))


@app.command("import")
def import_cmd(
    model: Annotated[Path, typer.Argument(help="A Keras .keras (3) or .h5 (2) model.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the spec (.yaml).")],
    onnx_out: Annotated[Optional[Path], typer.Option("--onnx", help="Also write the compiled model.")] = None,
    weights: Annotated[
        Optional[Path], typer.Option("--weights", help="Where to write the weights (default: SPEC.weights.npz).")
    ] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", help="Class names, one per line.")] = None,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset of --onnx (default 17).")] = None,
) -> None:
    """Turn a Keras model file into a spec and its weights (and with --onnx, the compiled model); nothing in
    the file is ever run. `cnnspec compile SPEC --weights W.npz` gives the same model as --onnx."""
    from .foreign import read_labels_file
    from .keras_import import import_to_files

    names = read_labels_file(labels) if labels is not None else None
    for path in import_to_files(model, output, onnx_out, weights, names, opset):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)", file=sys.stderr)


@app.command()
def inspect(model: ModelPath, as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False) -> None:
    """Summarize a model: the spec embedded in it, or its inputs, outputs and operators."""
    if as_json:
        from .command_reports import inspect_report

        print(json.dumps(inspect_report(model)))
        return
    from .inspection import inspect_model

    inspect_model(model, _console())


@app.command("export-artifacts")
def export_artifacts_cmd(
    spec: SpecPath,
    folder: Annotated[Path, typer.Argument(help="Folder for the four artifacts (created if missing).")],
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Seed of the initial weights.")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
) -> None:
    """Write onnxruntime-training's four artifacts (training, eval, optimizer models, checkpoint) for on-device
    training; needs onnxruntime-training 1.19.2 in its own environment (docs/ort-training.md)."""
    from .spec import load_spec
    from .training.ort_artifacts import export_artifacts

    if folder.exists() and not folder.is_dir():
        raise UsageError(f"'{folder}' is a file; export-artifacts writes into a folder")
    written = export_artifacts(load_spec(spec), folder, seed=seed)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)", file=sys.stderr)
    if as_json:
        from .command_reports import artifacts_report

        print(json.dumps(artifacts_report(folder, written)))


DeviceOpt = Annotated[
    Literal["cpu", "cuda", "auto"], typer.Option("--device", help="cpu, cuda (onnxruntime-gpu) or auto.")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, max=65536, help="Images per onnxruntime call.")]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", min=1, max=1024, help="CPU threads (default: cores).")]
ResizeOpt = Annotated[
    Literal["stretch", "fit", "crop"], typer.Option("--resize", help="stretch to HxW, fit (pad) or crop (bilinear).")
]
LabelsOpt = Annotated[Optional[Path], typer.Option("--labels", help="Foreign models: one label per line.")]
ScaleOpt = Annotated[Optional[float], typer.Option("--scale", help="Foreign models: multiply pixels by this.")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Foreign models: per-channel mean, e.g. 0.5,0.5,0.5.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Foreign models: per-channel std, e.g. 0.25.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
NoCudaGraphOpt = Annotated[
    bool, typer.Option("--no-cuda-graph", help="--device cuda: run without CUDA graphs (on by default).")
]


LayoutOpt = Annotated[
    Literal["auto", "nchw", "nhwc"],
    typer.Option("--layout", help="Foreign models: input layout; auto reads [N,H,W,C] with C of 1/3/4 as NHWC."),
]


def _classifier(model, device, threads, labels, scale, mean, std, layout="auto", cuda_graph=True):
    from .foreign import preprocess_from_options, read_labels_file
    from .runtime import Classifier

    preprocess = preprocess_from_options(scale, mean, std)
    names = read_labels_file(labels) if labels is not None else None
    clf = Classifier(model, device=device, threads=threads, labels=names, preprocess=preprocess, layout=layout,
                     cuda_graph=cuda_graph, notify=lambda m: print(f"note: {m}", file=sys.stderr))  # fmt: skip
    for warning in clf.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return clf


@app.command()
def run(
    model: ModelPath,
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs.", show_default=False)],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Predictions per image (all if more than classes).")] = 5,
    as_json: JsonOpt = False,
    device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 64,
    threads: ThreadsOpt = None,
    resize: ResizeOpt = "stretch",
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Print one JSON object per image, as each is done.")] = False,
    layout: LayoutOpt = "auto",
    max_pixels: MaxPixelsOpt = None,
    labels: LabelsOpt = None,
    scale: ScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    no_cuda_graph: NoCudaGraphOpt = False,
    engine: Annotated[
        Literal["plain", "ray"], typer.Option("--engine", help="plain (this process) or ray (Ray Data; cnnspec[ray]).")
    ] = "plain",
    address: Annotated[Optional[str], typer.Option("--address", help="ray: join this cluster.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="ray: rows to a .parquet or .jsonl.")] = None,
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", min=1, max=99999, help="ray: actors.")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0, help="ray: GPUs per actor.")] = 0.0,
) -> None:
    """Classify images; exit 1 when any image could not be used (each failure is reported in its own entry)."""
    from .images import expand_inputs
    from .run_report import render_results, results_json
    from .serving.ray_batch import check_engine_options

    ray_options = {"--address": address, "--output": output, "--concurrency": concurrency,
                   "--gpus-per-worker": gpus_per_worker or None}  # fmt: skip
    plain_options = {"--json": as_json or None, "--jsonl": jsonl or None, "--no-cuda-graph": no_cuda_graph or None,
                     "--device": None if device == "cpu" else device}  # fmt: skip
    check_engine_options(engine, ray_options, plain_options)
    if engine == "ray":
        from .serving.ray_batch import ray_run_command

        code = ray_run_command(model, inputs, output, address, concurrency, gpus_per_worker, threads, batch_size,
                               top_k, resize, labels, scale, mean, std, layout, max_pixels)  # fmt: skip
        raise typer.Exit(code)
    _max_pixels(max_pixels)
    clf = _classifier(model, device, threads, labels, scale, mean, std, layout, cuda_graph=not no_cuda_graph)
    if jsonl:
        from .run_report import stream_jsonl

        raise typer.Exit(stream_jsonl(clf.iter_predict(expand_inputs(inputs), top_k, batch_size, resize)))
    results = clf.predict(expand_inputs(inputs), top_k=top_k, batch_size=batch_size, resize=resize)
    if as_json:
        print(results_json(results))
    else:
        render_results(results, _console())
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"error: {failed} of {len(results)} image(s) could not be classified", file=sys.stderr)
    raise typer.Exit(1 if failed else 0)


_PLOTS = typer.Option("--plots", help="Write pictures (PNG) to this folder; needs cnnspec[viz].")


@app.command()
def evaluate(
    model: ModelPath,
    data: Annotated[Path, typer.Option("--data", help="Class-subfolder folder, .npz (x, y), .csv or MNIST IDX.")],
    as_json: JsonOpt = False,
    device: DeviceOpt = "cpu",
    batch_size: BatchOpt = 256,
    threads: ThreadsOpt = None,
    labels: LabelsOpt = None,
    scale: ScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    skip_bad_images: Annotated[bool, typer.Option("--skip-bad-images", help="Leave out unreadable images.")] = False,
    no_cuda_graph: NoCudaGraphOpt = False,
    layout: LayoutOpt = "auto",
    max_pixels: MaxPixelsOpt = None,
    plots: Annotated[Optional[Path], _PLOTS] = None,
) -> None:
    """Accuracy, mean cross-entropy, per-class accuracy and the confusion matrix on a labelled data set."""
    from .data import load_dataset
    from .run_report import evaluation_json, render_evaluation
    from .runtime import evaluate as evaluate_model
    from .viz import evaluation_plots, plot_dir

    _max_pixels(max_pixels)
    folder = plot_dir(plots) if plots is not None else None  # before the work: matplotlib may be missing
    clf = _classifier(model, device, threads, labels, scale, mean, std, layout, cuda_graph=not no_cuda_graph)
    c, h, w = clf.chw
    named = clf.is_cnnspec or labels is not None
    names = clf.labels if named else None
    dataset = load_dataset(data, (h, w, c), labels=names, num_classes=clf.classes, skip_bad_images=skip_bad_images)
    _print_warnings(dataset.warnings)
    result = evaluate_model(clf, dataset.x, dataset.y, batch_size=batch_size)
    print(evaluation_json(result)) if as_json else render_evaluation(result, _console())
    if folder is not None:
        written = evaluation_plots(clf, dataset.x, dataset.y, folder, batch_size)
        print("plots: " + ", ".join(map(str, written)), file=sys.stderr)


@app.command()
def serve(
    models: Annotated[list[Path], typer.Argument(help="One or more .onnx models.", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback should have --api-key-file.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    device: Annotated[Literal["cpu", "cuda"], typer.Option(help="cpu or cuda (onnxruntime-gpu).")] = "cpu",
    api_key_file: Annotated[Optional[Path], typer.Option(help="File holding the key clients send as Bearer.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Serve a single model under this name.")] = None,
    threads: ThreadsOpt = None,
    max_body_mb: Annotated[int, typer.Option(min=1, max=4096, help="Request body limit in MiB.")] = 64,
    timeout: Annotated[float, typer.Option(min=0.1, max=3600, help="Per-request inference timeout (s).")] = 30.0,
) -> None:
    """Serve models over HTTP with the Open Inference Protocol (KServe v2, Triton's binary extension) and a page at /;
    needs the extra: pip install 'cnnspec[serve]'."""
    from .serving.cli_serve import serve_command

    serve_command(models, host, port, device, api_key_file, name, threads, max_body_mb, timeout)


_EXPORT_TO = typer.Option(
    "--to", help="int8 (static QDQ quantization), fp16 (float16, float32 I/O) or triton (a Triton model repository)."
)
_CALIBRATION = typer.Option("--calibration", help="int8: data to calibrate on (folder, .npz or IDX, as train reads).")
_SAMPLES = typer.Option("--samples", min=1, max=1_000_000, help="int8: calibration samples (default 512).")
_METHOD = typer.Option("--method", help="int8: calibration method (default minmax).")
_EVAL = typer.Option("--eval", help="Labelled data to compare accuracy with the fp32 model on.")
_MAX_DROP = typer.Option("--max-drop", min=0, max=100, help="Refuse (exit 1) above this accuracy drop (default 1.0).")
_TRITON_NAME = typer.Option(help="triton: the model's name in the repository (default: the file's stem).")
_MAX_BATCH = typer.Option(min=0, max=1 << 20, help="triton: max_batch_size (default 64; 0: no batching).")
_INSTANCES = typer.Option(min=1, max=256, help="triton: model instances (instance_group count, default 1).")
_TRITON_DEVICE = typer.Option(help="triton: instance kind, cpu or cuda (default cpu).")


@app.command("export")
def export_cmd(
    model: ModelPath,
    to: Annotated[Literal["int8", "fp16", "triton"], _EXPORT_TO],
    output: Annotated[Path, typer.Option("-o", "--output", help="The exported model (triton: the repository folder).")],
    calibration: Annotated[Optional[Path], _CALIBRATION] = None,
    samples: Annotated[Optional[int], _SAMPLES] = None,
    method: Annotated[Optional[Literal["minmax", "percentile", "entropy"]], _METHOD] = None,
    eval_data: Annotated[Optional[Path], _EVAL] = None,
    max_drop: Annotated[Optional[float], _MAX_DROP] = None,
    name: Annotated[Optional[str], _TRITON_NAME] = None,
    max_batch_size: Annotated[Optional[int], _MAX_BATCH] = None,
    instances: Annotated[Optional[int], _INSTANCES] = None,
    device: Annotated[Optional[Literal["cpu", "cuda"]], _TRITON_DEVICE] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document (path, sha256, accuracy).")] = False,
    threads: ThreadsOpt = None,
    scale: ScaleOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Convert a model for deployment (int8, fp16: with the accuracy it costs, refused past --max-drop) or write
    a Triton Inference Server model repository for it (config.pbtxt, 1/model.onnx, labels.txt)."""
    converting = {
        "--calibration": calibration,
        "--samples": samples,
        "--method": method,
        "--eval": eval_data,
        "--max-drop": max_drop,
        "--threads": threads,
        "--scale": scale,
        "--mean": mean,
        "--std": std,
    }
    repository = {"--name": name, "--max-batch-size": max_batch_size, "--instances": instances, "--device": device}
    for option, value in (converting if to == "triton" else repository).items():
        if value is not None:
            raise UsageError(f"{option} does not apply to --to {to}")
    if to == "triton":
        from .serving.triton import export_command as export_triton

        batch = 64 if max_batch_size is None else max_batch_size
        export_triton(model, output, name, batch, instances or 1, device or "cpu", as_json)
        return
    from .export import export_command

    export_command(
        model, to, output, as_json=as_json, calibration=calibration, samples=samples, method=method,
        eval_data=eval_data, max_drop=max_drop, threads=threads, scale=scale, mean=mean, std=std,
    )  # fmt: skip


OptPath = Optional[Path]
_LR = typer.Option(min=0, max=10, help="Overrides training.learning_rate.")
_SEED = typer.Option(min=0, max=2**32 - 1, help="Seed of the weights (as compile --seed), shuffling and dropout.")
_BACKEND = typer.Option(help="native (cnnspec's own train-step graph) or ort-training (optional extra).")
_RESUME = typer.Option("--resume", help="Continue from the latest checkpoint in --checkpoint-dir.")
_SKIP_BAD = typer.Option("--skip-bad-images", help="Leave out unreadable images.")
_PATIENCE = typer.Option(
    min=1, max=100_000, help="Overrides training.patience: stop after N epochs without a better validation loss."
)
_TRAIN_THREADS = typer.Option(
    "--threads",
    min=1,
    max=1024,
    help="CPU threads (default: cores); also how many shards a batch is cut into, so it fixes the rounding.",
)


@app.command()
def train(
    spec: SpecPath,
    data: Annotated[Path, typer.Option("--data", help="Class-subfolder folder, .npz (x, y), .csv or MNIST IDX.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the trained .onnx model.")],
    epochs: Annotated[Optional[int], typer.Option(min=1, max=100_000, help="Overrides training.epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, max=65_536, help="Overrides training.batch_size.")] = None,
    learning_rate: Annotated[Optional[float], _LR] = None,
    seed: Annotated[Optional[int], _SEED] = None,
    val_split: Annotated[Optional[float], typer.Option(help="Hold out this fraction for validation (0: none).")] = None,
    val: Annotated[OptPath, typer.Option("--val", help="A separate validation data set.")] = None,
    device: Annotated[Literal["cpu", "cuda"], typer.Option(help="cpu or cuda (onnxruntime-gpu).")] = "cpu",
    backend: Annotated[Literal["native", "ort-training"], _BACKEND] = "native",
    checkpoint_dir: Annotated[OptPath, typer.Option(help="Save a checkpoint here every epoch.")] = None,
    resume: Annotated[bool, _RESUME] = False,
    metrics_json: Annotated[OptPath, typer.Option(help="Write per-epoch metrics as JSON.")] = None,
    export_train_step: Annotated[OptPath, typer.Option(help="Also write the train-step ONNX graph.")] = None,
    skip_bad_images: Annotated[bool, _SKIP_BAD] = False,
    threads: Annotated[Optional[int], _TRAIN_THREADS] = None,
    patience: Annotated[Optional[int], _PATIENCE] = None,
    max_pixels: MaxPixelsOpt = None,
    init_from: Annotated[OptPath, typer.Option(help="Start from this .onnx model's weights (by layer name).")] = None,
    plots: Annotated[OptPath, _PLOTS] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the final summary as one JSON object.")] = False,
) -> None:
    """Train a spec on labelled images; write the inference model with the trained weights."""
    from .train_command import train_command

    if val_split is not None and not 0 <= val_split < 1:
        raise typer.BadParameter(f"must be in [0, 1) (0: no validation), got {val_split}", param_hint="'--val-split'")
    if learning_rate is not None and learning_rate <= 0:
        raise typer.BadParameter(f"must be > 0, got {learning_rate}", param_hint="'--learning-rate'")
    _max_pixels(max_pixels)
    result = train_command(
        spec, data, output, val=val, device=device, backend=backend, checkpoint_dir=checkpoint_dir, resume=resume,
        metrics_json=metrics_json, export_train_step=export_train_step, skip_bad_images=skip_bad_images,
        threads=threads, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
        val_split=val_split, patience=patience, init_from=init_from, plots=plots,
    )  # fmt: skip
    if as_json:
        print(json.dumps(result.summary))


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    device: Annotated[
        Optional[Literal["cpu", "cuda"]],
        typer.Option("--device", help="Exit 1 unless a test model really runs on this device."),
    ] = None,
) -> None:
    """Check the installation: versions, onnxruntime's providers (does CUDA really run?), threads and extras."""
    from .doctor import environment, exit_code, render

    report = environment()
    print(json.dumps(report) if as_json else render(report))
    raise typer.Exit(exit_code(report, device))


@app.command()
def visualize(
    model: ModelPath,
    image: Annotated[Path, typer.Argument(help="An image file, resized to the model's input.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the PNG files.")],
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated layer names (default: all conv/pool).")] = None,
) -> None:
    """Pictures of what a model computes: filters.png (first convolution's kernels) and feature_maps-<layer>.png."""
    from .viz import visualize as draw

    chosen = [name.strip() for name in layers.split(",") if name.strip()] if layers else None
    for path in draw(model, image, output, chosen):
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with the error boundary; never shows a traceback unless CNNSPEC_DEBUG=1."""
    try:
        code = _run(argv)
    except KeyboardInterrupt:  # a second Ctrl-C while the first was being handled
        code = 130
    _flush_quietly()
    sys.exit(code)


def _run(argv: list[str] | None) -> int:
    """One command, every outcome mapped to an exit code: 0 ok, 1 error, 2 usage, 130 Ctrl-C, 141 closed pipe."""
    click_error, usage_error = _click_exceptions()
    command = typer.main.get_command(app)
    try:
        # NOTE: with standalone_mode=False, Typer *returns* typer.Exit's code (and 130 for Ctrl-C,
        # which it catches itself) instead of raising.
        result = command.main(args=argv, prog_name="cnnspec", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `cnnspec`: the help, exit 2 as click >= 8.2 does
            return _no_args_help(exc)
        return _usage_error(exc)
    except click_error as exc:
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except SpecError as exc:
        _print_issues(exc.issues)
        return exc.exit_code
    except CnnspecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except SystemExit as exc:  # Typer exits 1 itself on EPIPE; a closed pipe is not an error
        if isinstance(exc.__context__, BrokenPipeError):
            return _quiet_broken_pipe()
        raise
    except MemoryError:
        print("error: out of memory (the spec, model or data is too large for this machine)", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment (disk full, permissions), not the input or a bug
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the boundary: anything unexpected is a bug, said plainly
        if os.environ.get("CNNSPEC_DEBUG") == "1":
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set CNNSPEC_DEBUG=1 for a traceback)", file=sys.stderr)
        return 1
    if code == 130:
        print("error: interrupted", file=sys.stderr)
    return code


def _click_exceptions() -> tuple[type[Exception], type[Exception]]:
    try:  # Typer >= 0.26 vendors its own copy of click
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:  # pragma: no cover - older Typer on the real click
        from click.exceptions import ClickException, UsageError
    return ClickException, UsageError


def _usage_error(exc) -> int:
    # Click-style text ("Invalid value for '--seed': ...") but starting with "error:" like every failure.
    print(f"error: {exc.format_message()}", file=sys.stderr)
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and ctx.help_option_names:
        print(f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help.", file=sys.stderr)
    return exc.exit_code


def _no_args_help(exc) -> int:
    # Plain help arrives as the message (to stderr, as click prints it); rich help was printed already.
    if exc.format_message().strip():
        print(exc.format_message(), file=sys.stderr)
    return exc.exit_code


def _quiet_broken_pipe() -> int:
    # The reader went away (`cnnspec run ... | head`): silence the final flush, exit like SIGPIPE.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
