"""Weight initializers with Keras's definitions, and one seeded RNG stream per layer.

The stream of a layer is keyed on (seed, layer name), so the same spec and seed give identical bytes
on any machine, and changing one layer leaves every other layer's weights unchanged.
"""

from __future__ import annotations

import hashlib

import numpy as np

# Keras draws "normal" initializers from a normal truncated at 2 stddev and rescales by this
# constant (the stddev of a unit normal truncated to [-2, 2]) so the variance is as intended.
TRUNCATED_STDDEV = 0.87962566103423978


def layer_rng(seed: int, layer_name: str) -> np.random.Generator:
    digest = hashlib.sha256(layer_name.encode("utf-8")).digest()
    key = [seed] + [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.Generator(np.random.Philox(np.random.SeedSequence(key)))


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], stddev: float) -> np.ndarray:
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():  # redraw only the tails, as Keras's truncated_normal does
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * (stddev / TRUNCATED_STDDEV)


def initialize(
    init: str | dict, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw a float32 tensor of `shape` as the initializer `init` (a name, or a dict with parameters)."""
    params = dict(init) if isinstance(init, dict) else {"type": init}
    kind = params.pop("type")
    if kind == "zeros":
        values = np.zeros(shape)
    elif kind == "ones":
        values = np.ones(shape)
    elif kind == "glorot_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        values = rng.uniform(-limit, limit, shape)
    elif kind == "glorot_normal":
        values = _truncated_normal(rng, shape, np.sqrt(2.0 / (fan_in + fan_out)))
    elif kind == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        values = rng.uniform(-limit, limit, shape)
    elif kind == "he_normal":
        values = _truncated_normal(rng, shape, np.sqrt(2.0 / fan_in))
    elif kind == "lecun_uniform":
        limit = np.sqrt(3.0 / fan_in)
        values = rng.uniform(-limit, limit, shape)
    elif kind == "lecun_normal":
        values = _truncated_normal(rng, shape, np.sqrt(1.0 / fan_in))
    elif kind == "random_normal":
        values = params.get("mean", 0.0) + params.get("stddev", 0.05) * rng.standard_normal(shape)
    elif kind == "random_uniform":
        values = rng.uniform(params.get("minval", -0.05), params.get("maxval", 0.05), shape)
    elif kind == "constant":
        values = np.full(shape, params.get("value", 0.0))
    else:  # the spec model only admits the kinds above
        raise ValueError(f"unknown initializer {kind!r}")
    return values.astype(np.float32)
