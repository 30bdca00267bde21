"""Speed benchmark of GL-MAE pre-training and BTCV inference, each figure against a baseline in the same process.

Figures (each a median of ``--repeats`` timed runs after warm-up; both sides of a comparison alternate):

1. ``step_overhead_ratio``: a real ``GLMAETrainer`` running N pre-made batches, per iteration, against the same
   student/teacher/loss/backward/clip/optimizer/EMA calls in a plain Python loop (no Ignite).
2. ``mae_vs_monai_ratio``: ``GLMAE.forward_view`` on 96³ local views + ``MaskedReconstructionLoss`` + backward
   against ``monai.networks.nets.MaskedAutoEncoderViT`` at the same ViT-B sizes + masked-patch MSE + backward; ours
   in the bundle's precision (bf16 autocast where native), MONAI's in the best one it runs in, and both in fp32.
3. ``data_to_step_ratio``: volumes/s of ``GlobalLocalViewsd`` on in-memory volumes through a ``monai.data.DataLoader``
   against volumes/s consumed by the training step of figure 1; also with volumes and crops on the device
   (configs/crops_on_device.json).
4. ``inference_vs_monai_ratio``: sliding-window inference with the ``network_def`` and ``inferer`` parsed from
   ``bundles/glmae_btcv_segmentation/configs/inference.json`` against a plain ``UNETR`` + ``SlidingWindowInferer``.
5. ``finetune_vs_fp32_ratio``: a UNETR fine-tuning step (forward, DiceCE, backward, AdamW) with the ``network_def``,
   ``loss`` and ``train#inferer`` of ``bundles/glmae_btcv_segmentation/configs/train.json`` in the bundle's
   precision (bf16 autocast on a native-bf16 CPU, fp16 autocast on GPU) against the same step in fp32 with MONAI's
   ``SimpleInferer``, same weights and crops.
6. GPU only: samples/s, peak memory and MFU of the ViT-B/16 step at the paper sizes with bf16 autocast.

With ``--compile`` also: the step of figure 1 with ``torch.compile`` against eager, and the compile time.

Examples (from the repository root)::

    python tools/benchmark.py --device cpu --preset quick --out results.json
    # only the inference figure, paper model sizes, on a 192x192x96 volume
    python tools/benchmark.py --preset paper --figures inference --inference-shape 192 192 96 --repeats 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, ThreadDataLoader
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNETR, MaskedAutoEncoderViT

from custom_components.engines import GLMAETrainer, param_groups_weight_decay
from custom_components.geometry import patchify
from custom_components.losses import GLMAELoss, MaskedReconstructionLoss
from custom_components.networks import GLMAE, EMATeacher
from custom_components.precision import native_bf16
from custom_components.transforms import GlobalLocalViewsd

REPO_ROOT = Path(__file__).resolve().parents[1]
INFERENCE_CONFIG = REPO_ROOT / "bundles" / "glmae_btcv_segmentation" / "configs" / "inference.json"
FINETUNE_CONFIG = REPO_ROOT / "bundles" / "glmae_btcv_segmentation" / "configs" / "train.json"
PRETRAIN_CONFIG = REPO_ROOT / "bundles" / "glmae_pretraining" / "configs" / "train.json"

TARGETS = {
    "step_overhead_ratio": "<= 1.10",
    "mae_vs_monai_ratio": "<= 0.80",
    "data_to_step_ratio": ">= 3",
    "inference_vs_monai_ratio": "<= 1.0",
    "finetune_vs_fp32_ratio": "<= 1.0",
}

VIT_B = {"hidden_size": 768, "mlp_dim": 3072, "num_layers": 12, "num_heads": 12}
PAPER_PRETRAIN = {
    "vit": VIT_B, "decoder": {"decoder_hidden_size": 512, "decoder_num_layers": 8, "decoder_num_heads": 16},
    "head": {"head_out_dim": 65536, "head_hidden_dim": 2048, "head_bottleneck_dim": 256},
    "patch_size": 16, "img_size": 96, "global_size": 160, "local_size": 96, "num_global": 2, "num_local": 4,
    "batch_size": 4, "mask_ratio": 0.75, "step_iterations": 10,
}

# Figure 2 at ViT-B widths and the local-view size in every preset: 96³ views (216 tokens, 54 visible).
def mae_sizes(num_views: int) -> dict:
    return {"vit": VIT_B, "decoder": PAPER_PRETRAIN["decoder"], "patch_size": 16, "local_size": 96,
            "mask_ratio": 0.75, "num_views": num_views}


# quick: the CPU sizes of the bundles' quickstart presets; paper: the sizes of train.json / inference.json.
PRESETS = {
    "quick": {
        "pretrain": {
            "vit": {"hidden_size": 96, "mlp_dim": 384, "num_layers": 12, "num_heads": 4},
            "decoder": {"decoder_hidden_size": 96, "decoder_num_layers": 2, "decoder_num_heads": 4},
            "head": {"head_out_dim": 1024, "head_hidden_dim": 256, "head_bottleneck_dim": 64},
            "patch_size": 16, "img_size": 32, "global_size": 64, "local_size": 32, "num_global": 2, "num_local": 4,
            "batch_size": 2, "mask_ratio": 0.75, "step_iterations": 10,
        },
        "mae": mae_sizes(num_views=2),
        "data": {"volume_shape": (1, 96, 96, 80), "num_volumes": 4, "batches_per_epoch": 20},
        "inference": {"volume_shape": (1, 1, 128, 128, 64), "roi_size": [32, 32, 32], "feature_size": 16,
                      "sw_batch_size": 2, "hidden_size": 96, "mlp_dim": 384, "num_heads": 4},
        "finetune": {"batch": 4, "roi_size": [32, 32, 32], "feature_size": 16, "hidden_size": 96, "mlp_dim": 384,
                     "num_heads": 4},
    },
    "paper": {
        "pretrain": PAPER_PRETRAIN,
        "mae": mae_sizes(num_views=PAPER_PRETRAIN["batch_size"] * PAPER_PRETRAIN["num_local"]),
        "data": {"volume_shape": (1, 256, 256, 192), "num_volumes": 4, "batches_per_epoch": 10},
        "inference": {"volume_shape": (1, 1, 512, 512, 200), "roi_size": [96, 96, 96], "feature_size": 48,
                      "sw_batch_size": 4, **{k: VIT_B[k] for k in ("hidden_size", "mlp_dim", "num_heads")}},
        "finetune": {"batch": 4, "roi_size": [96, 96, 96], "feature_size": 48,
                     **{k: VIT_B[k] for k in ("hidden_size", "mlp_dim", "num_heads")}},
    },
}


# ----------------------------------------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, enabled: bool, dtype: torch.dtype = torch.bfloat16):
    return torch.autocast(device_type=device.type, dtype=dtype) if enabled else nullcontext()


def _time_round_robin(fns: dict[str, Callable[[], object]], repeats: int, warmup: int,
                      device: torch.device) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times (after ``warmup`` untimed calls each), in turn and in an order that
    rotates every round so no side always runs first; wall seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _compare(ours: Callable[[], object], baseline: Callable[[], object], repeats: int, warmup: int,
             device: torch.device) -> tuple[list[float], list[float]]:
    """Time ``ours`` and ``baseline`` alternately; wall seconds per call of each."""
    times = _time_round_robin({"ours": ours, "baseline": baseline}, repeats, warmup, device)
    return times["ours"], times["baseline"]


class PeakMemory:
    """Peak memory above the level at entry, in bytes.

    GPU: ``torch.cuda.max_memory_allocated``. CPU (Linux): the process RSS, polled every millisecond from
    ``/proc/self/statm`` by a background thread, after glibc's ``malloc_trim`` has returned freed memory to the
    system (without it, memory freed by an earlier run is reused unseen and later runs show no growth). The CPU
    figure is coarse (allocator fragmentation, polling): comparable between runs of one process, not exact;
    ``peak_bytes`` stays None where neither measure exists."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_bytes: int | None = None
        self._poller: threading.Thread | None = None

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, self._rss())
            time.sleep(0.001)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self._rss() is not None:
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            except (OSError, AttributeError):  # not glibc: the figure may then miss reused memory
                pass
            self._start = self._max = self._rss()
            self._stop = threading.Event()
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start
        elif self._poller is not None:
            self._stop.set()
            self._poller.join()
            self.peak_bytes = max(self._max, self._rss()) - self._start


# ------------------------------------------------------------------------------------------ pre-training step pieces
def build_pretraining(cfg: dict, device: torch.device) -> tuple[GLMAE, EMATeacher, GLMAELoss, torch.optim.Optimizer]:
    """Student, EMA teacher, DINO loss and AdamW as ``bundles/glmae_pretraining/configs/train.json`` builds them."""
    network = GLMAE(img_size=cfg["img_size"], patch_size=cfg["patch_size"], **cfg["vit"], **cfg["decoder"],
                    **cfg["head"]).to(device)
    teacher = EMATeacher(network)
    loss = GLMAELoss(cfg["patch_size"], head_out_dim=cfg["head"]["head_out_dim"]).to(device)
    optimizer = torch.optim.AdamW(param_groups_weight_decay(network, 0.05), lr=1e-4, betas=(0.9, 0.95), fused=True)
    return network, teacher, loss, optimizer


def make_batches(cfg: dict, num_batches: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Pre-made batches ``{"global_views": [B, p, 1, G³], "local_views": [B, q, 1, L³]}`` already on ``device``."""
    b, g, loc = cfg["batch_size"], cfg["global_size"], cfg["local_size"]
    return [{"global_views": torch.rand(b, cfg["num_global"], 1, g, g, g, device=device),
             "local_views": torch.rand(b, cfg["num_local"], 1, loc, loc, loc, device=device)}
            for _ in range(num_batches)]


def make_trainer(cfg: dict, device: torch.device, amp: bool, compile: bool = False) -> GLMAETrainer:
    """A ``GLMAETrainer`` (clip 3.0, mask ratio, EMA as in train.json) over ``step_iterations`` in-memory batches."""
    network, teacher, loss, optimizer = build_pretraining(cfg, device)
    batches = make_batches(cfg, cfg["step_iterations"], device)
    return GLMAETrainer(device=device, max_epochs=1, train_data_loader=batches, network=network, teacher=teacher,
                        optimizer=optimizer, loss_function=loss, mask_ratio=cfg["mask_ratio"], clip_grad_norm=3.0,
                        amp=amp, epoch_length=len(batches), compile=compile)


def plain_step_loop(cfg: dict, device: torch.device, amp: bool) -> Callable[[], None]:
    """The compute floor of ``GLMAETrainer._iteration``: the same calls over the same batches, in a Python loop."""
    network, teacher, loss_fn, optimizer = build_pretraining(cfg, device)
    batches = [{k: v.flatten(0, 1) for k, v in batch.items()}
               for batch in make_batches(cfg, cfg["step_iterations"], device)]
    network.train()

    def run() -> None:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, amp):
                student = network(batch["global_views"], batch["local_views"], cfg["mask_ratio"])
                teacher_embedding = teacher(batch["global_views"])
                losses = loss_fn(student, teacher_embedding, batch["global_views"], batch["local_views"],
                                 cfg["batch_size"])
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 3.0)
            optimizer.step()
            teacher.update(network, 0.996)

    return run


# -------------------------------------------------------------------------------------------------------- figures
def measure_step_overhead(cfg: dict, device: torch.device, repeats: int) -> dict:
    """Figure 1: seconds per ``GLMAETrainer`` iteration / seconds per plain-loop iteration (bf16 autocast on GPU)."""
    amp = device.type == "cuda"
    trainer = make_trainer(cfg, device, amp)
    floor = plain_step_loop(cfg, device, amp)
    times_trainer, times_floor = _compare(trainer.run, floor, repeats, warmup=1, device=device)
    n = cfg["step_iterations"]
    step_s, floor_s = statistics.median(times_trainer) / n, statistics.median(times_floor) / n
    return {"ratio": step_s / floor_s, "trainer_step_s": step_s, "plain_loop_step_s": floor_s,
            "iterations_per_run": n, "amp_bf16": amp, "volumes_per_s": cfg["batch_size"] / step_s}


def measure_mae_vs_monai(cfg: dict, device: torch.device, repeats: int) -> dict:
    """Figure 2: our masked local-view MAE (``GLMAE.forward_view`` + ``MaskedReconstructionLoss`` + backward) /
    ``monai.networks.nets.MaskedAutoEncoderViT`` of the same sizes (ViT-B widths, same views, same masked token count)
    + masked-patch MSE + backward.

    Ours runs as the pre-training bundle trains (train.json ``amp``: bf16 autocast) where the device runs bf16
    natively. MONAI's model is tried under the same autocast first; MONAI 1.6 fails there (its ``index_put`` of bf16
    tokens into the fp32 mask-token tensor), so it runs in fp32 and the error is recorded. ``fp32_ratio`` is the
    like-for-like figure with both in fp32. MONAI's 3D sin-cos decoder embedding needs a width divisible by 6, so a
    512-wide decoder gets a learnable one (same compute)."""
    patch, size, ratio = cfg["patch_size"], cfg["local_size"], cfg["mask_ratio"]
    views = torch.rand(cfg["num_views"], 1, size, size, size, device=device)
    ours = GLMAE(img_size=size, patch_size=patch, **cfg["vit"], **cfg["decoder"]).to(device).train()
    reconstruction = MaskedReconstructionLoss(patch)
    dec = cfg["decoder"]
    monai_mae = MaskedAutoEncoderViT(
        in_channels=1, img_size=size, patch_size=patch, **cfg["vit"], masking_ratio=ratio,
        decoder_hidden_size=dec["decoder_hidden_size"], decoder_mlp_dim=4 * dec["decoder_hidden_size"],
        decoder_num_layers=dec["decoder_num_layers"], decoder_num_heads=dec["decoder_num_heads"], qkv_bias=True,
        decoder_pos_embed_type="sincos" if dec["decoder_hidden_size"] % 6 == 0 else "learnable",
    ).to(device).train()
    amp = bool(ConfigParser.load_config_file(str(PRETRAIN_CONFIG))["amp"]) and native_bf16(device)

    def step_ours(autocast: bool) -> Callable[[], None]:
        def step() -> None:
            ours.zero_grad(set_to_none=True)
            with _autocast(device, autocast):
                out = ours.forward_view(views, ratio, embed=False)
                loss = reconstruction(out["pred"], views, out["mask"])
            loss.backward()
        return step

    def step_monai(autocast: bool) -> Callable[[], None]:
        def step() -> None:
            monai_mae.zero_grad(set_to_none=True)
            with _autocast(device, autocast):
                pred, mask = monai_mae(views)
                per_patch = (pred.float() - patchify(views, patch)).pow(2).mean(dim=-1)
                loss = (per_patch * mask).sum() / mask.sum()
            loss.backward()
        return step

    monai_amp, monai_error = amp, None
    if amp:
        try:
            step_monai(True)()
        except RuntimeError as err:  # MONAI 1.6: "Index put requires the source and destination dtypes match"
            monai_amp, monai_error = False, str(err).splitlines()[0]
    fns = {"ours": step_ours(amp), "monai": step_monai(monai_amp)}
    if amp:
        fns["ours_fp32"] = step_ours(False)
        if monai_amp:
            fns["monai_fp32"] = step_monai(False)
    times = {k: statistics.median(v) for k, v in _time_round_robin(fns, repeats, warmup=2, device=device).items()}
    fp32 = times.get("ours_fp32", times["ours"]) / times.get("monai_fp32", times["monai"])
    return {"ratio": times["ours"] / times["monai"], "ours_s": times["ours"], "monai_s": times["monai"],
            "fp32_ratio": fp32, "ours_fp32_s": times.get("ours_fp32", times["ours"]),
            "ours_precision": "bf16 autocast" if amp else "fp32", "monai_precision": "bf16 autocast" if monai_amp
            else "fp32", "monai_autocast_error": monai_error, "views": tuple(views.shape),
            "tokens_per_view": (size // patch) ** 3, "visible_per_view": max(1, int((size // patch) ** 3 * (1 - ratio))),
            "sizes": cfg}


def measure_data_pipeline(cfg: dict, data_cfg: dict, step_volumes_per_s: float, num_workers: int,
                          repeats: int, device: torch.device) -> dict:
    """Figure 3: volumes/s of ``GlobalLocalViewsd`` on cached volumes / volumes/s consumed by the training step of
    figure 1. Two pipelines, alternating, one warm-up epoch each: train.json's (volumes in host memory, a
    ``monai.data.DataLoader`` with persistent workers; the headline ratio) and configs/crops_on_device.json's
    (volumes on ``device``, views cut there, ``ThreadDataLoader`` without workers; ``on_device_ratio``)."""
    num_items = data_cfg["batches_per_epoch"] * cfg["batch_size"]
    host = [torch.rand(*data_cfg["volume_shape"]) for _ in range(data_cfg["num_volumes"])]

    def loader(volumes: list[torch.Tensor], loader_cls: type, **kwargs) -> Callable[[], None]:
        transform = GlobalLocalViewsd("image", cfg["global_size"], cfg["local_size"], cfg["num_global"],
                                      cfg["num_local"]).set_random_state(seed=0)
        dataset = Dataset([{"image": volumes[i % len(volumes)]} for i in range(num_items)], transform=transform)
        batches = loader_cls(dataset, batch_size=cfg["batch_size"], shuffle=True, **kwargs)

        def epoch() -> None:
            for batch in batches:  # each batch's views to the device, as the trainer does
                for views in batch.values():
                    views.to(device, non_blocking=True)
        return epoch

    epochs = {"workers": loader(host, DataLoader, num_workers=num_workers,
                                persistent_workers=num_workers > 0),
              "on_device": loader([v.to(device) for v in host], ThreadDataLoader, num_workers=0)}
    times = _time_round_robin(epochs, repeats, warmup=1, device=device)
    rate, device_rate = (num_items / statistics.median(times[k]) for k in ("workers", "on_device"))
    return {"ratio": rate / step_volumes_per_s, "pipeline_volumes_per_s": rate,
            "on_device_ratio": device_rate / step_volumes_per_s, "on_device_volumes_per_s": device_rate,
            "step_volumes_per_s": step_volumes_per_s, "num_workers": num_workers,
            "volume_shape": data_cfg["volume_shape"], "volumes_per_epoch": num_items}


def measure_inference(inf_cfg: dict, device: torch.device, repeats: int) -> dict:
    """Figure 4: sliding-window inference with inference.json's ``network_def`` and ``inferer`` (size overrides of
    the preset) in the config's precision (its ``amp``: fp16 autocast on GPU as ``SupervisedEvaluator`` does, bf16
    autocast by the inferer on a native-bf16 CPU) / a plain MONAI ``UNETR`` of the same sizes and weights with
    ``SlidingWindowInferer(roi, sw_batch_size, overlap=0.5)`` in fp32. Peak memory of each (see ``PeakMemory``), and
    of ours at ``sw_batch_size`` 1, the preset's and twice it, with the volume-sized output buffer for reference."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE_CONFIG))
    parser.update({k: inf_cfg[k] for k in ("roi_size", "feature_size", "sw_batch_size", "hidden_size", "mlp_dim",
                                            "num_heads")})
    ours_net = parser.get_parsed_content("network_def").to(device).eval()
    ours_inferer = parser.get_parsed_content("inferer")
    config_amp = bool(parser.get_parsed_content("amp"))
    amp = config_amp and device.type == "cuda"
    precision = ("fp16 autocast" if amp else "bf16 autocast" if config_amp and native_bf16(device) else "fp32")
    base_net = UNETR(in_channels=1, out_channels=parser["num_classes"], img_size=inf_cfg["roi_size"],
                     feature_size=inf_cfg["feature_size"], hidden_size=inf_cfg["hidden_size"],
                     mlp_dim=inf_cfg["mlp_dim"], num_heads=inf_cfg["num_heads"], proj_type="conv",
                     norm_name="instance", res_block=True, qkv_bias=True).to(device).eval()
    base_net.load_state_dict(ours_net.state_dict())
    base_inferer = SlidingWindowInferer(inf_cfg["roi_size"], inf_cfg["sw_batch_size"], overlap=0.5)
    volume = torch.rand(*inf_cfg["volume_shape"], device=device)
    memory = {}

    def run(name: str, net: torch.nn.Module, inferer: SlidingWindowInferer, autocast: bool) -> Callable[[], None]:
        def infer() -> None:
            with torch.inference_mode(), _autocast(device, autocast, torch.float16), PeakMemory(device) as peak:
                inferer(volume, net)
            if peak.peak_bytes is not None:
                memory[name] = max(memory.get(name, 0), peak.peak_bytes / 2**20)
        return infer

    times_ours, times_base = _compare(run("ours", ours_net, ours_inferer, amp),
                                      run("monai", base_net, base_inferer, False), repeats, warmup=1, device=device)
    ours_s, base_s = statistics.median(times_ours), statistics.median(times_base)
    # memory bounded by sw_batch_size: the volume-sized output buffer plus activations of sw_batch_size windows
    by_sw_batch = {}
    for sw_batch_size in sorted({1, inf_cfg["sw_batch_size"], 2 * inf_cfg["sw_batch_size"]}):
        parser["sw_batch_size"] = sw_batch_size
        name = f"ours_sw{sw_batch_size}"
        run(name, ours_net, parser.get_parsed_content("inferer", lazy=False), amp)()
        by_sw_batch[sw_batch_size] = memory.get(name)
    voxels = math.prod(inf_cfg["volume_shape"][2:])
    return {"ratio": ours_s / base_s, "ours_s": ours_s, "monai_s": base_s,
            "ours_peak_memory_mb_by_sw_batch_size": by_sw_batch,
            "output_buffer_mb": parser["num_classes"] * voxels * 4 / 2**20,
            "ours_peak_memory_mb": memory.get("ours"), "monai_peak_memory_mb": memory.get("monai"),
            "memory_measure": "torch.cuda.max_memory_allocated" if device.type == "cuda" else
            "process RSS above the level at entry after malloc_trim (coarse)",
            "volume_shape": inf_cfg["volume_shape"], "roi_size": inf_cfg["roi_size"],
            "sw_batch_size": inf_cfg["sw_batch_size"], "feature_size": inf_cfg["feature_size"],
            "ours_inferer_mode": ours_inferer.mode, "ours_precision": precision, "monai_precision": "fp32"}


def measure_finetune_step(ft_cfg: dict, device: torch.device, repeats: int) -> dict:
    """Figure 5: one fine-tuning step (``batch`` crops of ``roi_size``: forward, loss, backward, AdamW) with
    train.json's ``network_def``, ``loss`` and ``train#inferer`` in the config's precision (bf16 autocast by the
    inferer on a native-bf16 CPU; fp16 autocast on GPU as ``SupervisedTrainer`` does) / the same network (a copy with
    the same weights), loss and optimiser with MONAI's ``SimpleInferer`` in fp32."""
    parser = ConfigParser()
    parser.read_config(str(FINETUNE_CONFIG))
    parser.update({k: ft_cfg[k] for k in ("roi_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")})
    config_amp = bool(parser.get_parsed_content("amp"))
    amp = config_amp and device.type == "cuda"
    precision = ("fp16 autocast" if amp else "bf16 autocast" if config_amp and native_bf16(device) else "fp32")
    ours_net = parser.get_parsed_content("network_def").to(device)
    base_net = parser.get_parsed_content("network_def", lazy=False).to(device)
    base_net.load_state_dict(ours_net.state_dict())
    loss = parser.get_parsed_content("loss")
    ours_inferer, base_inferer = parser.get_parsed_content("train#inferer"), SimpleInferer()
    image = torch.rand(ft_cfg["batch"], 1, *ft_cfg["roi_size"], device=device)
    label = torch.randint(0, parser["num_classes"], (ft_cfg["batch"], 1, *ft_cfg["roi_size"]), device=device)

    def step(net: torch.nn.Module, inferer: Callable, autocast: bool) -> Callable[[], None]:
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-5)

        def run() -> None:
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, autocast, torch.float16):
                value = loss(inferer(image, net), label)
            value.backward()
            optimizer.step()
        return run

    times_ours, times_base = _compare(step(ours_net, ours_inferer, amp), step(base_net, base_inferer, False),
                                      repeats, warmup=1, device=device)
    ours_s, base_s = statistics.median(times_ours), statistics.median(times_base)
    return {"ratio": ours_s / base_s, "ours_s": ours_s, "fp32_s": base_s, "ours_precision": precision,
            "batch": ft_cfg["batch"], "roi_size": ft_cfg["roi_size"], "feature_size": ft_cfg["feature_size"],
            "hidden_size": ft_cfg["hidden_size"]}


def glmae_step_flops(cfg: dict) -> float:
    """Analytic FLOPs of one GL-MAE training step (multiply-add = 2 FLOPs): 3x the student forward (forward +
    backward) plus the teacher forward on intact global views. Counts patch embedding (of the visible patches only
    for the student, as ``MaskedViTEncoder`` does), transformer linears and attention, decoder, prediction and DINO
    head; ignores norms, activations, softmax and the loss."""
    d, m, layers = cfg["vit"]["hidden_size"], cfg["vit"]["mlp_dim"], cfg["vit"]["num_layers"]
    dd, d_layers = cfg["decoder"]["decoder_hidden_size"], cfg["decoder"]["decoder_num_layers"]
    h = cfg["head"]
    patch_vox = cfg["patch_size"] ** 3

    def blocks(n: int, width: int, mlp: int, depth: int) -> float:
        return depth * (2 * n * (4 * width * width + 2 * width * mlp) + 4 * n * n * width)

    head = 2 * (d * h["head_hidden_dim"] + h["head_hidden_dim"] ** 2 + h["head_hidden_dim"] * h["head_bottleneck_dim"]
                + h["head_bottleneck_dim"] * h["head_out_dim"])
    student = teacher = 0.0
    for size, views in ((cfg["global_size"], cfg["num_global"]), (cfg["local_size"], cfg["num_local"])):
        n = (size // cfg["patch_size"]) ** 3
        visible = max(1, int(n * (1 - cfg["mask_ratio"])))
        encoder = 2 * visible * patch_vox * d + blocks(visible + 1, d, m, layers)
        decoder = 2 * (visible + 1) * d * dd + blocks(n + 1, dd, 4 * dd, d_layers) + 2 * n * dd * patch_vox
        student += cfg["batch_size"] * views * (encoder + decoder + head)
        if size == cfg["global_size"]:
            teacher += cfg["batch_size"] * views * (2 * n * patch_vox * d + blocks(n + 1, d, m, layers) + head)
    return 3 * student + teacher


def measure_compile(cfg: dict, device: torch.device, repeats: int) -> dict:
    """Optional (``--compile``): seconds per ``GLMAETrainer`` iteration with ``compile=True`` (``torch.compile`` of
    the student, as the bundle's ``compile`` knob does) / eager, and the one-off compile time (first run)."""
    amp = device.type == "cuda"
    compiled, eager = make_trainer(cfg, device, amp, compile=True), make_trainer(cfg, device, amp)
    _sync(device)
    start = time.perf_counter()
    compiled.run()
    _sync(device)
    first_run_s = time.perf_counter() - start
    times_compiled, times_eager = _compare(compiled.run, eager.run, repeats, warmup=1, device=device)
    n = cfg["step_iterations"]
    compiled_s, eager_s = statistics.median(times_compiled) / n, statistics.median(times_eager) / n
    return {"ratio": compiled_s / eager_s, "compiled_step_s": compiled_s, "eager_step_s": eager_s,
            "first_run_s": first_run_s, "amp_bf16": amp}


def measure_gpu_vit_b_step(device: torch.device, peak_tflops: float, repeats: int) -> dict:
    """Figure 5 (GPU): samples/s, peak memory and MFU of a ``GLMAETrainer`` step at the paper sizes, bf16."""
    cfg = PAPER_PRETRAIN
    trainer = make_trainer(cfg, device, amp=True)
    trainer.run()
    times = []
    for _ in range(repeats):
        with PeakMemory(device) as peak:
            _sync(device)
            start = time.perf_counter()
            trainer.run()
            _sync(device)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times) / cfg["step_iterations"]
    flops = glmae_step_flops(cfg)
    return {"samples_per_s": cfg["batch_size"] / step_s, "step_s": step_s, "peak_memory_gb": peak.peak_bytes / 2**30,
            "step_tflop": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
            "mfu": flops / step_s / (peak_tflops * 1e12), "peak_tflops": peak_tflops}


# ------------------------------------------------------------------------------------------------------------ main
def machine_info(device: torch.device) -> dict:
    """Versions, device name and CPU count of this run."""
    return {"torch": torch.__version__, "monai": monai.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _mb(value: float | None) -> str:
    return "" if value is None else f", {value:.0f} MB"


def print_table(results: dict) -> None:
    """Print figure, ours, baseline, ratio and target as a fixed-width table, then the secondary figures."""
    d = results["details"]
    rows = []
    if "step" in d:
        rows.append(("step_overhead_ratio", f"{d['step']['trainer_step_s'] * 1e3:.1f} ms/step",
                     f"{d['step']['plain_loop_step_s'] * 1e3:.1f} ms/step (plain loop)"))
    if "mae" in d:
        rows.append(("mae_vs_monai_ratio", f"{d['mae']['ours_s'] * 1e3:.0f} ms {d['mae']['ours_precision']}",
                     f"{d['mae']['monai_s'] * 1e3:.0f} ms {d['mae']['monai_precision']} (MONAI MAE)"))
    if "data" in d:
        rows.append(("data_to_step_ratio", f"{d['data']['pipeline_volumes_per_s']:.1f} vol/s",
                     f"{d['data']['step_volumes_per_s']:.1f} vol/s (step)"))
    if "inference" in d:
        inf = d["inference"]
        rows.append(("inference_vs_monai_ratio",
                     f"{inf['ours_s']:.2f} s {inf['ours_precision']}" + _mb(inf["ours_peak_memory_mb"]),
                     f"{inf['monai_s']:.2f} s fp32" + _mb(inf["monai_peak_memory_mb"]) + " (MONAI)"))
    if "finetune" in d:
        ft = d["finetune"]
        rows.append(("finetune_vs_fp32_ratio", f"{ft['ours_s'] * 1e3:.0f} ms/step {ft['ours_precision']}",
                     f"{ft['fp32_s'] * 1e3:.0f} ms/step fp32 (SimpleInferer)"))
    print(f"{'figure':<26}{'ours':<36}{'baseline':<42}{'ratio':>8}  target")
    for name, ours, base in rows:
        print(f"{name:<26}{ours:<36}{base:<42}{results[name]:>8.3f}  {TARGETS[name]}")
    if "inference" in d:
        inf = d["inference"]
        by_sw = ", ".join(f"{k}: {_mb(v)[2:] or '-'}" for k, v in inf["ours_peak_memory_mb_by_sw_batch_size"].items())
        print(f"inference peak memory of ours by sw_batch_size ({inf['memory_measure']}): {by_sw}; "
              f"output buffer {inf['output_buffer_mb']:.0f} MB")
    if "data" in d:
        print(f"data, configs/crops_on_device.json (views cut on {d['machine']['device']}, ThreadDataLoader): "
              f"{d['data']['on_device_volumes_per_s']:.1f} vol/s = {d['data']['on_device_ratio']:.2f}x the step")
    if "mae" in d:
        mae = d["mae"]
        print(f"MAE like for like (both fp32): ratio {mae['fp32_ratio']:.3f} (ours {mae['ours_fp32_s'] * 1e3:.0f} ms)")
        if mae["monai_autocast_error"]:
            print(f"MONAI MaskedAutoEncoderViT under bf16 autocast: {mae['monai_autocast_error']}")
    if "compile" in d:
        c = d["compile"]
        print(f"torch.compile step: {c['compiled_step_s'] * 1e3:.1f} ms vs eager {c['eager_step_s'] * 1e3:.1f} ms = "
              f"{c['ratio']:.3f} (first run, compiling: {c['first_run_s']:.0f} s)")
    gpu = d.get("gpu_vit_b_step")
    if gpu and "skipped" in gpu:
        print(f"ViT-B step (GPU): skipped, {gpu['skipped']}")
    elif gpu:
        print(f"ViT-B step (GPU, bf16): {gpu['samples_per_s']:.2f} samples/s, peak {gpu['peak_memory_gb']:.1f} GB, "
              f"{gpu['achieved_tflops']:.0f} TFLOP/s, MFU {gpu['mfu']:.1%} of {gpu['peak_tflops']:g} TFLOP/s")


FIGURES = ("step", "mae", "data", "inference", "finetune", "gpu")


def run_benchmark(device: torch.device, preset: str, repeats: int, num_workers: int, peak_tflops: float,
                  compile: bool = False, figures: Sequence[str] = FIGURES,
                  inference_shape: Sequence[int] | None = None) -> dict:
    """Run the chosen ``figures`` (the data figure needs the step's rate, so it runs the step too) and return the
    results dict written as JSON: the ratio of each figure that ran, ``targets`` and ``details``."""
    cfg = PRESETS[preset]
    inf_cfg = dict(cfg["inference"])
    if inference_shape is not None:
        inf_cfg["volume_shape"] = (1, 1, *inference_shape)
    details: dict = {"preset": preset, "repeats": repeats, "machine": machine_info(device),
                     "sizes": {"pretrain": cfg["pretrain"], "mae": cfg["mae"], "inference": inf_cfg,
                               "finetune": cfg["finetune"]}}
    results: dict = {}
    if "step" in figures or "data" in figures:
        details["step"] = measure_step_overhead(cfg["pretrain"], device, repeats)
        results["step_overhead_ratio"] = details["step"]["ratio"]
    if "mae" in figures:
        details["mae"] = measure_mae_vs_monai(cfg["mae"], device, repeats)
        results["mae_vs_monai_ratio"] = details["mae"]["ratio"]
    if "data" in figures:
        details["data"] = measure_data_pipeline(cfg["pretrain"], cfg["data"], details["step"]["volumes_per_s"],
                                                num_workers, repeats, device)
        results["data_to_step_ratio"] = details["data"]["ratio"]
    if "inference" in figures:
        details["inference"] = measure_inference(inf_cfg, device, repeats)
        results["inference_vs_monai_ratio"] = details["inference"]["ratio"]
    if "finetune" in figures:
        details["finetune"] = measure_finetune_step(cfg["finetune"], device, repeats)
        results["finetune_vs_fp32_ratio"] = details["finetune"]["ratio"]
    if "gpu" in figures:
        details["gpu_vit_b_step"] = (measure_gpu_vit_b_step(device, peak_tflops, repeats) if device.type == "cuda"
                                     else {"skipped": "needs --device cuda"})
    if compile:
        details["compile"] = measure_compile(cfg["pretrain"], device, repeats)
    return results | {"targets": TARGETS, "details": details}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                        help="quick: CPU sizes (quickstart presets); paper: ViT-B/16, 160³/96³ views, 512x512x200 CT")
    parser.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES),
                        help="which figures to run (data also runs step, whose rate it needs)")
    parser.add_argument("--inference-shape", nargs=3, type=int, metavar=("H", "W", "D"),
                        help="volume size of the inference figure instead of the preset's")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads for every figure")
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the data pipeline (train.json uses 4)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU (H100 bf16 dense)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the step with torch.compile against eager (compiling takes minutes)")
    parser.add_argument("--out", default="results.json", help="JSON output file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but CUDA is not available.")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = run_benchmark(torch.device(args.device), args.preset, args.repeats, args.num_workers, args.peak_tflops,
                            args.compile, args.figures, args.inference_shape)
    print_table(results)
    Path(args.out).write_text(json.dumps(results, indent=2, default=list))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
