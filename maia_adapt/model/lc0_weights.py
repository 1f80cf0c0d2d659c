"""Reader for Leela Chess Zero weight files (gzip of an lc0 `Net` protocol buffer).

Our own wire-format decoder with a schema written from the public field numbers of lc0's `net.proto`
(lczero-common), so no protobuf runtime or generated code is needed. Only the parts a
residual SE network with convolutional policy and WDL value head uses are named; every other field is
skipped by wire type, as protobuf itself does.

Layers are decoded to float32 numpy vectors. LINEAR16 (lc0's only encoding for these files) stores one
uint16 per value, mapped linearly onto [min_val, max_val]; the arithmetic is lc0's
(`min * (1 - t) + max * t` with t = u / 65535 in float32), so decoded values are bit-identical.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import CheckpointError

WEIGHT_MAGIC = 0x1C0

# NetworkFormat enums (lczero-common proto/net.proto)
INPUT_CLASSICAL_112_PLANE = 1
NETWORK_SE_WITH_HEADFORMAT = 4
POLICY_CONVOLUTION = 2
VALUE_WDL = 2
MOVES_LEFT_NONE = 0
FORMAT_LINEAR16 = 1
# Weights.Layer.Encoding (newer files carry it per layer; absent means LINEAR16)
LAYER_LINEAR16, LAYER_FLOAT16, LAYER_BFLOAT16, LAYER_FLOAT32 = 1, 2, 3, 4

_INPUT_NAMES = {1: "INPUT_CLASSICAL_112_PLANE", 2: "INPUT_112_WITH_CASTLING_PLANE",
                3: "INPUT_112_WITH_CANONICALIZATION", 4: "INPUT_112_WITH_CANONICALIZATION_HECTOPLIES",
                5: "INPUT_112_WITH_CANONICALIZATION_V2"}
_NETWORK_NAMES = {1: "NETWORK_CLASSICAL", 2: "NETWORK_SE", 3: "NETWORK_CLASSICAL_WITH_HEADFORMAT",
                  4: "NETWORK_SE_WITH_HEADFORMAT", 5: "NETWORK_ONNX",
                  6: "NETWORK_ATTENTIONBODY_WITH_HEADFORMAT", 7: "NETWORK_ATTENTIONBODY_WITH_MULTIHEADFORMAT"}

# ---- schema: message -> {field number: (name, kind, repeated)} ------------------------------------
# kinds: a message name from this table, "layer" (decoded to an array), "varint", "fixed32", "float",
# "string", "bytes"
_SCHEMA: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Net": {1: ("magic", "fixed32", False), 2: ("license", "string", False),
            3: ("min_version", "EngineVersion", False), 4: ("format", "Format", False),
            10: ("weights", "Weights", False)},
    "EngineVersion": {1: ("major", "varint", False), 2: ("minor", "varint", False), 3: ("patch", "varint", False)},
    "Format": {1: ("weights_encoding", "varint", False), 2: ("network_format", "NetworkFormat", False)},
    "NetworkFormat": {1: ("input", "varint", False), 2: ("output", "varint", False),
                      3: ("network", "varint", False), 4: ("policy", "varint", False),
                      5: ("value", "varint", False), 6: ("moves_left", "varint", False),
                      7: ("default_activation", "varint", False)},
    "Weights": {1: ("input", "ConvBlock", False), 2: ("residual", "Residual", True),
                11: ("policy1", "ConvBlock", False), 3: ("policy", "ConvBlock", False),
                4: ("ip_pol_w", "layer", False), 5: ("ip_pol_b", "layer", False),
                6: ("value", "ConvBlock", False),
                7: ("ip1_val_w", "layer", False), 8: ("ip1_val_b", "layer", False),
                9: ("ip2_val_w", "layer", False), 10: ("ip2_val_b", "layer", False),
                12: ("moves_left", "ConvBlock", False), 27: ("encoder", "bytes", True)},
    "ConvBlock": {1: ("weights", "layer", False), 2: ("biases", "layer", False),
                  3: ("bn_means", "layer", False), 4: ("bn_stddivs", "layer", False),
                  5: ("bn_gammas", "layer", False), 6: ("bn_betas", "layer", False)},
    "Residual": {1: ("conv1", "ConvBlock", False), 2: ("conv2", "ConvBlock", False), 3: ("se", "SEunit", False)},
    "SEunit": {1: ("w1", "layer", False), 2: ("b1", "layer", False), 3: ("w2", "layer", False), 4: ("b2", "layer", False)},
    "Layer": {1: ("min_val", "float", False), 2: ("max_val", "float", False), 3: ("params", "bytes", False),
              4: ("encoding", "varint", False)},
}


class _Truncated(Exception):
    pass


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Truncated("varint runs past the end of its message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Truncated("varint longer than 10 bytes")


def _fields(buf: bytes, start: int, end: int):
    """Yield (field number, wire type, value); value is an int, or (start, end) for length-delimited."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise _Truncated(f"fixed64 field {field} runs past the end")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Truncated(f"field {field} declares {length} bytes, only {end - pos} left")
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            if pos + 4 > end:
                raise _Truncated(f"fixed32 field {field} runs past the end")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise _Truncated(f"unsupported wire type {wire} for field {field}")
        yield field, wire, value


def _decode_layer(msg: dict, where: str) -> np.ndarray:
    params = msg.get("params", b"")
    encoding = msg.get("encoding", LAYER_LINEAR16)
    if encoding == LAYER_FLOAT32:
        return np.frombuffer(params, dtype="<f4").astype(np.float32)
    if len(params) % 2:
        raise _Truncated(f"layer {where} has an odd number of bytes for 16-bit values")
    raw = np.frombuffer(params, dtype="<u2")
    if encoding == LAYER_LINEAR16:
        theta = raw.astype(np.float32) / np.float32(0xFFFF)
        lo, hi = np.float32(msg.get("min_val", 0.0)), np.float32(msg.get("max_val", 0.0))
        return (lo * (np.float32(1) - theta) + hi * theta).astype(np.float32)
    if encoding == LAYER_FLOAT16:
        return raw.view("<f2").astype(np.float32)
    if encoding == LAYER_BFLOAT16:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"layer {where} has unknown encoding {encoding}")


def _parse(buf: bytes, start: int, end: int, message: str, where: str) -> dict:
    schema = _SCHEMA[message]
    out: dict = {}
    for field, wire, value in _fields(buf, start, end):
        spec = schema.get(field)
        if spec is None:
            continue
        name, kind, repeated = spec
        if kind in ("varint", "fixed32", "float"):
            if kind == "float":
                value = struct.unpack("<f", value.to_bytes(4, "little"))[0]
            parsed = value
        else:
            if wire != 2:
                raise _Truncated(f"{where}.{name} should be length-delimited, has wire type {wire}")
            s, e = value
            if kind == "bytes":
                parsed = buf[s:e]
            elif kind == "string":
                parsed = buf[s:e].decode("utf-8", errors="replace")
            elif kind == "layer":
                parsed = _decode_layer(_parse(buf, s, e, "Layer", f"{where}.{name}"), f"{where}.{name}")
            else:
                parsed = _parse(buf, s, e, kind, f"{where}.{name}")
        if repeated:
            out.setdefault(name, []).append(parsed)
        else:
            out[name] = parsed
    return out


def _gunzip(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: lc0 weight file not found") from None
    except gzip.BadGzipFile:
        raise CheckpointError(f"{path}: not an lc0 weight file (expected a gzip file)") from None
    except (EOFError, zlib.error) as e:
        raise CheckpointError(f"{path}: truncated or corrupt gzip stream ({e})") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a folder, expected an lc0 .pb.gz weight file") from None


def check_supported(net: dict, path) -> None:
    """Raise CheckpointError unless `net` is a 112-plane SE network with conv policy and WDL value."""
    if net.get("magic") != WEIGHT_MAGIC:
        raise CheckpointError(f"{path}: not an lc0 network (magic {net.get('magic')!r}, expected {WEIGHT_MAGIC:#x})")
    fmt = net.get("format", {})
    nf = fmt.get("network_format", {})
    enc = fmt.get("weights_encoding", 0)
    if enc != FORMAT_LINEAR16:
        raise CheckpointError(f"{path}: weights encoding {enc}, expected LINEAR16 (1)")
    checks = [
        ("input", INPUT_CLASSICAL_112_PLANE, _INPUT_NAMES),
        ("network", NETWORK_SE_WITH_HEADFORMAT, _NETWORK_NAMES),
        ("policy", POLICY_CONVOLUTION, {1: "POLICY_CLASSICAL", 3: "POLICY_ATTENTION"}),
        ("value", VALUE_WDL, {1: "VALUE_CLASSICAL", 3: "VALUE_PARAM"}),
    ]
    for key, want, names in checks:
        got = nf.get(key, 0)
        if got != want:
            raise CheckpointError(
                f"{path}: network format {key}={names.get(got, got)}, expected {names.get(want, want) if want in names else want} "
                f"(only Maia-1 style INPUT_CLASSICAL_112_PLANE / NETWORK_SE_WITH_HEADFORMAT / POLICY_CONVOLUTION / VALUE_WDL nets are supported)"
            )
    if nf.get("moves_left", MOVES_LEFT_NONE) != MOVES_LEFT_NONE:
        raise CheckpointError(f"{path}: network has a moves-left head, which Maia-1 networks do not; unsupported")
    w = net.get("weights", {})
    if w.get("encoder"):
        raise CheckpointError(f"{path}: attention-body network, expected a residual SE network")
    missing = [k for k in ("input", "residual", "policy1", "policy", "value", "ip1_val_w", "ip1_val_b",
                           "ip2_val_w", "ip2_val_b") if k not in w]
    if missing:
        raise CheckpointError(f"{path}: weight file lacks {', '.join(missing)} (truncated or not a Maia-1 network)")


def read_lc0_net(path) -> dict:
    """Read an lc0 `.pb.gz` weight file into nested dicts of float32 numpy arrays.

    Keys follow net.proto: {"magic", "license", "min_version": {...}, "format": {"weights_encoding",
    "network_format": {"input", "output", "network", "policy", "value", ...}}, "weights": {"input":
    ConvBlock, "residual": [{"conv1", "conv2", "se": {"w1", "b1", "w2", "b2"}}], "policy1", "policy",
    "value": ConvBlock, "ip1_val_w", ...}} where a ConvBlock is {"weights", "biases", "bn_means",
    "bn_stddivs", "bn_gammas", "bn_betas"} (present keys only). Raises a one-line CheckpointError
    naming the file if it is missing, not gzip, truncated, or not a supported network format.
    """
    path = Path(path)
    buf = _gunzip(path)
    try:
        net = _parse(buf, 0, len(buf), "Net", "Net")
    except _Truncated as e:
        raise CheckpointError(f"{path}: truncated or corrupt lc0 protobuf ({e})") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    check_supported(net, path)
    return net
