"""Train one sparse offline-RL agent: `python run.py algo=iql sparsity=0.95` (Hydra overrides)."""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from sparse_offline_rl.cli import run_training

    return run_training(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    sys.exit(main())
