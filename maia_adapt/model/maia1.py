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

Two ways to compute the 3x3 convolutions (`Maia1(conv_mode=...)` or `model.set_conv_mode(...)`):
"direct" (torch's conv2d, oneDNN) and "winograd", Winograd's minimal filtering F(4x4, 3x3) (Lavin &
Gray 2016, the algorithm lc0's CPU backends use): the padded 8x8 board is exactly 2x2 tiles of 6x6,
so each convolution becomes two small transforms and 36 batched [4B, Cin] x [Cin, Cout] matmuls,
4x fewer multiplications than direct. Both give the same hook sites and shapes; see
`_forward_winograd` for the layout and tests/test_maia1.py for the agreement.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoding.lc0 import LC0_NUM_PLANES, conv_policy_gather
from ..errors import CheckpointError, MaiaAdaptError
from .hooks import HookFn, HookPoints, block_hook
from .lc0_weights import read_lc0_net
from .maia1_sites import hook_names

MAIA1_RATINGS = tuple(range(1100, 2000, 100))
BN_EPS = 1e-5
CONV_MODES = ("direct", "winograd")

# Winograd F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray 2016):
# y = A^T [(G g G^T) * (B^T d B)] A computes the 4x4 correlation of a 6x6 tile d with a 3x3 filter g
_WINO_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                     [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_WINO_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                    [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_WINO_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
                    np.float64)
# The Winograd path keeps activations as [rank, file, B, C] with ranks (and files) stored in the order
# the output transform produces them: stored index 2*i + t holds rank 4*t + i (tile t, row i of it).
# Keeping that order instead of restoring 0..7 saves a copy per convolution; the next input transform
# reads it through its own column order, and everything else in a block works square by square.
_WINO_RANK = np.array([4 * t + i for i in range(4) for t in range(2)])


def _winograd_input_transform(rank_of: np.ndarray) -> np.ndarray:
    """[12, 8]: row 2*p + t is transform point p of tile t (padded rows 4t .. 4t+5, i.e. ranks
    4t-1 .. 4t+4 with the off-board ones zero); column j is the stored rank rank_of[j]."""
    out = np.zeros((12, 8))
    for j, rank in enumerate(rank_of):
        for t in range(2):
            k = rank - 4 * t + 1
            if 0 <= k <= 5:
                out[2 * np.arange(6) + t, j] = _WINO_BT[:, k]
    return out


class ResidualBlock(nn.Module):
    def __init__(self, filters: int, se_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(filters, filters, 3, padding=1)
        self.conv2 = nn.Conv2d(filters, filters, 3, padding=1)
        self.se_fc1 = nn.Linear(filters, se_channels)
        self.se_fc2 = nn.Linear(se_channels, 2 * filters)


class Maia1(HookPoints, nn.Module):
    """forward(planes [B, 112, 8, 8]) -> (policy logits [B, 1858], WDL logits [B, 3])."""

    n_inputs = 1  # planes

    def __init__(self, filters: int = 64, blocks: int = 6, se_channels: int = 8, policy_planes: int = 80,
                 value_channels: int = 32, value_hidden: int = 128, conv_mode: str = "direct"):
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
        self._wino: dict | None = None
        self.winograd_chunk = 64  # positions per pass of the Winograd path (measured: benchmarks/RESULTS.md)
        self.set_conv_mode(conv_mode)

    def set_conv_mode(self, mode: str) -> "Maia1":
        """"direct" (conv2d) or "winograd" (F(4x4, 3x3)); returns the model. The Winograd weights are
        transformed on the first forward and again whenever the weights, their dtype or device change."""
        if mode not in CONV_MODES:
            raise MaiaAdaptError(f"Maia1 conv_mode '{mode}': expected one of {', '.join(CONV_MODES)}")
        self.conv_mode = mode
        self._wino = None
        return self

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, planes: torch.Tensor):
        if planes.dim() != 4 or tuple(planes.shape[1:]) != (LC0_NUM_PLANES, 8, 8):
            raise MaiaAdaptError(f"Maia1 expects planes [B, {LC0_NUM_PLANES}, 8, 8], got {tuple(planes.shape)}")
        if self.conv_mode == "winograd":
            return self._forward_winograd(planes)
        x = planes.to(dtype=self.input_conv.weight.dtype).contiguous(memory_format=torch.channels_last)
        # in-place ReLUs act on fresh conv outputs only: fewer 16 MB allocations per block at batch 1024
        h = self._hook("hook_input_conv", F.relu(self.input_conv(x), inplace=True))
        for i, blk in enumerate(self.blocks):
            h = self._hook(block_hook(i, "hook_resid_pre"), h)
            y = self._hook(block_hook(i, "hook_conv1"), F.relu(blk.conv1(h), inplace=True))
            y = self._hook(block_hook(i, "hook_conv2"), blk.conv2(y))
            gb = blk.se_fc2(F.relu(blk.se_fc1(F.adaptive_avg_pool2d(y, 1).flatten(1))))
            gate = self._hook(block_hook(i, "hook_se_gate"), torch.sigmoid(gb[:, : self.filters]))
            bias = self._hook(block_hook(i, "hook_se_bias"), gb[:, self.filters:])
            h = F.relu(torch.addcmul(h, y, gate[:, :, None, None]).add_(bias[:, :, None, None]), inplace=True)
            h = self._hook(block_hook(i, "hook_resid_post"), h)
        p = self._hook("hook_policy_conv", F.relu(self.policy_conv1(h), inplace=True))
        p = self._hook("hook_policy_planes", self.policy_conv2(p))
        policy = p.permute(0, 2, 3, 1).reshape(p.size(0), -1).index_select(1, self.policy_gather)
        policy = self._hook("hook_policy", policy)
        v = self._hook("hook_value_conv", F.relu(self.value_conv(h), inplace=True))
        v = self._hook("hook_value_hidden", F.relu(self.value_fc1(v.permute(0, 2, 3, 1).reshape(v.size(0), -1))))
        wdl = self._hook("hook_wdl", self.value_fc2(v))
        return policy, wdl

    # ---- Winograd path ---------------------------------------------------------------------------
    def _convs3x3(self) -> list[nn.Conv2d]:
        return ([self.input_conv] + [c for b in self.blocks for c in (b.conv1, b.conv2)]
                + [self.policy_conv1, self.policy_conv2])

    def _winograd_state(self) -> dict:
        """Transformed weights and transform matrices, cached while the weights stay the same tensors
        (same storage, version, dtype and device). Under autograd with trainable weights they are
        rebuilt each call so that gradients reach the convolution weights."""
        params = [c.weight for c in self._convs3x3()] + [self.value_fc1.weight]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return self._winograd_build()
        key = tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in params)
        if self._wino is None or self._wino["key"] != key:
            with torch.inference_mode(False), torch.no_grad():
                self._wino = self._winograd_build()
            self._wino["key"] = key
        return self._wino

    def _winograd_build(self) -> dict:
        w0 = self.input_conv.weight
        dt, dev = w0.dtype, w0.device
        if dt not in (torch.float32, torch.float64):
            # the transforms multiply values by up to 10x before the matmul; in bfloat16 that rounding
            # cost 4% of the top moves on real positions (benchmarks/RESULTS.md)
            raise MaiaAdaptError(f"Maia1 conv_mode 'winograd' needs float32 or float64 weights, got {dt} "
                                 f"(use conv_mode 'direct' for {dt})")

        def const(a):
            return torch.as_tensor(a, dtype=torch.float64, device=dev)

        g = const(_WINO_G)
        us = []
        for conv in self._convs3x3():
            # U[p, q] = G w G^T per (in, out) pair, in float64 so the transform adds no rounding of its own
            u = torch.einsum("pk,oikl,ql->pqio", g, conv.weight.to(torch.float64), g)
            # one copy per tile row t, so that the batch of the matmul is (p, t, q) and needs no permute
            us.append(u[:, None].expand(6, 2, *u.shape[1:]).reshape(72, *u.shape[2:]).to(dt))
        rank = torch.as_tensor(_WINO_RANK, device=dev)
        stored = torch.argsort(rank)  # stored index of rank r
        # value_fc1 reads [rank, file, channel]; reorder its columns to the stored square order
        vc = self.value_conv.out_channels
        fc1 = self.value_fc1.weight.view(-1, 8, 8, vc)[:, rank][:, :, rank].reshape(self.value_fc1.weight.shape)
        planes = self.policy_conv2.out_channels
        gather = conv_policy_gather()  # plane * 64 + square (rank * 8 + file)
        sq = torch.from_numpy(gather % 64).to(dev)
        at_sq = stored[sq // 8] * 8 + stored[sq % 8]
        return {"u": us,
                "t_board": const(_winograd_input_transform(np.arange(8))).to(dt),  # planes in rank order
                "t_stored": const(_winograd_input_transform(_WINO_RANK)).to(dt),
                "a": const(_WINO_AT).to(dt),
                "value_fc1": fc1.to(dt),
                "policy_gather": at_sq * planes + torch.from_numpy(gather // 64).to(dev),
                "stored": stored, "rank": rank}

    @staticmethod
    def _winograd_conv(x, t_in, u, a, bias, relu: bool):
        """x [8, 8, N, Cin] (stored order, or rank order with t_in = t_board) -> [8, 8, N, Cout] stored."""
        n, ci = x.shape[2], x.shape[3]
        v = (t_in @ x.reshape(8, -1)).view(12, 8, n * ci)  # [p, t, file, N, Cin]
        v = torch.matmul(t_in, v)  # [p, t, q, s, N, Cin]: the 36 points of the 4 tiles
        m = torch.bmm(v.view(72, 2 * n, ci), u)  # batch (p, t, q), rows (s, N)
        co = m.shape[-1]
        # the bias, added at the point 1 (whose column of A^T is all ones) of each tile: 1/36 of a pass
        m.view(6, 2, 6, 2 * n, co)[1, :, 1].add_(bias)
        y = (a @ m.view(6, -1)).view(8, 6, 2 * n * co)  # [i, t, q, s, N, Cout]
        y = torch.matmul(a, y).view(8, 8, n, co)  # [i, t, j, s, N, Cout]
        return y.relu_() if relu else y

    def _sq_hook(self, name: str, x: torch.Tensor, st: dict) -> torch.Tensor:
        """Hook a stored-layout [8, 8, N, C] activation as the [N, C, rank, file] the direct path shows."""
        if not self._hooks.get(name):
            return x
        std = x.index_select(0, st["stored"]).index_select(1, st["stored"]).permute(2, 3, 0, 1)
        out = self._hook(name, std)
        if out is std:
            return x
        return out.permute(2, 3, 0, 1).index_select(0, st["rank"]).index_select(1, st["rank"]).contiguous()

    def _forward_winograd(self, planes: torch.Tensor):
        b = planes.shape[0]
        if b > self.winograd_chunk and not self._hooks:
            # a chunk's activations and their 2.25x larger transforms stay near the core (L2 is 2 MiB
            # here; the transforms are memory-bound): one pass over batch 256 measured 1.2-1.7x slower
            # than chunks of 64 on one thread of this CPU. With hooks the batch stays whole: a hook
            # sees (and may replace) the activations of the whole batch at once.
            outs = [self._forward_winograd(c) for c in planes.split(self.winograd_chunk)]
            return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
        st = self._winograd_state()
        us = iter(st["u"])
        # [B, 112, 64] -> [64, B, 112] in two transposes: one strided permute is 7x slower
        x = planes.to(dtype=self.input_conv.weight.dtype).reshape(b, LC0_NUM_PLANES, 64)
        x = x.transpose(1, 2).contiguous().transpose(0, 1).contiguous().view(8, 8, b, -1)  # [rank, file, B, 112]
        a = st["a"]

        def conv(x, t_in, bias, relu):
            return self._winograd_conv(x, t_in, next(us), a, bias, relu)

        h = conv(x, st["t_board"], self.input_conv.bias, True)
        h = self._sq_hook("hook_input_conv", h, st)
        t = st["t_stored"]
        for i, blk in enumerate(self.blocks):
            h = self._sq_hook(block_hook(i, "hook_resid_pre"), h, st)
            y = self._sq_hook(block_hook(i, "hook_conv1"), conv(h, t, blk.conv1.bias, True), st)
            y = self._sq_hook(block_hook(i, "hook_conv2"), conv(y, t, blk.conv2.bias, False), st)
            gb = blk.se_fc2(F.relu(blk.se_fc1(y.view(64, b, -1).mean(0))))
            gate = self._hook(block_hook(i, "hook_se_gate"), torch.sigmoid(gb[:, : self.filters]))
            bias = self._hook(block_hook(i, "hook_se_bias"), gb[:, self.filters:])
            h = torch.addcmul(h, y, gate).add_(bias).relu_()
            h = self._sq_hook(block_hook(i, "hook_resid_post"), h, st)
        p = self._sq_hook("hook_policy_conv", conv(h, t, self.policy_conv1.bias, True), st)
        p = self._sq_hook("hook_policy_planes",
                          conv(p, t, self.policy_conv2.bias, False), st)
        policy = p.view(64, b, -1).transpose(0, 1).reshape(b, -1).index_select(1, st["policy_gather"])
        policy = self._hook("hook_policy", policy)
        vw = self.value_conv.weight
        v = torch.addmm(self.value_conv.bias, h.view(-1, h.shape[-1]), vw.view(vw.shape[0], -1).t()).relu_()
        v = self._sq_hook("hook_value_conv", v.view(8, 8, b, -1), st)
        v = v.view(64, b, -1).transpose(0, 1).reshape(b, -1)
        v = self._hook("hook_value_hidden", F.relu(F.linear(v, st["value_fc1"], self.value_fc1.bias)))
        wdl = self._hook("hook_wdl", self.value_fc2(v))
        return policy, wdl

    @staticmethod
    def value(wdl_logits: torch.Tensor) -> torch.Tensor:
        """lc0's scalar value for the side to move: P(win) - P(loss) from the WDL logits."""
        p = torch.softmax(wdl_logits.float(), dim=-1)
        return p[..., 0] - p[..., 2]


def forward_split(model: "Maia1", planes: torch.Tensor, workers: int = 2):
    """model(planes) with the batch split over `workers` Python threads (torch releases the GIL inside
    its operations). With `torch.set_num_threads(1)` each worker keeps one core busy without OpenMP
    barriers, which on an oversubscribed CPU wait for descheduled threads: on this shared 2-core
    machine 2 workers x 1 thread ran 1.8-2.0x one thread, while 2 OpenMP threads ran below one
    (benchmarks/RESULTS.md). Hooks, if installed, are called once per worker's part of the batch."""
    from concurrent.futures import ThreadPoolExecutor

    if workers < 1:
        raise MaiaAdaptError(f"forward_split: workers must be >= 1, got {workers}")
    parts = planes.chunk(workers)
    inference = torch.is_inference_mode_enabled()
    grad = torch.is_grad_enabled()

    def run(part):  # the autograd and inference modes are thread-local: carry the caller's over
        with torch.inference_mode(inference), torch.set_grad_enabled(grad):
            return model(part)

    with ThreadPoolExecutor(len(parts)) as pool:
        outs = list(pool.map(run, parts))
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # a tensor made under inference_mode has no version counter (and cannot change)
        return -1


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


def load_maia1(path, device="cpu", conv_mode: str = "direct") -> Maia1:
    """Load one Maia-1 network from an lc0 .pb.gz file (read by path; the weights are GPL-3.0 and
    never copied into the project). `.rating` is taken from a maia-<rating>.pb.gz file name;
    `conv_mode` is Maia1.set_conv_mode's."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: Maia-1 weight file not found (expected an lc0 .pb.gz file)")
    model = maia1_from_lc0(read_lc0_net(path), path)
    model.rating = _rating_of(path)
    model.source = str(path)
    return model.set_conv_mode(conv_mode).to(device)


def load_maia1_family(root, device="cpu", conv_mode: str = "direct") -> dict[int, Maia1]:
    """The nine Maia-1 networks {1100: ..., ..., 1900: ...} from root/maia-<rating>.pb.gz."""
    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"{root}: Maia-1 folder not found (expected maia-1100.pb.gz ... maia-1900.pb.gz)")
    missing = [f"maia-{r}.pb.gz" for r in MAIA1_RATINGS if not (root / f"maia-{r}.pb.gz").is_file()]
    if missing:
        raise CheckpointError(f"{root}: missing Maia-1 weight files {', '.join(missing)}")
    return {r: load_maia1(root / f"maia-{r}.pb.gz", device, conv_mode) for r in MAIA1_RATINGS}
