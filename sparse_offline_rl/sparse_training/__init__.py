"""Sparsity during training: rules that change the masks as the agent trains (GMP, SET, RigL, Gibbs),
on the one mask mechanism of `sparse/` (`MaskSet.set_masks`)."""
