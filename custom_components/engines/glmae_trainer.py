"""The GL-MAE trainer: one Ignite iteration = student pass, teacher pass, losses, backward, step, EMA update."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
from monai.engines import SupervisedTrainer
from monai.utils import convert_to_tensor
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from custom_components.collapse_metrics import cross_volume_cosine
from custom_components.losses.glmae_loss import GLMAELoss
from custom_components.networks.glmae import EMATeacher
from custom_components.precision import native_bf16

__all__ = ["GLMAETrainer", "cosine_momentum"]


def cosine_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """DINO's teacher momentum schedule: ``final - (final - base) * (cos(pi * step / total) + 1) / 2``."""
    if total_steps <= 0:
        return base
    progress = min(max(step / total_steps, 0.0), 1.0)
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


class GLMAETrainer(SupervisedTrainer):
    """A MONAI ``SupervisedTrainer`` whose iteration is the GL-MAE pre-training step.

    Each batch holds ``global_views [B, p, C, G, G, G]`` and ``local_views [B, q, C, L, L, L]``
    (``custom_components.transforms.GlobalLocalViewsd``). One iteration:

    1. the student masks and encodes all global views in one pass and all local views in another, reconstructs the
       masked patches with the shared decoder and projects the CLS tokens;
    2. the EMA teacher encodes the intact global views without gradients;
    3. ``GLMAELoss`` gives reconstruction + consistency terms; a non-finite loss stops training with an error;
    4. backward (divided by ``accumulation_steps``), the DINO head's last layer frozen in the first
       ``freeze_last_layer_epochs`` epochs, gradient clipping, optimizer step every ``accumulation_steps``
       iterations, then the EMA update with the cosine momentum schedule.

    ``engine.state.output`` is a list of one dict, like a decollated ``SupervisedTrainer`` output (MONAI handlers read
    it with ``from_engine(["loss"], first=True)``, e.g. those of ``--tracking mlflow``). The dict holds ``loss`` and
    every term (``loss_rec_local``, ``loss_rec_global``, ``loss_g2g``, ``loss_g2l``) as floats, plus the collapse
    monitors: ``teacher_entropy``, ``teacher_logit_spread``, ``kl_g2g``, ``kl_g2l`` (DINO only, see ``GLMAELoss``) and
    ``log_k``, ``student_cls_cosine`` and ``teacher_cls_cosine`` (mean cosine between the pooled tokens the heads
    see, of views of different volumes of the batch; left out with one volume per batch, and the teacher's without a
    teacher) and the same on features centred by the batch mean (``*_cls_cosine_centred``), and the
    ``learning_rate``, ``ema_momentum`` and ``teacher_temp`` of the step. ``engine.state.teacher_marginal`` holds
    the step's mean teacher distribution ``[K]`` on the device (DINO only, else None), for the epoch-pooled
    marginal entropy. With one volume per batch,
    ``engine.state.glmae_features`` holds the step's features ``{"student": [1, D], "teacher": [1, D] or None}``
    on the CPU, for monitors that pool over the epoch instead (None otherwise).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, epoch_length, train_handlers,
            key_train_metric, non_blocking, compile, compile_kwargs: as for ``SupervisedTrainer``.
        teacher: the ``EMATeacher`` of ``network``.
        loss_function: a ``GLMAELoss``.
        mask_ratio: fraction of tokens masked in every student view (0.75).
        ema_momentum: teacher momentum at the start; it follows a cosine schedule to ``ema_momentum_end``.
        clip_grad_norm: max gradient norm, or None/0 for no clipping.
        amp: autocast the forward passes to bfloat16 (on GPU and CPU; no grad scaler is needed for bf16).
        accumulation_steps: optimizer step every N iterations (effective batch = batch × N × world size).
        freeze_last_layer_epochs: no gradient reaches the last (prototype) layer of the DINO head during the first
            N epochs (DINO's stabiliser: the prototypes cannot all turn away from a not-yet-trained embedding).
        global_key, local_key: batch keys of the views.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: DataLoader,
        network: nn.Module,
        teacher: EMATeacher,
        optimizer: Optimizer,
        loss_function: GLMAELoss,
        mask_ratio: float = 0.75,
        ema_momentum: float = 0.996,
        ema_momentum_end: float = 1.0,
        clip_grad_norm: float | None = 3.0,
        amp: bool = False,
        accumulation_steps: int = 1,
        freeze_last_layer_epochs: int = 0,
        epoch_length: int | None = None,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        non_blocking: bool = True,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        global_key: str = "global_views",
        local_key: str = "local_views",
        iteration_update: Callable | None = None,
    ) -> None:
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
        if not 0.0 <= ema_momentum <= ema_momentum_end <= 1.0:
            raise ValueError(f"need 0 <= ema_momentum <= ema_momentum_end <= 1, got {ema_momentum}, {ema_momentum_end}.")
        if accumulation_steps < 1:
            raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}.")
        if freeze_last_layer_epochs < 0:
            raise ValueError(f"freeze_last_layer_epochs must be >= 0, got {freeze_last_layer_epochs}.")
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
            optimizer=optimizer, loss_function=loss_function, epoch_length=epoch_length, non_blocking=non_blocking,
            iteration_update=iteration_update, key_train_metric=key_train_metric, train_handlers=train_handlers,
            amp=False, compile=compile, compile_kwargs=compile_kwargs, decollate=False,
        )
        self.teacher = teacher
        self.mask_ratio = mask_ratio
        self.ema_momentum = ema_momentum
        self.ema_momentum_end = ema_momentum_end
        self.clip_grad_norm = clip_grad_norm
        self.use_amp = amp
        if amp and not native_bf16(device):
            self.logger.warning(f"amp: bf16 autocast is emulated on {device} (no native bf16: a CPU without AVX512-BF16 "
                                f"or AMX, or an older GPU) and is likely slower than fp32; set amp to false there.")
        self.accumulation_steps = accumulation_steps
        self.freeze_last_layer_epochs = freeze_last_layer_epochs
        self.global_key = global_key
        self.local_key = local_key

    def _views(self, batchdata: dict, key: str, needed: bool) -> tuple[torch.Tensor | None, int]:
        """``[B, n, C, *S]`` from the batch -> ``([B * n, C, *S]`` on the device, or None, and B)."""
        views = convert_to_tensor(batchdata[key], track_meta=False)
        if views.ndim != 6:
            raise ValueError(f"batch['{key}'] must be [B, views, C, H, W, D], got shape {tuple(views.shape)}.")
        batch_size = views.shape[0]
        if not needed or views.shape[1] == 0:
            return None, batch_size
        return views.flatten(0, 1).to(self.state.device, non_blocking=self.non_blocking), batch_size

    def _iteration(self, engine: GLMAETrainer, batchdata: dict) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        loss_fn: GLMAELoss = engine.loss_function
        global_views, batch_size = engine._views(batchdata, engine.global_key, loss_fn.needs("global"))
        local_views, _ = engine._views(batchdata, engine.local_key, loss_fn.needs("local"))
        acc = engine.accumulation_steps
        step_in_cycle = (engine.state.iteration - 1) % acc
        engine.network.train()
        if step_in_cycle == 0:
            engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        loss_fn.set_epoch(engine.state.epoch - 1)
        autocast = torch.autocast(device_type=torch.device(engine.state.device).type, dtype=torch.bfloat16,
                                  enabled=engine.use_amp)
        with autocast:
            embed = [kind for kind in ("global", "local") if loss_fn.needs(f"{kind}_embedding")]
            student = engine.network(global_views, local_views, engine.mask_ratio, embed)
            teacher_features, teacher = (engine.teacher(global_views, return_features=True) if loss_fn.needs("teacher")
                                         else (None, None))
            losses = loss_fn(student, teacher, global_views, local_views, batch_size)
        engine.state.teacher_marginal = losses.pop("teacher_marginal", None)
        values = {**losses, **engine._cosines(student, teacher_features, batch_size)}
        # one device-to-host transfer for the finiteness check, the logged terms and the monitors
        terms = dict(zip(values, torch.stack([v.detach().float() for v in values.values()]).tolist()))
        if not math.isfinite(terms["loss"]):
            raise FloatingPointError(
                f"GL-MAE loss is not finite at epoch {engine.state.epoch}, iteration {engine.state.iteration}: "
                f"{terms}. Lower learning_rate, check the input intensities, or enable gradient clipping."
            )
        (losses["loss"] / acc).backward()
        if engine.state.epoch <= engine.freeze_last_layer_epochs:
            last_layer = getattr(getattr(engine.network, "module", engine.network).head, "last_layer", None)
            for param in last_layer.parameters() if last_layer is not None else ():
                param.grad = None
        last_iteration = engine.state.epoch_length * engine.state.max_epochs
        momentum = cosine_momentum((engine.state.iteration - 1) // acc, last_iteration // acc, engine.ema_momentum,
                                   engine.ema_momentum_end)
        if step_in_cycle == acc - 1 or engine.state.iteration == last_iteration:
            if engine.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(engine.network.parameters(), engine.clip_grad_norm)
            engine.optimizer.step()
            engine.teacher.update(engine.network, momentum)
        engine.state.output = [{
            **terms, "log_k": loss_fn.log_k, "learning_rate": engine.optimizer.param_groups[0]["lr"],
            "teacher_temp": getattr(loss_fn.consistency, "teacher_temp", math.nan), "ema_momentum": momentum,
        }]
        return engine.state.output

    def _cosines(self, student: dict, teacher_features: torch.Tensor | None, batch_size: int) -> dict[str, torch.Tensor]:
        """``student_cls_cosine`` and ``teacher_cls_cosine`` as 0-d device tensors (see the class docstring), none with
        one volume per batch, when ``state.glmae_features`` is set instead."""
        kind = "global" if "global_features" in student else "local"
        features = {"student": student[f"{kind}_features"].detach(), "teacher": teacher_features}
        grouped = {k: None if v is None else v.float().reshape(batch_size, -1, v.shape[-1]) for k, v in features.items()}
        self.state.glmae_features = ({k: None if v is None else v.mean(1).cpu() for k, v in grouped.items()}
                                     if batch_size == 1 else None)
        if batch_size == 1:
            return {}
        return {f"{k}_cls_cosine{suffix}": cross_volume_cosine(v, centred) for k, v in grouped.items() if v is not None
                for suffix, centred in (("", False), ("_centred", True))}
