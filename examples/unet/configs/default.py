"""Default hyperparameters for the U-Net demo.

Sized for two CPU cores: 200 steps of 8 crops of 96x96 take about 160 s of CPU time,
compilation included. On a GPU or TPU raise ``steps``, ``batch_size`` and ``features``.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides a training run; the seed makes it reproducible."""

    seed: int = 0
    steps: int = 200
    batch_size: int = 8
    crop: int = 96
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    loss: str = "dice_ce"  # one of train.LOSSES
    features: tuple[int, ...] = (16, 32, 64)
    eval_every: int = 50
    data_parallel: bool = False


def get_config() -> Config:
    return Config()
