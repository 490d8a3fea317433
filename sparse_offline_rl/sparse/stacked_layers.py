"""Member-stacked networks: K agents' copies of one network computed as one.

K agents of one algorithm on one dataset (they may differ in seed, pruner, scope and sparsity) have
networks of identical shapes. Stacked, every `mlp` of the K members becomes one `StackedMLP` whose
layers hold all members' weights:

- `StackedDense`: weight (K, out, in), bias (K, out); one `torch.baddbmm` for all members. Pruned
  entries are kept at zero by a MaskSet over the (K, out, in) mask, exactly as for a single run.
- `StackedSparse`: the members' compressed layers as ONE block-diagonal CSR matrix
  (K * out, K * in): its values are the members' kept weights one member after the other, so one
  CSR product, one transposed product and one `sampled_addmm` serve all K members (the
  `SparseLinear` kernels, unchanged). Used where every member's own layer is a SparseLinear.

Rows. The stacked algorithm's batch holds each member's B rows in turn ((K * B, ...), member-major).
Inside a StackedMLP activations run feature-major, (K * features, B), which is the layout both
kernels read and write without copies: (K, in, B) is what `baddbmm` multiplies and (K * in, B) is the
block-diagonal product's dense operand. Only the MLP's input and output are transposed.

`Link` ties one stacked parameter to the K member parameters it came from (`join` builds the
stacked tensor from member-shaped tensors, `split` does the inverse), for the parameters, their
target copies and the optimizer's per-parameter state (Adam's moments are elementwise, so a stacked
Adam is K separate Adams). The members' own objects stay intact: their state is written back
(`Link.split`) before anything reads it (evaluation, checkpoints), so each member is saved exactly
as its separate run would be.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from sparse_offline_rl.sparse.linear import SparseLinear, csr_forward, SparseLinearFunction, eligible


class StackedDense(nn.Module):
    """K dense(-masked) Linear layers of equal shape; input and output feature-major (K * features, B)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())  # (K, out, in)
        self.bias = nn.Parameter(bias.detach().clone())  # (K, out)

    def forward(self, ht: torch.Tensor) -> torch.Tensor:
        members, out_features, in_features = self.weight.shape
        y = torch.baddbmm(self.bias.unsqueeze(-1), self.weight, ht.view(members, in_features, -1))
        return y.view(members * out_features, -1)


class StackedSparse(SparseLinear):
    """K compressed layers as one block-diagonal SparseLinear (K * out, K * in); input and output
    feature-major (K * features, B). Bias (K, out), so that it stacks like a dense layer's."""

    def __init__(self, layers: Sequence[SparseLinear]) -> None:
        out_f, in_f, members = layers[0].out_features, layers[0].in_features, len(layers)
        # Member k's rows are k * out ... (k + 1) * out - 1 and its columns k * in ...: the CSR of the
        # block-diagonal matrix is the members' CSRs one after the other, columns shifted.
        nnz = [layer.nnz for layer in layers]
        row_offsets = torch.tensor([0, *nnz[:-1]]).cumsum(0)
        crow = torch.cat([layers[0].crow_indices[:1].long()] + [
            layer.crow_indices[1:].long() + int(offset) for layer, offset in zip(layers, row_offsets)])
        col = torch.cat([layer.col_indices.long() + k * in_f for k, layer in enumerate(layers)])
        values = torch.cat([layer.values.detach() for layer in layers])
        super().__init__(members * in_f, members * out_f, crow, col, values, bias=None)
        self.members = members
        self.bias = nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))
        self.nnz_per_member = nnz

    def forward(self, ht: torch.Tensor) -> torch.Tensor:
        # SparseLinear's kernels multiply the transpose of (B, in) rows: ht is that transpose, so no
        # copy is made. The bias enters as its flattened (K * out) view, so its gradient lands in
        # the (K, out) parameter.
        bias = self.bias.reshape(-1)
        if torch.is_grad_enabled() and (ht.requires_grad or self.values.requires_grad or self.bias.requires_grad):
            return SparseLinearFunction.apply(ht, self.values, bias, self, True)
        return csr_forward(ht.t(), self.values, bias, self)[0].t()


class StackedMLP(nn.Sequential):
    """The K members' `mlp`s as one: StackedDense / StackedSparse layers and the members' activations,
    at the indices the members' layers had (so parameter names match: "0.weight", "2.values", ...)."""

    def __init__(self, members: int, modules: Sequence[nn.Module]) -> None:
        super().__init__(*modules)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows, in_features = x.shape
        if rows % self.members:
            raise ValueError(f"a stacked network of {self.members} members got {rows} rows: a batch holds "
                             "each member's rows in turn, so the number of rows must be a multiple of the members")
        batch = rows // self.members
        ht = x.view(self.members, batch, in_features).transpose(1, 2).reshape(self.members * in_features, batch)
        for layer in self:
            ht = layer(ht)
        out_features = ht.shape[0] // self.members
        return ht.view(self.members, out_features, batch).transpose(1, 2).reshape(rows, out_features)


@dataclass
class Link:
    """One stacked parameter and the K member parameters it holds. `join(tensors)` builds a tensor
    shaped like `stacked` from K tensors shaped like the members' (weights, Adam moments); `split`
    is its inverse."""

    stacked: nn.Parameter
    members: list[nn.Parameter]
    join: Callable[[list[torch.Tensor]], torch.Tensor]
    split: Callable[[torch.Tensor], list[torch.Tensor]]


def _stack_link(stacked: nn.Parameter, members: list[nn.Parameter]) -> Link:
    return Link(stacked, members, lambda ts: torch.stack(ts), lambda t: list(t.unbind(0)))


def _dense_of(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (out, in), kept mask) of a member layer, whichever way it is stored."""
    if isinstance(layer, SparseLinear):
        return layer.dense_weight(), layer.mask()
    return layer.weight.detach(), torch.ones_like(layer.weight, dtype=torch.bool)


def stack_layers(layers: Sequence[nn.Module], masks: Sequence[torch.Tensor | None]) -> tuple[nn.Module, list[Link], torch.Tensor | None]:
    """One stacked layer from the members' layer at one position (nn.Linear, dense-masked by `masks[k]`
    (None: fully kept), or SparseLinear). Block-diagonal sparse when every member's layer is a
    SparseLinear, else dense-masked. Returns the layer, its links and, when dense, its (K, out, in)
    mask (None when nothing is pruned)."""
    if all(isinstance(layer, SparseLinear) for layer in layers):
        stacked = StackedSparse(layers)
        sizes = stacked.nnz_per_member
        values = Link(stacked.values, [layer.values for layer in layers],
                      lambda ts: torch.cat(ts), lambda t, sizes=sizes: list(t.split(sizes)))
        return stacked, [values, _stack_link(stacked.bias, [layer.bias for layer in layers])], None
    weights, kept = zip(*(_dense_of(layer) for layer in layers))
    mask = torch.stack([k if m is None or isinstance(layer, SparseLinear) else m.to(torch.bool)
                        for layer, k, m in zip(layers, kept, masks)])
    stacked = StackedDense(torch.stack(weights), torch.stack([layer.bias.detach() for layer in layers]))

    def member_weight(layer: nn.Module) -> nn.Parameter:
        return layer.values if isinstance(layer, SparseLinear) else layer.weight

    def join(ts: list[torch.Tensor]) -> torch.Tensor:
        # A member whose own layer is compressed holds only its kept entries: scatter them.
        out = []
        for layer, t, keep in zip(layers, ts, mask):
            if isinstance(layer, SparseLinear):
                dense = t.new_zeros(keep.shape)
                dense[keep] = t
                t = dense
            out.append(t)
        return torch.stack(out)

    def split(t: torch.Tensor) -> list[torch.Tensor]:
        return [t[k][mask[k]] if isinstance(layer, SparseLinear) else t[k] for k, layer in enumerate(layers)]

    links = [Link(stacked.weight, [member_weight(layer) for layer in layers], join, split),
             _stack_link(stacked.bias, [layer.bias for layer in layers])]
    return stacked, links, (None if bool(mask.all()) else mask)


def is_mlp(module: nn.Module) -> bool:
    """An `mlp` (algorithms.networks): a Sequential of eligible Linear layers (some maybe compressed)
    and activations."""
    if not isinstance(module, nn.Sequential) or isinstance(module, StackedMLP):
        return False
    linears = [m for m in module if isinstance(m, (nn.Linear, SparseLinear))]
    return bool(linears) and all(isinstance(m, SparseLinear) or eligible(m) for m in linears) \
        and all(not list(m.parameters()) for m in module if m not in linears)


def stack_mlp(seqs: Sequence[nn.Sequential], masks: Sequence[Mapping[str, torch.Tensor]]) -> tuple[StackedMLP, list[Link], dict[str, torch.Tensor]]:
    """The members' `mlp` at one place as a StackedMLP; `masks[k]` are member k's masks of that mlp
    ("<index>.weight"). Returns it, its links and the masks of its dense-masked layers ((K, out, in))."""
    modules, links, stacked_masks = [], [], {}
    for index, first in enumerate(seqs[0]):
        if isinstance(first, (nn.Linear, SparseLinear)):
            layer, layer_links, mask = stack_layers([seq[index] for seq in seqs],
                                                    [m.get(f"{index}.weight") for m in masks])
            links += layer_links
            if mask is not None:
                stacked_masks[f"{index}.weight"] = mask
            modules.append(layer)
        elif isinstance(first, nn.ReLU):
            # Out of place: the stacked layers' outputs are views ((K * out, B) of (K, out, B)), and an
            # in-place op on a view costs autograd a zero-filled buffer and a copy in backward.
            modules.append(nn.ReLU())
        else:
            modules.append(first)  # the activation: no parameters, the same function for every member
    return StackedMLP(len(seqs), modules), links, stacked_masks


def layout(net: nn.Module) -> dict[str, tuple[int, ...]]:
    """The shapes that must match for networks to stack: each Linear layer's (out, in), however it is
    stored, and every other parameter's shape."""
    shapes = {name: (m.out_features, m.in_features) for name, m in net.named_modules()
              if isinstance(m, (nn.Linear, SparseLinear))}
    linear = {f"{name}.{leaf}" if name else leaf for name in shapes for leaf in ("weight", "values", "bias")}
    shapes.update({name: tuple(p.shape) for name, p in net.named_parameters() if name not in linear})
    return shapes


def _set(root: nn.Module, path: str, value: nn.Module | nn.Parameter) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, value)


def stack_network(net: nn.Module, members: Sequence[nn.Module], masks: Sequence[Mapping[str, torch.Tensor]]
                  ) -> tuple[list[Link], dict[str, torch.Tensor], dict[int, nn.Parameter]]:
    """Turn `net` (shaped like each of `members`) into the stacked network of `members`, in place:
    each `mlp` becomes a StackedMLP, every other parameter (a log-std, a learned scalar) becomes
    (K, *shape). `masks[k]`: member k's masks of this network ("<layer>.weight"). Returns the links,
    the stacked masks of dense-masked layers (same keys) and {id(old parameter): new parameter}."""
    links: list[Link] = []
    stacked_masks: dict[str, torch.Tensor] = {}
    replaced: dict[int, nn.Parameter] = {}
    for path, module in [(p, m) for p, m in net.named_modules() if is_mlp(m)]:
        seqs = [member.get_submodule(path) for member in members]
        prefix = f"{path}." if path else ""
        local = [{k[len(prefix):]: v for k, v in m.items() if k.startswith(prefix)} for m in masks]
        stacked, seq_links, seq_masks = stack_mlp(seqs, local)
        replaced.update({id(old): new for old, new in zip(module.parameters(), stacked.parameters())})
        links += seq_links
        stacked_masks.update({prefix + k: v for k, v in seq_masks.items()})
        if not path:
            raise ValueError("the network is itself an mlp; wrap it in a module to stack it")
        _set(net, path, stacked)
    new_ids = {id(p) for p in replaced.values()}
    for name, param in list(net.named_parameters()):
        if id(param) in new_ids:
            continue
        member_params = [dict(member.named_parameters())[name] for member in members]
        new = nn.Parameter(torch.stack([p.detach() for p in member_params]), requires_grad=param.requires_grad)
        replaced[id(param)] = new
        links.append(_stack_link(new, member_params))
        _set(net, name, new)
    for link in links:  # target networks stay frozen
        link.stacked.requires_grad_(link.members[0].requires_grad)
    for module in net.modules():  # modules that line per-member parameters up with rows read their count here
        if isinstance(getattr(module, "members", None), int):
            module.members = len(members)
    return links, stacked_masks, replaced


# -- optimizer state, parameters: members <-> stacked ---------------------------------------------
def join_optimizer_state(stacked: torch.optim.Optimizer, members: Sequence[torch.optim.Optimizer], links: Iterable[Link]) -> None:
    """The stacked optimizer's state from the members' (once the stacked parameters are in its
    groups): per-weight tensors joined, step counts (equal in all members) taken
    from the first. Group settings (learning rate after a schedule) come from the first member."""
    by_param = {id(link.stacked): link for link in links}
    state: defaultdict = defaultdict(dict)
    for group, member_group in zip(stacked.param_groups, members[0].param_groups):
        group.update({k: v for k, v in member_group.items() if k != "params"})
        for p in group["params"]:
            link = by_param[id(p)]
            member_states = [opt.state.get(mp, {}) for opt, mp in zip(members, link.members)]
            if not member_states[0]:
                continue
            state[p] = {k: (link.join([s[k] for s in member_states]) if torch.is_tensor(v) and v.shape == link.members[0].shape
                            else (v.clone() if torch.is_tensor(v) else v))
                        for k, v in member_states[0].items()}
    stacked.state = state


def split_optimizer_state(stacked: torch.optim.Optimizer, members: Sequence[torch.optim.Optimizer], links: Iterable[Link]) -> None:
    """Inverse of `join_optimizer_state`: each member optimizer's state and group settings from the
    stacked one. The members' state dicts are replaced as new objects (what mask hooks and FusedAdam's
    cache watch for)."""
    by_param = {id(link.stacked): link for link in links}
    new_states: list[defaultdict] = [defaultdict(dict) for _ in members]
    for g, group in enumerate(stacked.param_groups):
        for opt in members:
            opt.param_groups[g].update({k: v for k, v in group.items() if k != "params"})
        for p in group["params"]:
            s = stacked.state.get(p)
            if not s:
                continue
            link = by_param[id(p)]
            pieces = {k: link.split(v) for k, v in s.items() if torch.is_tensor(v) and v.shape == p.shape}
            for k, (mp, new_state) in enumerate(zip(link.members, new_states)):
                new_state[mp] = {key: (pieces[key][k].clone() if key in pieces else (v.clone() if torch.is_tensor(v) else v))
                                 for key, v in s.items()}
    for opt, state in zip(members, new_states):
        opt.state = state


@torch.no_grad()
def split_parameters(links: Iterable[Link]) -> None:
    """Write the stacked parameters' values into the members' parameters."""
    for link in links:
        for member, value in zip(link.members, link.split(link.stacked.detach())):
            member.copy_(value)
