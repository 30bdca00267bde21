"""PNG previews of GL-MAE reconstructions: original, masked input and reconstruction, three orthogonal slices."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.transforms import CenterSpatialCrop
from monai.utils import convert_to_tensor
from PIL import Image, ImageDraw

from custom_components.geometry import patchify, unpatchify
from custom_components.transforms.io import case_name
from custom_components.weights import load_state_dict_file

__all__ = ["InferencePreview", "ReconstructionPreview"]

logger = logging.getLogger("custom_components")

ROWS = ("original", "masked input", "reconstruction", "recon + visible")


def _slices(volume: np.ndarray) -> list[np.ndarray]:
    """Middle axial, coronal and sagittal slices of ``[H, W, D]``, each rotated for display."""
    h, w, d = volume.shape
    return [np.rot90(volume[:, :, d // 2]), np.rot90(volume[:, w // 2, :]), np.rot90(volume[h // 2, :, :])]


MASK_RGB = (40, 80, 170)
GAP = 4


def _to_rgb(image: np.ndarray, size: int) -> Image.Image:
    """Grey levels of a [0, 1] slice, NaN (masked patches) in blue, scaled up by an integer factor to ~``size``."""
    grey = (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255).astype(np.uint8)
    pixels = np.repeat(grey[..., None], 3, axis=-1)
    pixels[np.isnan(image)] = MASK_RGB
    scale = max(1, size // max(pixels.shape[:2]))
    return Image.fromarray(pixels).resize((pixels.shape[1] * scale, pixels.shape[0] * scale), Image.NEAREST)


class ReconstructionPreview:
    """Every ``interval`` epochs, reconstruct the first global and first local view of the last batch with a fixed
    mask and write ``<output_dir>/preview_epoch_XXXX.png``: rows original / masked input / reconstruction /
    reconstruction with the visible patches pasted back, columns axial / coronal / sagittal middle slices.

    Args:
        network: the ``GLMAE`` student (DDP-wrapped is fine).
        output_dir: folder for the PNG files.
        interval: epochs between previews.
        mask_ratio: masking used for the preview.
        norm_pix_loss: the student predicts normalised patches; de-normalise with the original patch statistics.
        seed: seed of the preview mask, the same every time so previews are comparable across epochs.
        size: approximate pixel size of each slice tile.
    """

    def __init__(self, network: nn.Module, output_dir: str, interval: int = 1, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = False, seed: int = 0, size: int = 160,
                 global_key: str = "global_views", local_key: str = "local_views") -> None:
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}.")
        self.network = network
        self.output_dir = output_dir
        self.interval = interval
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        self.seed = seed
        self.size = size
        self.keys = (global_key, local_key)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def reconstruct(self, view: torch.Tensor) -> list[np.ndarray]:
        """``view: [C, H, W, D]`` -> the four ``[H, W, D]`` volumes of the rows (first channel)."""
        net = getattr(self.network, "module", self.network)
        device = next(net.parameters()).device
        x = view[None].float().to(device)
        patch = net.encoder.patch_size
        grid = net.encoder.token_grid(x.shape[2:])
        was_training = net.training
        net.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            out = net.forward_view(x, self.mask_ratio, embed=False)
        net.train(was_training)
        pred, mask = out["pred"].float(), out["mask"]
        target = patchify(x, patch)
        if self.norm_pix_loss:
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        masked_in = target.masked_fill(mask[..., None].bool(), float("nan"))
        pasted = target * (1 - mask[..., None]) + pred * mask[..., None]
        channels = x.shape[1]
        volumes = [x] + [unpatchify(p, patch, grid, channels) for p in (masked_in, pred, pasted)]
        return [v[0, 0].cpu().numpy() for v in volumes]

    def render(self, views: dict[str, torch.Tensor]) -> Image.Image:
        """One labelled panel per view kind, side by side; masked patches are blue."""
        panels = []
        for kind, view in views.items():
            rows = [[_to_rgb(s, self.size) for s in _slices(vol)] for vol in self.reconstruct(view)]
            tile_w = max(t.width for row in rows for t in row) + GAP
            tile_h = max(t.height for row in rows for t in row) + GAP
            panel = Image.new("RGB", (3 * tile_w + 110, 4 * tile_h + 24), color=0)
            draw = ImageDraw.Draw(panel)
            draw.text((110, 6), f"{kind} view {tuple(view.shape[1:])}: axial / coronal / sagittal", fill="white")
            for r, (label, row) in enumerate(zip(ROWS, rows)):
                draw.text((4, 24 + r * tile_h + tile_h // 2), label, fill="white")
                for c, tile in enumerate(row):
                    panel.paste(tile, (110 + c * tile_w, 24 + r * tile_h))
            panels.append(panel)
        canvas = Image.new("RGB", (sum(p.width for p in panels), max(p.height for p in panels)), color=0)
        x = 0
        for p in panels:
            canvas.paste(p, (x, 0))
            x += p.width
        return canvas

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        views = {}
        for key in self.keys:
            if key in batch and batch[key].shape[1] > 0:
                views[key.replace("_views", "")] = convert_to_tensor(batch[key][0, 0], track_meta=False)
        if not views:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        path = os.path.join(self.output_dir, f"preview_epoch_{engine.state.epoch:04d}.png")
        self.render(views).save(path)
        logger.info(f"reconstruction preview written to {path}")


class InferencePreview:
    """Per volume of the pre-training bundle's feature extraction: reconstruct the window of ``roi_size`` at the
    centre of the preprocessed volume with the whole GL-MAE student of a training checkpoint and write
    ``<output_dir>/<case>_reconstruction.png`` (rows and columns as :class:`ReconstructionPreview`, the same fixed
    mask for every volume).

    ``models/model.pt`` and ``encoder.pt`` hold the encoder only; the decoder is in the training checkpoints
    (``checkpoint_epoch=N.pt``), which ``checkpoint`` names.

    Args:
        network: a ``GLMAE`` of the run's encoder and decoder sizes (its consistency head is not used).
        checkpoint: a training checkpoint of that run.
        output_dir: folder for the PNG files.
        roi_size: the window reconstructed (the run's ``roi_size``).
        mask_ratio, norm_pix_loss, seed: as :class:`ReconstructionPreview`.
        image_key: key of the preprocessed image in the decollated evaluator output.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: it is unreadable, holds no decoder (an encoder file), or its tensors do not fit ``network``.
    """

    def __init__(self, network: nn.Module, checkpoint: str | os.PathLike, output_dir: str,
                 roi_size: Sequence[int], mask_ratio: float = 0.75, norm_pix_loss: bool = False, seed: int = 0,
                 image_key: str = "image") -> None:
        state = load_state_dict_file(checkpoint)
        if not any(k.startswith("decoder") for k in state):
            raise ValueError(f"{checkpoint} holds no decoder (an encoder file such as model.pt or encoder.pt?); "
                             "the reconstruction preview needs a training checkpoint, checkpoint_epoch=N.pt.")
        wanted = {k: v for k, v in network.state_dict().items() if k.split(".")[0] in ("encoder", "decoder")}
        kept = {k: v for k, v in state.items() if k in wanted}
        wrong = [k for k, v in kept.items() if v.shape != wanted[k].shape]
        missing = [k for k in wanted if k not in kept]
        if wrong or missing:
            raise ValueError(f"{checkpoint} does not fit the preview network ({len(wrong)} tensors of other shapes, "
                             f"e.g. {(wrong or missing)[:3]}; {len(missing)} missing): give the size ids of its run, "
                             "decoder_hidden_size / decoder_num_layers / decoder_num_heads included.")
        network.load_state_dict(kept, strict=False)
        network.eval()
        self.crop = CenterSpatialCrop(roi_size)
        self.image_key = image_key
        self.preview = ReconstructionPreview(network, output_dir, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                                             seed=seed)
        logger.info(f"reconstruction previews from {checkpoint} ({len(kept)} tensors) to {output_dir}")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        for index, item in enumerate(output if isinstance(output, Sequence) else [output]):
            image = item[self.image_key]
            source = (getattr(image, "meta", {}) or {}).get("filename_or_obj")
            case = case_name(source) if source else f"volume_{engine.state.iteration:04d}_{index}"
            window = convert_to_tensor(self.crop(image), track_meta=False)
            os.makedirs(self.preview.output_dir, exist_ok=True)
            path = os.path.join(self.preview.output_dir, f"{case}_reconstruction.png")
            self.preview.render({"centre": window}).save(path)
            logger.info(f"reconstruction preview written to {path}")
