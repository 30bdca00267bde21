"""A tiny GL-MAE trainer on two synthetic volumes, for the trainer and collapse-monitor tests."""

import numpy as np
import torch
from conftest import TINY
from monai.data import DataLoader, Dataset
from monai.transforms import Compose, ScaleIntensityRanged

from custom_components.engines import GLMAETrainer, param_groups_weight_decay
from custom_components.losses import GLMAELoss
from custom_components.networks import GLMAE, EMATeacher
from custom_components.synthetic import make_synthetic_ct
from custom_components.transforms import GlobalLocalViewsd


def tiny_loader(num_volumes=2, batch_size=2, seed=0):
    """Global (64³) and local (32³) views of ``num_volumes`` synthetic CT volumes, in a fixed order."""
    data = [{"image": make_synthetic_ct((64, 64, 48), seed=seed + i)[0][None].astype(np.float32)}
            for i in range(num_volumes)]
    transform = Compose([
        ScaleIntensityRanged("image", -1000, 1000, 0.0, 1.0, clip=True),
        GlobalLocalViewsd("image", global_size=64, local_size=32, num_global_views=2, num_local_views=2),
    ]).set_random_state(seed)
    return DataLoader(Dataset(data, transform), batch_size=batch_size, shuffle=False, num_workers=0)


def make_trainer(max_epochs, lr=2e-3, amp=False, accumulation_steps=1, consistency="dino", freeze_last_layer_epochs=0,
                 **loss_kwargs):
    """``(trainer, student, teacher)``: a seeded tiny GL-MAE on :func:`tiny_loader` on the CPU; ``loss_kwargs`` go to
    ``GLMAELoss``."""
    torch.manual_seed(0)
    net = GLMAE(img_size=32, consistency=consistency, **TINY)
    teacher = EMATeacher(net)
    loss = GLMAELoss(patch_size=16, head_out_dim=32, consistency=consistency, **loss_kwargs)
    opt = torch.optim.AdamW(param_groups_weight_decay(net, 0.05), lr=lr)
    return GLMAETrainer("cpu", max_epochs, tiny_loader(), net, teacher, opt, loss, amp=amp,
                        accumulation_steps=accumulation_steps,
                        freeze_last_layer_epochs=freeze_last_layer_epochs), net, teacher
