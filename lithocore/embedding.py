"""What a network learns from the whole scene without a label: self-supervised pretraining on every valid pixel of
the stack, and the per-pixel *embedding* it gives the forests.

A U-Net (:func:`lithocore.model.build_unet`, the registry's) is trained to rebuild the stack from a copy with parts
hidden: square patches of every channel and whole channels of a tile (a masked autoencoder, He et al. 2022, with
the cross-source masking of multi-modal MAEs). To put back a hidden magnetic or SiO2 patch it must learn how the
sources go together in space, which is what tells rocks apart. Its tiles are drawn over the whole valid scene,
the ground to predict included; no label is read, so nothing a fold tests on leaks into it.

Two uses (issue 23):

* the **embedding**: a 1x1 convolution (:data:`EMBEDDING_LAYER`, ``dims`` channels) through which every
  reconstruction must pass, computed over the scene in the windows a map is made in
  (:func:`lithocore.mapping.scene_outputs`) and written beside the stack (:func:`scene_embedding`, keyed by the
  stack and these settings); the forests take it as extra channels (:class:`lithocore.stackfile.Channels`);
* the **start of a network**: :func:`warm_start` copies the pretrained layers into a U-Net of the same width
  before it is fine-tuned on the labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .framework import start_keras
from .loaders import _keras_pydataset

__all__ = ["EmbeddingSettings", "EMBEDDING_LAYER", "build_autoencoder", "MaskedTiles", "pretrain",
           "scene_embedding", "read_embedding", "warm_start", "pretrained_network"]

#: The layer whose outputs are the embedding.
EMBEDDING_LAYER = "embedding"


@dataclass(frozen=True)
class EmbeddingSettings:
    """Self-supervised pretraining and the embedding.

    Parameters
    ----------
    dims
        Channels of the embedding.
    width, norm
        The U-Net's width multiplier and normalisation (as :class:`lithocore.settings.TrainingConfig`'s; a network
        fine-tuned from it must have the same: :meth:`for_network`).
    tile, n_tiles, batch_size, epochs
        Tiles of ``tile`` px drawn over the valid scene, how many, a batch, passes over them.
    patch, patch_ratio, channel_ratio
        Hidden squares of ``patch`` px (that share of them) and whole channels hidden (that share, at least one
        channel of each tile kept).
    learning_rate, seed
        Adam's learning rate; the seed of the tiles, the masks and the weights.
    """

    dims: int = 16
    width: float = 0.125
    norm: str = "none"
    tile: int = 64
    n_tiles: int = 600
    batch_size: int = 8
    epochs: int = 8
    patch: int = 8
    patch_ratio: float = 0.4
    channel_ratio: float = 0.25
    learning_rate: float = 1e-3
    seed: int = 0

    @classmethod
    def for_network(cls, cfg, **kw) -> "EmbeddingSettings":
        """The settings whose network a U-Net of ``cfg`` can start from (its width and normalisation, its seed)."""
        return cls(width=cfg.width, norm=cfg.norm, seed=cfg.seed, **kw)

    def key(self) -> str:
        from .runfolder import key

        return key(asdict(self))


def build_autoencoder(n_channels: int, settings: EmbeddingSettings):
    """The U-Net of ``settings.width`` with a reconstruction head: its last decoder block, a 1x1 convolution to
    ``dims`` channels (the embedding) and a linear 1x1 convolution back to the ``n_channels`` channels."""
    keras = start_keras()
    from .model import build_unet

    unet = build_unet(n_channels, 2, width=settings.width, norm=settings.norm, tile=None)
    body = unet.get_layer("dec1_relu2").output
    emb = keras.layers.Conv2D(settings.dims, 1, name=EMBEDDING_LAYER)(body)
    out = keras.layers.Conv2D(n_channels, 1, name="reconstruction")(keras.layers.Activation("relu")(emb))
    return keras.Model(unet.inputs, out, name="masked_autoencoder")


def _loss():
    keras = start_keras()
    ops = keras.ops

    def masked_mse(y_true, y_pred):
        """Squared error over the valid pixels, weighted by the target's second half of channels (per pixel and
        channel: 0 invalid, 1 shown, 4 hidden): hidden values count four times, so the network must use the
        context, not only copy what it sees."""
        c = ops.shape(y_pred)[-1]
        w = y_true[..., c:]
        err = ops.square(y_true[..., :c] - y_pred) * w
        return ops.sum(err) / (ops.sum(w) * ops.cast(c, err.dtype) + 1e-6)

    return masked_mse


class MaskedTiles(_keras_pydataset()):
    """Batches of (tiles with parts hidden, target and weights) cut from the stack at ``origins``, normalised with
    ``mean``/``std``; the hidden parts drawn from (seed, epoch, batch), so the same seed gives the same batches."""

    def __init__(self, stack, mask, origins, settings: EmbeddingSettings, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.stack, self.mask, self.origins, self.s = stack, mask, np.asarray(origins), settings
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.epoch = 0

    def __len__(self):
        return -(-len(self.origins) // self.s.batch_size)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, idx):
        s, T = self.s, self.s.tile
        rng = np.random.default_rng((s.seed, self.epoch, idx))
        order = np.random.default_rng((s.seed, self.epoch)).permutation(len(self.origins))
        xs, ys = [], []
        for i in order[idx * s.batch_size:(idx + 1) * s.batch_size]:
            r, c = self.origins[i]
            x = (np.asarray(self.stack[:, r:r + T, c:c + T], np.float32).transpose(1, 2, 0) - self.mean) / self.std
            valid = self.mask[r:r + T, c:c + T] & np.isfinite(x).all(-1)
            x = np.where(valid[..., None], x, 0.0).astype(np.float32)
            C = x.shape[-1]
            g = -(-T // s.patch)
            hidden_patch = np.kron(rng.random((g, g)) < s.patch_ratio, np.ones((s.patch, s.patch), bool))[:T, :T]
            hidden_ch = rng.random(C) < s.channel_ratio
            if hidden_ch.all():
                hidden_ch[rng.integers(C)] = False
            hidden = hidden_patch[..., None] | hidden_ch[None, None, :]
            w = np.where(valid[..., None], np.where(hidden, 4.0, 1.0), 0.0).astype(np.float32)
            xs.append(np.where(hidden, 0.0, x).astype(np.float32))
            # one weight channel per input channel: the target is (T, T, 2C)
            ys.append(np.concatenate([x, w], -1))
        return np.stack(xs), np.stack(ys)


def pretrain(stack, mask: np.ndarray, settings: EmbeddingSettings = EmbeddingSettings(), *, progress: bool = False):
    """The masked autoencoder trained on ``settings.n_tiles`` tiles (fewer on a small scene: :func:`scene_tiles`)
    drawn over the valid scene (every tile at least half valid; no label is read). Returns ``(model, stats)``:
    the network and the channels' mean and sd over the valid pixels, which normalise its input."""
    from .stackfile import region_stats
    from .training import private_python_random, seed_everything

    keras = start_keras()
    C = stack.shape[0]
    settings = fitted_to_scene(settings, stack.shape)
    T = settings.tile
    stats = region_stats(stack, mask)  # a zero sd given as 1
    std = np.asarray(stats["std"], np.float32)
    origins = _origins(mask, T, scene_tiles(settings.n_tiles, int(mask.sum()), T), settings.seed)
    data = MaskedTiles(stack, mask, origins, settings, stats["mean"], std)
    seed_everything(settings.seed)
    with private_python_random(settings.seed):
        net = build_autoencoder(C, settings)
        net.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss=_loss())
        history = net.fit(data, epochs=settings.epochs, verbose=2 if progress else 0)
    return net, dict(mean=np.asarray(stats["mean"], np.float32), std=np.asarray(std, np.float32),
                     loss=[float(v) for v in history.history["loss"]])


def fitted_to_scene(settings: EmbeddingSettings, shape) -> EmbeddingSettings:
    """``settings`` with the tile no larger than the scene allows on the 32-px grid (and the hidden squares at most
    a quarter of it); an error when the scene is under 32 px."""
    from dataclasses import replace

    H, W = shape[-2:]
    T = min(settings.tile, H // 32 * 32, W // 32 * 32)
    if T < 32:
        raise ValueError(f"the scene ({H} x {W} px) is smaller than the 32-px tile the pretraining needs")
    return settings if T == settings.tile else replace(settings, tile=T, patch=min(settings.patch, T // 4))


def scene_tiles(n_tiles: int, valid_pixels: int, tile: int) -> int:
    """Tiles an epoch of pretraining draws: ``n_tiles``, or fewer on a small scene, as many as cover its valid
    pixels eight times over (a 192 x 192 px scene is not drawn 600 times an epoch).

    >>> scene_tiles(600, 1611 * 1650, 64), scene_tiles(600, 192 * 192, 64), scene_tiles(600, 10, 64)
    (600, 72, 16)
    """
    return int(max(16, min(n_tiles, -(-8 * valid_pixels // tile ** 2))))


def _origins(mask: np.ndarray, tile: int, n: int, seed: int) -> np.ndarray:
    """``n`` tile origins drawn uniformly among those whose tile is at least half valid (all windows when none)."""
    from scipy import ndimage

    H, W = mask.shape
    share = ndimage.uniform_filter(mask.astype(np.float32), tile, mode="constant", origin=-(tile // 2))
    share = share[:H - tile + 1, :W - tile + 1]
    cand = np.argwhere(share >= 0.5)
    if not len(cand):
        cand = np.argwhere(np.ones_like(share, bool))
    rng = np.random.default_rng(seed)
    return cand[rng.choice(len(cand), size=n, replace=len(cand) < n)]


def _embedding_net(net):
    keras = start_keras()
    return keras.Model(net.inputs, net.get_layer(EMBEDDING_LAYER).output)


def scene_embedding(run_dir, stack, mask: np.ndarray, settings: EmbeddingSettings = EmbeddingSettings(), *,
                    stack_key: str = "", progress: bool = True) -> Path:
    """The scene's embedding (``dims`` float32 channels, NaN outside ``mask``) written to
    ``<run>/embedding/embedding.npy`` with ``embedding.json`` (the stack's key, the settings, the loss per epoch) and
    the pretrained network (``autoencoder.keras``); reused when made from the same stack and settings, made again
    otherwise (said). Returns the ``.npy`` path (read it with :func:`read_embedding`)."""
    from .runfolder import atomic_path, key, write_json

    out = Path(run_dir) / "embedding"
    meta_path, npy = out / "embedding.json", out / "embedding.npy"
    tile = fitted_to_scene(settings, stack.shape).tile
    want = key([stack_key, settings.key(), list(stack.shape), scene_tiles(settings.n_tiles, int(mask.sum()), tile)])
    if meta_path.is_file() and npy.is_file():
        if json.loads(meta_path.read_text()).get("key") == want:
            return npy
        print(f"{npy} was made from another stack or other settings: pretraining again.")
    _check_memory(stack.shape, settings.dims, npy)
    out.mkdir(parents=True, exist_ok=True)
    import time

    t0 = time.perf_counter()
    net, stats = pretrain(stack, mask, settings, progress=progress)
    from .mapping import scene_outputs

    emb = scene_outputs(_embedding_net(net), stack, stats["mean"], stats["std"])
    emb[:, ~mask] = np.nan
    with atomic_path(npy) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, emb)
    with atomic_path(out / "autoencoder.keras") as tmp:
        net.save(tmp)
    write_json(meta_path, dict(key=want, stack_key=stack_key, settings=asdict(settings), loss=stats["loss"],
                               mean=stats["mean"].tolist(), std=stats["std"].tolist(),
                               seconds=round(time.perf_counter() - t0, 1),
                               what="self-supervised embedding of every valid pixel (no label read)"))
    return npy


def _check_memory(shape, dims: int, path) -> None:
    """Refuse, before pretraining, an embedding the machine cannot hold (it is made and kept whole: ``dims``
    float32 channels of the scene, twice while it is made)."""
    from .data import _size, memory_available

    need = 2 * 4 * int(dims) * int(shape[1]) * int(shape[2])
    have = memory_available()
    if need > have:
        raise MemoryError(f"{path}: the scene's embedding ({dims} channels of {shape[1]:,} x {shape[2]:,} px) needs "
                          f"about {_size(need)} while it is made, where {_size(have)} is available: leave the "
                          f"embedding forest out of deep_parts, or fewer dims (EmbeddingSettings.dims)")


def read_embedding(path) -> np.ndarray:
    """The embedding (dims, H, W) written by :func:`scene_embedding`, memory-mapped (read as it is used)."""
    return np.load(path, mmap_mode="r")


def pretrained_network(path, cfg, n_channels: int, n_classes: int, seed: int = 0):
    """The network of ``cfg`` (a U-Net) built as training builds it, its layers copied from the masked autoencoder
    saved at ``path`` (:func:`warm_start`); an error names the file when nothing could be copied (another width or
    architecture)."""
    from .model import build_model
    from .training import private_python_random, seed_everything

    keras = start_keras()
    auto = keras.models.load_model(path, compile=False, custom_objects={"masked_mse": _loss()})
    seed_everything(cfg.seed + seed)
    with private_python_random(cfg.seed + seed):
        net = build_model(cfg.model_config(n_channels, n_classes))
    if not warm_start(net, auto):
        raise ValueError(f"{path}: no layer of this pretrained network fits a {cfg.architecture} of width "
                         f"{cfg.width} (pretrain with the same architecture and width)")
    return net


def warm_start(model, autoencoder) -> int:
    """Copy the pretrained U-Net's layers (same names and shapes: every convolution up to the last decoder block)
    into ``model``; returns how many layers were copied. The classification head stays fresh."""
    done = 0
    for layer in model.layers:
        try:
            src = autoencoder.get_layer(layer.name)
        except ValueError:
            continue
        w = src.get_weights()
        if w and [a.shape for a in w] == [b.shape for b in layer.get_weights()]:
            layer.set_weights(w)
            done += 1
    return done
