"""FCN-8s from VGG-19 (the paper's Table 1), in backend-neutral Keras 3.

Table 1, read with two corrections (its "256 x 256 x 1" input and "x 2" output are typos for the 9-channel
stack and the class count):

======== ===================== =========================================
layer    filters (x width)     output for a 256 x 256 x C input
======== ===================== =========================================
Conv1    2 x 3x3, 64           256 x 256 x 64, then 2x2 max pool (Pool1)
Conv2    2 x 3x3, 128          128 x 128 x 128, Pool2
Conv3    4 x 3x3, 256          64 x 64 x 256, Pool3 (32 x 32)
Conv4    4 x 3x3, 512          32 x 32 x 512, Pool4 (16 x 16)
Conv5    4 x 3x3, 512          16 x 16 x 512, Pool5 (8 x 8)
Conv6    1x1, 4096 (fc width)  8 x 8 x 4096, then dropout
Conv7    1x1, 4096             8 x 8 x 4096
Conv8    1x1, 4096             8 x 8 x 4096
tConv1   2x2 stride 2, 512     16 x 16 x 512, added to Pool4
tConv2   2x2 stride 2, 256     32 x 32 x 256, added to Pool3
tConv3   8x8 stride 8, classes 256 x 256 x classes, softmax
======== ===================== =========================================

The skips add the upsampled maps to the pooled maps directly, as Table 1's channel counts allow (Long et
al.'s variant scores each skip with a 1x1 convolution first; not offered, as nothing here shows it helps).
``width`` scales the convolution filters, ``fc`` the three 1x1 layers: ``width=1, fc=4096`` is the paper's
model: 64.7 M parameters with 9 channels and 8 classes (Table 1's Conv8 is a third 4096-wide 1x1 layer, and
tConv1 maps its 4096 channels to 512: 25 M parameters more than Long et al.'s FCN-8s head);
``width=1/8, fc=256`` is a slim one for CPUs.
Inputs of any size that is a multiple of 32 work, with any number of channels and classes.
"""

from __future__ import annotations
import os

import numpy as np

from .framework import start_keras
from .registry import ARCHITECTURES

__all__ = ["build_fcn8s", "build_unet", "build_model", "PixelCrossEntropy", "masked_accuracy", "backend_info",
           "describe_layers", "any_size", "with_input_size", "bilinear_kernel"]


def bilinear_kernel(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """A transposed-convolution kernel (kh, kw, out, in) equal to bilinear interpolation times a random
    channel mixing (Glorot uniform): an upsampling that is smooth from the first step, as Long et al.
    initialise FCN-8s.

    Examples
    --------
    >>> k = bilinear_kernel((4, 4, 1, 1))
    >>> [round(float(v), 2) for v in k[:, 0, 0, 0] / k[:, 0, 0, 0].max()]
    [0.33, 1.0, 1.0, 0.33]
    """
    kh, kw, n_out, n_in = shape
    f = np.ceil(kh / 2)
    c = (2 * f - 1 - f % 2) / (2 * f)
    ramp = lambda k: 1 - np.abs(np.arange(k) / f - c)
    limit = np.sqrt(6.0 / (n_in + n_out))
    mix = np.random.default_rng(seed).uniform(-limit, limit, (n_out, n_in))
    return (np.outer(ramp(kh), ramp(kw))[:, :, None, None] * mix[None, None]).astype("float32")


def build_fcn8s(n_channels: int, n_classes: int, *, width: float = 1.0, fc: int = 4096, dropout: float = 0.5,
                tile: int | None = None, upsampling: str = "table1", norm: str = "none", name: str = "fcn8s_vgg19"):
    """Build the FCN-8s of Table 1.

    Parameters
    ----------
    n_channels, n_classes
        Input channels (9 in the paper) and classes (8).
    width
        Multiplier on the convolution filters (64 ... 512).
    fc
        Filters of the 1x1 layers Conv6-8 (4096 in the paper).
    tile
        Fixed input size (a multiple of 32), or None for any size.
    upsampling
        ``"table1"``: the table's kernels (2x2 stride 2, 2x2 stride 2, 8x8 stride 8), which do not overlap and
        give blocky outputs until well trained. ``"bilinear"``: Long et al.'s overlapping kernels (4x4 stride 2,
        16x16 stride 8) initialised as bilinear interpolation (the paper's text calls the upsampling "bilinear
        interpolation") times a random channel mixing.
    norm
        ``"none"`` (Table 1), ``"group"`` or ``"batch"``: a normalisation after every 3x3 convolution.

    Examples
    --------
    >>> m = build_fcn8s(9, 8, width=1 / 16, fc=32, tile=64)
    >>> m.output_shape
    (None, 64, 64, 8)
    """
    keras = start_keras()
    layers = start_keras().layers

    if tile is not None and tile % 32:
        raise ValueError(f"the tile size must be a multiple of 32 (five 2x poolings), got {tile}")
    f = lambda n: max(1, int(round(n * width)))
    inp = keras.Input((tile, tile, n_channels), name="stack")
    x = inp
    pools = []
    for block, (n_conv, filters) in enumerate(zip((2, 2, 4, 4, 4), (64, 128, 256, 512, 512)), start=1):
        for j in range(n_conv):
            if norm == "none":
                x = layers.Conv2D(f(filters), 3, padding="same", activation="relu", name=f"conv{block}_{j + 1}")(x)
            else:
                x = layers.Conv2D(f(filters), 3, padding="same", use_bias=False, name=f"conv{block}_{j + 1}")(x)
                x = layers.Activation("relu", name=f"relu{block}_{j + 1}")(_norm(x, norm, f"conv{block}_{j + 1}"))
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
        pools.append(x)
    x = layers.Conv2D(fc, 1, activation="relu", name="conv6")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Conv2D(fc, 1, activation="relu", name="conv7")(x)
    x = layers.Conv2D(fc, 1, activation="relu", name="conv8")(x)
    if upsampling == "table1":
        up = dict(k2=2, k8=8, kw={})
    elif upsampling == "bilinear":
        up = dict(k2=4, k8=16, kw=dict(padding="same"))
    else:
        raise ValueError(f"upsampling must be 'table1' or 'bilinear', got {upsampling!r}")
    x = layers.Conv2DTranspose(f(512), up["k2"], strides=2, name="tconv1", **up["kw"])(x)
    x = layers.Add(name="skip_pool4")([x, pools[3]])
    x = layers.Conv2DTranspose(f(256), up["k2"], strides=2, name="tconv2", **up["kw"])(x)
    x = layers.Add(name="skip_pool3")([x, pools[2]])
    x = layers.Conv2DTranspose(n_classes, up["k8"], strides=8, name="tconv3", **up["kw"])(x)
    out = layers.Softmax(name="softmax")(x)
    model = keras.Model(inp, out, name=name)
    if upsampling == "bilinear":  # set, not a custom initializer: the saved model needs no custom objects
        for i, lname in enumerate(("tconv1", "tconv2", "tconv3")):
            layer = model.get_layer(lname)
            layer.kernel.assign(bilinear_kernel(tuple(layer.kernel.shape), seed=i))
    return model


def describe_layers(model) -> list[dict]:
    """Table-1-like rows: layer name, kind and output shape (for the notebook)."""
    rows = []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        rows.append(dict(layer=layer.name, kind=type(layer).__name__,
                         output=str(tuple(shape.shape)) if shape is not None else "",
                         parameters=int(layer.count_params()) if layer.built else 0))
    return rows


def _loss_base():
    keras = start_keras()

    return keras.losses.Loss


class PixelCrossEntropy(_loss_base()):
    """Cross-entropy over pixels, ignoring target pixels equal to -1, with optional class weights.

    ``mode="sum"``: the summation over the training pixels that the paper describes; ``mode="mean"``: the mean
    over the labelled pixels of the batch. Pixels are flattened with ``keras.ops.reshape`` before the loss,
    which trains under TensorFlow, JAX and PyTorch alike.
    """

    def __init__(self, n_classes: int, mode: str = "mean", class_weights=None, name: str = "pixel_cross_entropy",
                 **kwargs):
        if mode not in ("sum", "mean"):
            raise ValueError(f"mode must be 'sum' or 'mean', got {mode!r}")
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.n_classes, self.mode = int(n_classes), mode
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        ops = start_keras().ops

        y_pred = ops.reshape(y_pred, (-1, self.n_classes))
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        valid = ops.cast(y_true >= 0, y_pred.dtype)
        target = ops.maximum(y_true, 0)
        prob = ops.take_along_axis(y_pred, ops.expand_dims(target, -1), axis=-1)[:, 0]
        ce = -ops.log(ops.clip(prob, 1e-7, 1.0))
        w = valid
        if self.class_weights is not None:
            w = w * ops.take(ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype), target)
        total = ops.sum(ce * w)
        if self.mode == "mean":
            total = total / ops.maximum(ops.sum(valid), 1.0)
        return total

    def get_config(self):
        return dict(n_classes=self.n_classes, mode=self.mode, class_weights=self.class_weights, name=self.name)


def masked_accuracy(y_true, y_pred):
    """Pixel accuracy over labelled pixels (targets of -1 ignored)."""
    ops = start_keras().ops

    n = ops.shape(y_pred)[-1]
    y_pred = ops.reshape(y_pred, (-1, n))
    y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
    valid = ops.cast(y_true >= 0, "float32")
    hit = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
    return ops.sum(hit * valid) / ops.maximum(ops.sum(valid), 1.0)


def backend_info() -> dict:
    """Keras backend and the accelerators it sees."""
    keras = start_keras()

    backend = keras.backend.backend()
    devices = []
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            devices = [d.name for d in tf.config.list_physical_devices("GPU")]
        elif backend == "jax":
            import jax

            devices = [str(d) for d in jax.devices() if d.platform != "cpu"]
        elif backend == "torch":
            import torch

            devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver must not stop a CPU run
        devices = []
    return dict(backend=backend, keras=keras.__version__, gpus=devices, gpu=bool(devices),
                env_backend=os.environ.get("KERAS_BACKEND", ""))


def any_size(model):
    """The same network taking inputs of any size (a multiple of 32): ``model`` itself when its input size is
    free, else a copy rebuilt from its configuration with the spatial size left open and the same weights.
    Training fixes the tile size; mapping feeds the network whole scenes or large windows."""
    shape = tuple(model.inputs[0].shape)
    if shape[1] is None and shape[2] is None:
        return model
    free = with_input_size(model, None)
    free.set_weights(model.get_weights())
    return free


def with_input_size(model, size: int | None):
    """A new network with ``model``'s layers (fresh weights) for ``size`` x ``size`` inputs (None: any size),
    rebuilt from its configuration."""
    keras = start_keras()

    cfg = model.get_config()
    for layer in cfg["layers"]:
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [None, size, size, layer["config"]["batch_shape"][-1]]
    return keras.Model.from_config(cfg)


# ------------------------------------------------------------------------------------------ the registry


def _norm(x, kind: str, name: str):
    """Normalisation after a convolution: "none", "group" (statistics per sample: works at the paper's batch
    of 5, where batch statistics of five similar tiles do not carry over to mapping) or "batch"."""
    layers = start_keras().layers

    if kind == "none":
        return x
    if kind == "group":  # 16 channels a group (one group below 32 channels): with one channel a group it would
        # be instance normalisation, which removes each tile's own level of every feature, and absolute
        # levels (how much SiO2, how magnetic) are what tells many rocks apart (measured: mIoU 0.08 on the
        # inner validation areas, from 0.29 without normalisation).
        c = int(x.shape[-1])
        groups = next(g for g in (32, 16, 8, 4, 2, 1) if c % g == 0 and c // g >= 16) if c >= 32 else 1
        return layers.GroupNormalization(groups=groups, name=f"{name}_gn")(x)
    if kind == "batch":
        return layers.BatchNormalization(name=f"{name}_bn")(x)
    raise ValueError(f"norm must be 'none', 'group' or 'batch', got {kind!r}")


def build_unet(n_channels: int, n_classes: int, *, width: float = 1.0, norm: str = "group", tile: int | None = None,
               dropout: float = 0.0, name: str = "unet"):
    """A U-Net (Ronneberger et al. 2015) with five 2x poolings (any multiple of 32 as input, as the FCN-8s):
    two 3x3 convolutions per level (64 ... 1024 filters x ``width``), bilinear upsampling and a 3x3 convolution
    on the way up, skips by concatenation, a 1x1 softmax head.

    Examples
    --------
    >>> build_unet(9, 8, width=1 / 16, tile=64).output_shape
    (None, 64, 64, 8)
    """
    keras = start_keras()
    layers = start_keras().layers

    if tile is not None and tile % 32:
        raise ValueError(f"the tile size must be a multiple of 32 (five 2x poolings), got {tile}")
    f = lambda n: max(2, int(round(n * width)))
    inp = keras.Input((tile, tile, n_channels), name="stack")

    def block(x, filters, label):
        for j in (1, 2):
            x = layers.Conv2D(f(filters), 3, padding="same", use_bias=norm == "none", name=f"{label}_conv{j}")(x)
            x = _norm(x, norm, f"{label}_conv{j}")
            x = layers.Activation("relu", name=f"{label}_relu{j}")(x)
        return x

    skips, x = [], inp
    for level, filters in enumerate((64, 128, 256, 512, 512)):
        x = block(x, filters, f"down{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level + 1}")(x)
    x = block(x, 1024, "bottom")
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    for level, filters in reversed(list(enumerate((64, 128, 256, 512, 512)))):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level + 1}")(x)
        x = layers.Concatenate(name=f"skip{level + 1}")([x, skips[level]])
        x = block(x, filters, f"dec{level + 1}")
    x = layers.Conv2D(n_classes, 1, name="classes")(x)
    out = layers.Softmax(name="softmax")(x)
    return keras.Model(inp, out, name=name)


def build_model(config: dict):
    """Any model of :data:`ARCHITECTURES` from one configuration: ``architecture``, ``n_channels``,
    ``n_classes``, and as the architecture uses them ``width``, ``fc``, ``dropout``, ``tile``, ``upsampling``
    and ``norm``. Training, mapping and evaluation treat every model the same way.

    ``fcn8s_paper`` ignores ``width``, ``fc``, ``upsampling`` and ``norm``: it is Table 1, always.

    Examples
    --------
    >>> [build_model(dict(architecture=a, n_channels=9, n_classes=8, width=1 / 16, fc=16, tile=64)).name
    ...  for a in ("fcn8s", "unet")]
    ['fcn8s', 'unet']
    """
    cfg = dict(config)
    arch = cfg.get("architecture", "fcn8s")
    n_channels, n_classes = int(cfg["n_channels"]), int(cfg["n_classes"])
    tile = cfg.get("tile")
    if arch == "fcn8s_paper":
        return build_fcn8s(n_channels, n_classes, width=1.0, fc=4096, dropout=0.5, tile=tile, upsampling="table1",
                           name="fcn8s_paper")
    if arch == "fcn8s":
        return build_fcn8s(n_channels, n_classes, width=cfg.get("width", 1.0), fc=cfg.get("fc", 4096),
                           dropout=cfg.get("dropout", 0.5), tile=tile, upsampling=cfg.get("upsampling", "bilinear"),
                           norm=cfg.get("norm", "none"), name="fcn8s")
    if arch == "unet":
        return build_unet(n_channels, n_classes, width=cfg.get("width", 1.0), norm=cfg.get("norm", "group"),
                          tile=tile, dropout=cfg.get("dropout", 0.0) if cfg.get("dropout", 0.0) < 0.5 else 0.0)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
