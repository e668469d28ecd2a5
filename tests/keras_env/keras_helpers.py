"""Building random Keras models, saving them, importing them and running both sides."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers as L

ACTIVATIONS = ["relu", "tanh", "sigmoid", "linear", "elu", "gelu", "silu", "relu6", "hard_sigmoid", "softplus",
               "softsign", "selu", "leaky_relu", "mish", "hard_silu", None]  # fmt: skip


def randomize(model: keras.Model, rng: np.random.Generator) -> None:
    """Non-trivial weights everywhere, BatchNormalization statistics included (variances positive)."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        values = []
        for var in layer.weights:
            shape = tuple(var.shape)
            path = var.path
            if "moving_variance" in path or path.endswith("variance"):
                values.append(rng.uniform(0.5, 1.5, shape))
            elif "gamma" in path:
                values.append(rng.uniform(0.7, 1.3, shape))
            elif "alpha" in path:
                values.append(rng.uniform(0.0, 0.4, shape))
            else:
                fan = max(int(np.prod(shape[:-1])), 1)
                values.append(rng.normal(0.0, 1.0 / np.sqrt(fan), shape))
        if values and not isinstance(layer, keras.Model):
            layer.set_weights([v.astype(np.float32) for v in values])


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| over max |want|: the error relative to the output's scale."""
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-6))


def run_onnx(model_path: Path, images_nhwc: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return session.run(["output"], {"input": images_nhwc.transpose(0, 3, 1, 2).copy()})[0]


# ---- random models -------------------------------------------------------------------------------


class Gen:
    """One random model per seed: layers chosen so that every shape is feasible (Keras's rules too)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def act(self):
        return self.pick(ACTIVATIONS)

    def conv(self, channels: int, side: int, keep: bool = False):
        """A random convolution; `keep` keeps the size and channels (for merges)."""
        kind = self.pick(["conv", "conv", "dw", "sep", "tconv"] if not keep else ["conv", "dw", "sep"])
        k = int(self.pick([1, 2, 3, 3, 5]))
        dilation = int(self.pick([1, 1, 2])) if side >= 8 else 1
        stride = 1 if keep or dilation > 1 or side < 8 else int(self.pick([1, 2]))
        padding = "same" if keep else self.pick(["same", "valid"])
        if padding == "valid" and (k - 1) * dilation + 1 > side - 2:
            padding = "same"
        bias = bool(self.rng.integers(2))
        if kind == "conv":
            groups = self.pick([g for g in (1, 2, 4) if channels % g == 0])
            filters = channels if keep else int(groups * self.rng.integers(1, 4))
            return L.Conv2D(
                filters,
                k,
                strides=stride,
                padding=padding,
                dilation_rate=dilation,
                groups=groups,
                activation=self.act(),
                use_bias=bias,
            )
        if kind == "dw":
            m = 1 if keep else int(self.pick([1, 2]))
            return L.DepthwiseConv2D(
                k,
                strides=stride,
                padding=padding,
                depth_multiplier=m,
                dilation_rate=dilation,
                activation=self.act(),
                use_bias=bias,
            )
        if kind == "sep":
            filters = channels if keep else int(self.rng.integers(2, 7))
            return L.SeparableConv2D(
                filters,
                k,
                strides=stride,
                padding=padding,
                dilation_rate=dilation,
                depth_multiplier=int(self.pick([1, 2])),
                activation=self.act(),
                use_bias=bias,
            )
        return L.Conv2DTranspose(
            int(self.rng.integers(2, 6)),
            self.pick([2, 3]),
            strides=self.pick([1, 2]),
            padding=self.pick(["same", "valid"]),
            activation=self.act(),
            use_bias=bias,
        )

    def misc(self, channels: int, side: int):
        """A shape-changing or shape-keeping layer other than a convolution."""
        options = ["bn", "dropout", "act", "relu", "leaky", "prelu", "elu", "ln", "gn", "spdrop", "zpad"]
        if side >= 6:
            options += ["maxpool", "avgpool", "crop"]
        if side <= 12:
            options += ["up"]
        kind = self.pick(options)
        pool = dict(pool_size=int(self.pick([2, 3])), strides=self.pick([None, 1, 2]),
                    padding=self.pick(["valid", "same"]))  # fmt: skip
        return {
            "bn": lambda: L.BatchNormalization(
                epsilon=float(self.pick([1e-3, 1e-5])),
                momentum=0.9,
                center=bool(self.rng.integers(2)),
                scale=bool(self.rng.integers(2)),
            ),
            "dropout": lambda: L.Dropout(0.3),
            "spdrop": lambda: L.SpatialDropout2D(0.2),
            "act": lambda: L.Activation(self.pick([a for a in ACTIVATIONS if a])),
            "relu": lambda: L.ReLU(max_value=self.pick([None, 6.0]), negative_slope=self.pick([0.0, 0.1])),
            "leaky": lambda: L.LeakyReLU(negative_slope=0.2),
            "prelu": lambda: L.PReLU(shared_axes=self.pick([None, [1, 2]])),
            "elu": lambda: L.ELU(alpha=0.7),
            "ln": lambda: L.LayerNormalization(epsilon=1e-3),
            "gn": lambda: L.GroupNormalization(groups=self.pick([g for g in (1, channels) if channels % g == 0])),
            "zpad": lambda: L.ZeroPadding2D(self.pick([1, ((1, 0), (0, 2))])),
            "maxpool": lambda: L.MaxPooling2D(**pool),
            "avgpool": lambda: L.AveragePooling2D(**pool),
            "crop": lambda: L.Cropping2D(((1, 0), (1, 1))),
            "up": lambda: L.UpSampling2D(self.pick([2, (1, 2)]), interpolation=self.pick(["nearest", "bilinear"])),
        }[kind]()

    def head(self, x, classes: int):
        kind = self.pick(["flatten", "gap", "gmp", "flatten_dropout"])
        if kind.startswith("flatten"):
            x = L.Flatten()(x)
            if kind == "flatten_dropout":
                x = L.Dropout(0.2)(x)
                x = L.Dense(int(self.rng.integers(4, 12)), activation=self.act())(x)
        else:
            x = (L.GlobalAveragePooling2D() if kind == "gap" else L.GlobalMaxPooling2D())(x)
        return L.Dense(classes, activation=self.pick([None, "softmax"]))(x)

    def input(self):
        side = int(self.rng.integers(10, 18))
        channels = int(self.pick([1, 3, 4]))
        return side, channels

    def stem(self, inp, channels: int):
        kind = self.pick(["rescale", "rescale", "normalize", "none"])
        if kind == "rescale":
            return L.Rescaling(1 / 127.5, offset=-1.0)(inp)
        if kind == "normalize":
            mean = self.rng.uniform(50, 200, channels).tolist()
            var = self.rng.uniform(500, 4000, channels).tolist()
            return L.Normalization(mean=mean, variance=var)(inp)
        return inp


def shape_of(x) -> tuple[int, int, int]:
    return tuple(int(d) for d in x.shape[1:])


def sequential_model(seed: int) -> keras.Model:
    g = Gen(seed)
    side, channels = g.input()
    inp = keras.Input((side, side, channels))
    x = g.stem(inp, channels)
    for _ in range(int(g.rng.integers(2, 6))):
        h, w, c = shape_of(x)
        layer = g.conv(c, min(h, w)) if g.rng.random() < 0.55 else g.misc(c, min(h, w))
        y = layer(x)
        if min(shape_of(y)[:2]) >= 2:
            x = y
    out = g.head(x, int(g.rng.integers(2, 6)))
    model = keras.Model(inp, out, name=f"seq{seed}")
    # the same layers as a Sequential model (its config dialect differs from the functional one)
    seq = keras.Sequential([keras.Input((side, side, channels))] + list(model.layers[1:]), name=f"seq{seed}")
    return seq


def functional_model(seed: int) -> keras.Model:
    g = Gen(seed)
    side, channels = g.input()
    inp = keras.Input((side, side, channels))
    x = g.stem(inp, channels)
    x = L.Conv2D(int(g.pick([4, 6, 8])), 3, padding="same", activation="relu")(x)
    for _ in range(int(g.rng.integers(2, 5))):
        h, w, c = shape_of(x)
        block = g.pick(["residual", "concat", "down", "gate"])
        if block == "residual":
            y = g.conv(c, min(h, w), keep=True)(x)
            if g.rng.random() < 0.5:
                y = L.BatchNormalization()(y)
            merge = g.pick([L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum])
            x = merge()([x, y])
        elif block == "concat":
            a = L.Conv2D(int(g.rng.integers(2, 6)), g.pick([1, 3]), padding="same", activation=g.act())(x)
            b = g.conv(c, min(h, w), keep=True)(x)
            x = L.Concatenate(axis=g.pick([-1, 3]))([a, b])
        elif block == "gate":
            s = L.GlobalAveragePooling2D(keepdims=True)(x)
            s = L.Conv2D(c, 1, activation="sigmoid")(s)
            x = L.Multiply()([x, s])
        elif min(h, w) >= 6:
            x = g.misc(c, min(h, w))(x)
        x = L.Activation(g.pick(["relu", "linear", "tanh"]))(x)
    out = g.head(x, int(g.rng.integers(2, 6)))
    return keras.Model(inp, out, name=f"func{seed}")
