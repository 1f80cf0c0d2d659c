"""Maia-1 (CSSLab/maia-chess, KDD 2020) in PyTorch, loaded from the published lc0 weight files.

The network is lc0's residual squeeze-and-excitation architecture: a 3x3 input convolution 112->F,
B residual blocks (conv-BN-ReLU, conv-BN, SE gate and bias, residual add, ReLU), a convolutional
policy head (3x3 F->F with BN-ReLU, then 3x3 F->80 whose 73 used planes are gathered into lc0's 1858
moves) and a WDL value head (1x1 F->32 with BN-ReLU, then 2048->128 ReLU, 128->3). BatchNorm is
folded into the convolutions at load exactly as lc0 does (`gamma / sqrt(var + 1e-5)`, lc0's
"stddivs" hold variances); the folded network is what lc0's backends evaluate, so outputs match lc0
to float rounding (see tests/test_maia1.py).

Outputs are raw logits: policy [B, 1858] in lc0's move order (maia_adapt.encoding.lc0.LC0_MOVES,
side-to-move frame; mask illegal moves before a softmax) and WDL [B, 3] (win, draw, loss for the side
to move). lc0's value is softmax(wdl)[0] - softmax(wdl)[2] (its "Q"), and softmax(wdl)[1] its "D".

Hook sites (TransformerLens style, same API as maia_adapt.model.maia2):
  hook_input_conv [B, F, 8, 8]          input conv + BN + ReLU
  blocks.{i}.hook_resid_pre [B,F,8,8]   input of residual block i
  blocks.{i}.hook_conv1 [B, F, 8, 8]    first conv + BN + ReLU
  blocks.{i}.hook_conv2 [B, F, 8, 8]    second conv + BN (before the SE unit)
  blocks.{i}.hook_se_gate [B, F]        sigmoid gate of the SE unit
  blocks.{i}.hook_se_bias [B, F]        additive bias of the SE unit
  blocks.{i}.hook_resid_post [B,F,8,8]  relu(gate * conv2 + bias + resid_pre)
  hook_policy_conv [B, F, 8, 8]         policy head's first conv + BN + ReLU
  hook_policy_planes [B, 80, 8, 8]      policy head's last conv (before gathering)
  hook_policy [B, 1858]                 policy logits
  hook_value_conv [B, 32, 8, 8]         value head's 1x1 conv + BN + ReLU
  hook_value_hidden [B, 128]            value head's hidden layer (after ReLU)
  hook_wdl [B, 3]                       WDL logits
Spatial tensors are [B, C, rank, file] in the side-to-move frame (rank 0 = the mover's first rank).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoding.lc0 import LC0_NUM_MOVES, LC0_NUM_PLANES, conv_policy_gather
from ..errors import CheckpointError, MaiaAdaptError
from .hooks import HookFn, HookPoints
from .lc0_weights import read_lc0_net

MAIA1_RATINGS = tuple(range(1100, 2000, 100))
BN_EPS = 1e-5


class HookNames(list):
    """The hook site names in forward order. Maia2 exposes them as the list `model.hook_names`; code
    written as `model.hook_names()` works too, since calling the list returns a copy of it."""

    def __call__(self) -> list[str]:
        return list(self)


def hook_names(num_blocks: int) -> HookNames:
    names = ["hook_input_conv"]
    for i in range(num_blocks):
        names += [f"blocks.{i}.{s}" for s in ("hook_resid_pre", "hook_conv1", "hook_conv2", "hook_se_gate",
                                               "hook_se_bias", "hook_resid_post")]
    return HookNames(names + ["hook_policy_conv", "hook_policy_planes", "hook_policy", "hook_value_conv",
                              "hook_value_hidden", "hook_wdl"])


class ResidualBlock(nn.Module):
    def __init__(self, filters: int, se_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(filters, filters, 3, padding=1)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.se_fc1 = nn.Linear(filters, se_channels)
        self.se_fc2 = nn.Linear(se_channels, 2 * filters)


class Maia1(HookPoints, nn.Module):
    """forward(planes [B, 112, 8, 8]) -> (policy logits [B, 1858], WDL logits [B, 3])."""

    def __init__(self, filters: int = 64, blocks: int = 6, se_channels: int = 8, policy_planes: int = 80,
                 value_channels: int = 32, value_hidden: int = 128):
        super().__init__()
        self.filters, self.num_blocks = filters, blocks
        self.input_conv = nn.Conv2d(LC0_NUM_PLANES, filters, 3, padding=1)
        self.blocks = nn.ModuleList(ResidualBlock(filters, se_channels) for _ in range(blocks))
        self.policy_conv1 = nn.Conv2d(filters, filters, 3, padding=1)
        self.policy_conv2 = nn.Conv2d(filters, policy_planes, 3, padding=1)
        self.value_conv = nn.Conv2d(filters, value_channels, 1)
        # value_fc1 columns are stored in [rank, file, channel] order (see _load_lc0) so the flatten
        # of a channels_last activation is a free view
        self.value_fc1 = nn.Linear(value_channels * 64, value_hidden)
        self.value_fc2 = nn.Linear(value_hidden, 3)
        # policy index -> position in the [rank, file, plane]-flattened last policy conv
        gather = conv_policy_gather()
        self.register_buffer("policy_gather", torch.from_numpy(
            (gather % 64) * policy_planes + gather // 64).long(), persistent=False)
        self.rating: int | None = None
        self.source: str | None = None
        self.hook_names = hook_names(blocks)
        self._hooks: dict[str, list[HookFn]] = {}

    # ---- hooks (model/hooks.py) -------------------------------------------------------------
    def run_with_hooks(self, planes, fwd_hooks=()):
        with self.hooks(fwd_hooks):
            return self(planes)

    def run_with_cache(self, planes, names=None, detach: bool = True):
        """Forward pass that also returns {hook name: activation} for `names` (default: all)."""
        names = self.hook_names if names is None else list(names)
        cache: dict[str, torch.Tensor] = {}

        def save(x, name):
            cache[name] = x.detach() if detach else x

        out = self.run_with_hooks(planes, [(n, save) for n in names])
        return out, cache

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, planes: torch.Tensor):
        if planes.dim() != 4 or tuple(planes.shape[1:]) != (LC0_NUM_PLANES, 8, 8):
            raise MaiaAdaptError(f"Maia1 expects planes [B, {LC0_NUM_PLANES}, 8, 8], got {tuple(planes.shape)}")
        x = planes.to(dtype=self.input_conv.weight.dtype).contiguous(memory_format=torch.channels_last)
        # in-place ReLUs act on fresh conv outputs only: fewer 16 MB allocations per block at batch 1024
        h = self._hook("hook_input_conv", F.relu(self.input_conv(x), inplace=True))
        for i, blk in enumerate(self.blocks):
            h = self._hook(f"blocks.{i}.hook_resid_pre", h)
            y = self._hook(f"blocks.{i}.hook_conv1", F.relu(blk.conv1(h), inplace=True))
            y = self._hook(f"blocks.{i}.hook_conv2", blk.conv2(y))
            gb = blk.se_fc2(F.relu(blk.se_fc1(F.adaptive_avg_pool2d(y, 1).flatten(1))))
            gate = self._hook(f"blocks.{i}.hook_se_gate", torch.sigmoid(gb[:, : self.filters]))
            bias = self._hook(f"blocks.{i}.hook_se_bias", gb[:, self.filters:])
            h = F.relu(torch.addcmul(h, y, gate[:, :, None, None]).add_(bias[:, :, None, None]), inplace=True)
            h = self._hook(f"blocks.{i}.hook_resid_post", h)
        p = self._hook("hook_policy_conv", F.relu(self.policy_conv1(h), inplace=True))
        p = self._hook("hook_policy_planes", self.policy_conv2(p))
        policy = p.permute(0, 2, 3, 1).reshape(p.size(0), -1).index_select(1, self.policy_gather)
        policy = self._hook("hook_policy", policy)
        v = self._hook("hook_value_conv", F.relu(self.value_conv(h), inplace=True))
        v = self._hook("hook_value_hidden", F.relu(self.value_fc1(v.permute(0, 2, 3, 1).reshape(v.size(0), -1))))
        wdl = self._hook("hook_wdl", self.value_fc2(v))
        return policy, wdl

    @staticmethod
    def value(wdl_logits: torch.Tensor) -> torch.Tensor:
        """lc0's scalar value for the side to move: P(win) - P(loss) from the WDL logits."""
        p = torch.softmax(wdl_logits.float(), dim=-1)
        return p[..., 0] - p[..., 2]


# ---- loading ---------------------------------------------------------------------------------
def _fold(block: dict, out_ch: int, where: str, path) -> tuple[np.ndarray, np.ndarray]:
    """lc0's BatchNorm fold: w *= gamma/sqrt(var+eps); b = (b_conv - mean) * gamma/sqrt(var+eps) + beta."""
    if "weights" not in block:
        raise CheckpointError(f"{path}: {where} has no weights")
    w = block["weights"].astype(np.float32).copy()
    if w.size % out_ch:
        raise CheckpointError(f"{path}: {where} has {w.size} weights, not a multiple of {out_ch} outputs")
    w = w.reshape(out_ch, -1)
    bias = block.get("biases", np.zeros(out_ch, np.float32)).astype(np.float32)
    if "bn_means" not in block:
        return w, bias.copy()
    means, var = block["bn_means"], block["bn_stddivs"]
    gammas = block.get("bn_gammas", np.ones(out_ch, np.float32))
    betas = block.get("bn_betas", np.zeros(out_ch, np.float32))
    for name, arr in (("biases", bias), ("bn_means", means), ("bn_stddivs", var), ("bn_gammas", gammas),
                      ("bn_betas", betas)):
        if arr.size != out_ch:
            raise CheckpointError(f"{path}: {where}.{name} has {arr.size} values, expected {out_ch}")
    scale = (gammas * (np.float32(1.0) / np.sqrt(var + np.float32(BN_EPS)))).astype(np.float32)
    return w * scale[:, None], (-scale * (means - bias) + betas).astype(np.float32)


def _set_conv(conv: nn.Conv2d, block: dict, where: str, path) -> None:
    w, b = _fold(block, conv.out_channels, where, path)
    if w.shape[1] != conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]:
        raise CheckpointError(f"{path}: {where} has {w.shape[1]} weights per output, expected "
                              f"{conv.in_channels}x{conv.kernel_size[0]}x{conv.kernel_size[1]}")
    conv.weight.data.copy_(torch.from_numpy(w.reshape(conv.weight.shape)))
    conv.bias.data.copy_(torch.from_numpy(b))


def _set_linear(lin: nn.Linear, w: np.ndarray, b: np.ndarray, where: str, path) -> None:
    if w.size != lin.weight.numel() or b.size != lin.bias.numel():
        raise CheckpointError(f"{path}: {where} has {w.size}+{b.size} values, expected "
                              f"{lin.out_features}x{lin.in_features}+{lin.out_features}")
    lin.weight.data.copy_(torch.from_numpy(w.reshape(lin.weight.shape)))
    lin.bias.data.copy_(torch.from_numpy(b))


def maia1_from_lc0(net: dict, path="<lc0 net>") -> Maia1:
    """Build a Maia1 from read_lc0_net's dict, folding BatchNorm into the convolutions."""
    w = net["weights"]
    inp = w["input"]
    if "bn_means" in inp:
        filters = inp["bn_means"].size
    else:
        filters = inp["biases"].size
    res = w["residual"]
    se_ch = res[0]["se"]["b1"].size if "se" in res[0] else 0
    if se_ch == 0 or any("se" not in r for r in res):
        raise CheckpointError(f"{path}: residual blocks without squeeze-and-excitation are not supported")
    policy_planes = w["policy"]["biases"].size
    value_ch = w["value"]["bn_means"].size if "bn_means" in w["value"] else w["value"]["biases"].size
    value_hidden = w["ip1_val_b"].size
    model = Maia1(filters, len(res), se_ch, policy_planes, value_ch, value_hidden)
    _set_conv(model.input_conv, inp, "input", path)
    for i, (blk, r) in enumerate(zip(model.blocks, res)):
        _set_conv(blk.conv1, r["conv1"], f"residual[{i}].conv1", path)
        _set_conv(blk.conv2, r["conv2"], f"residual[{i}].conv2", path)
        se = r["se"]
        _set_linear(blk.se_fc1, se["w1"], se["b1"], f"residual[{i}].se.w1", path)
        _set_linear(blk.se_fc2, se["w2"], se["b2"], f"residual[{i}].se.w2", path)
    _set_conv(model.policy_conv1, w["policy1"], "policy1", path)
    _set_conv(model.policy_conv2, w["policy"], "policy", path)
    _set_conv(model.value_conv, w["value"], "value", path)
    # lc0 flattens the value conv as [channel, square]; reorder the columns to [square, channel]
    fc1 = w["ip1_val_w"]
    if fc1.size != value_hidden * value_ch * 64:
        raise CheckpointError(f"{path}: ip1_val_w has {fc1.size} values, expected {value_hidden}x{value_ch * 64}")
    fc1 = fc1.reshape(value_hidden, value_ch, 64).transpose(0, 2, 1).reshape(value_hidden, -1)
    _set_linear(model.value_fc1, np.ascontiguousarray(fc1), w["ip1_val_b"], "ip1_val_w", path)
    _set_linear(model.value_fc2, w["ip2_val_w"], w["ip2_val_b"], "ip2_val_w", path)
    model = model.to(memory_format=torch.channels_last)
    return model.eval().requires_grad_(False)


def _rating_of(path: Path) -> int | None:
    m = re.fullmatch(r"maia-(\d{3,4})\.pb\.gz", path.name)
    return int(m.group(1)) if m else None


def load_maia1(path, device="cpu") -> Maia1:
    """Load one Maia-1 network from an lc0 .pb.gz file (read by path; the weights are GPL-3.0 and
    never copied into the project). `.rating` is taken from a maia-<rating>.pb.gz file name."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: Maia-1 weight file not found (expected an lc0 .pb.gz file)")
    model = maia1_from_lc0(read_lc0_net(path), path)
    model.rating = _rating_of(path)
    model.source = str(path)
    return model.to(device)


def load_maia1_family(root, device="cpu") -> dict[int, Maia1]:
    """The nine Maia-1 networks {1100: ..., ..., 1900: ...} from root/maia-<rating>.pb.gz."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: Maia-1 folder not found (expected maia-1100.pb.gz ... maia-1900.pb.gz)")
    missing = [f"maia-{r}.pb.gz" for r in MAIA1_RATINGS if not (root / f"maia-{r}.pb.gz").is_file()]
    if missing:
        raise CheckpointError(f"{root}: missing Maia-1 weight files {', '.join(missing)}")
    return {r: load_maia1(root / f"maia-{r}.pb.gz", device) for r in MAIA1_RATINGS}
