"""The sparse mechanism: how a pruned network is represented, kept sparse and computed.

Nothing here decides *which* weights go (that is `pruning/` at initialization and `sparse_training/`
during training); everything here is shared by both, by the algorithms, evaluation and export:
- `masks.py`: `MaskSet`, the masks during training (re-applied to weights, gradients and optimizer
  state after every step; `set_masks` changes them).
- `wiring.py`: how a network's Linear layers are wired, read from its `forward` (`LayerGraph`).
- `linear.py`: `SparseLinear`, a pruned layer stored as its kept weights only (CSR) with its kernels.
- `stacked_layers.py`: member-stacked dense and sparse layers (K agents in one process).
- `kernels.py`: the measured per-layer choice between a CSR layer and a dense-masked one.
- `density.py`: what a network keeps: parameters, FLOPs, dead units, the density table.
- `fan_init.py`: kept weights re-drawn to their fans under the mask (`pruner.sparse_init`).
- `narrow.py`: physically narrower networks (hidden units removed) and their layouts.
- `checkpoint.py`: `restore_pruned`, a saved pruned algorithm rebuilt (narrowed, its layers converted
  as recorded) before its state is loaded.
"""
