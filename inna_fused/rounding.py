"""Deterministic stochastic rounding, bit for bit as csrc/inna_math.h computes it, in torch ops.

A 16-bit store (θ of a float16/bfloat16 param, a bfloat16 phase) rounds its float32 value to one of
its two 16-bit neighbours, up with probability equal to its distance from the lower one in units
of their gap (resolution 2^-16). The random bits are a counter-based hash of (seed, step k, numel,
element index), so the foreach and loop paths draw exactly the bits the compiled kernels draw. One
32-bit hash per element serves both stores: its high 16 bits round θ, its low 16 bits the phase.
INNAprop's bfloat16 exp_avg_sq takes 16 more bits (`sq_random_bits`): θ's half of that word when
θ does not round stochastically, else the high half of a second word under `sq_rounding_key`.

Unsigned 32-bit values are held in int64 tensors. A 32×32-bit product would overflow int64, so
`_mul_u32` multiplies by the two 16-bit halves of the constant and keeps the low 32 bits.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF
_TWO_POW_MINUS_16 = 1.52587890625e-5
_HALF_MAX = 65504.0


def splitmix64(z: int) -> int:
    """The splitmix64 finaliser on Python ints (modulo 2^64)."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def rounding_key(seed: int, step: int, numel: int) -> int:
    """One 64-bit key per (tensor, step); `step` is k before the step."""
    return splitmix64(splitmix64(splitmix64(seed & _MASK64) ^ (step & _MASK64)) ^ (numel & _MASK64))


def sq_rounding_key(key: int) -> int:
    """The key of the words that round a bfloat16 exp_avg_sq, from the (tensor, step) key."""
    return splitmix64(key ^ 0xD1B54A32D192ED03)


def _mul_u32(x: Tensor, constant: int) -> Tensor:
    """(x · constant) mod 2^32 for int64 tensors holding values < 2^32."""
    low = x * (constant & 0xFFFF)                    # < 2^48
    high = ((x * (constant >> 16)) & 0xFFFF) << 16   # only the product's low 16 bits survive
    return (low + high) & _MASK32


def mix32(x: Tensor) -> Tensor:
    """The header's 32-bit integer hash, element-wise on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = _mul_u32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul_u32(x, 0x846CA68B)
    return x ^ (x >> 16)


def random_bits(key: int, index: Tensor) -> Tensor:
    """32 random bits (as int64 values in [0, 2^32)) for each element index (an int64 tensor):
    mix32(low half of index ^ salt), salt = low half of key ^ mix32(high half of index ^ high
    half of key)."""
    salt = (key & _MASK32) ^ mix32((index >> 32) ^ (key >> 32))
    return mix32((index & _MASK32) ^ salt)


def sq_random_bits(key: int, index: Tensor, theta_rounds: bool,
                   words: Optional[Tensor] = None) -> Tensor:
    """The 16 random bits that round a bfloat16 exp_avg_sq's elements (int64 indices) at the step
    of `key` (`rounding_key`): the high half of the element's word when θ does not round
    stochastically (float32/float64 params leave it unused), else (`theta_rounds`, 16-bit params)
    the high half of a word of its own under `sq_rounding_key(key)`. `words`: the elements'
    `random_bits(key, index)` when already drawn (not drawn again)."""
    if theta_rounds:
        return theta_bits(random_bits(sq_rounding_key(key), index))
    return theta_bits(random_bits(key, index) if words is None else words)


def theta_bits(bits: Tensor) -> Tensor:
    """The 16 random bits that round θ: the high half of the element's hash."""
    return bits >> 16


def phase_bits(bits: Tensor) -> Tensor:
    """The 16 random bits that round the phase: the low half of the element's hash."""
    return bits & 0xFFFF


def _is_dense(t: Tensor) -> bool:
    """at::Tensor::is_non_overlapping_and_dense: the elements fill a block of memory exactly."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def element_indices(param: Tensor, *others: Tensor) -> Tensor:
    """The index each element of `param` has in the compiled kernel's walk, as an int64 tensor of
    param's shape: its position in memory when param is dense and `others` (its grad and state
    tensors) have its strides (the kernel walks them all as flat arrays), else its row-major
    position (the kernel works on contiguous copies)."""
    numel = param.numel()
    if _is_dense(param) and all(t.stride() == param.stride() for t in others):
        index = torch.empty_strided(param.shape, param.stride(), dtype=torch.int64,
                                    device=param.device)
        torch.as_strided(index, (numel,), (1,), 0).copy_(
            torch.arange(numel, dtype=torch.int64, device=param.device))
        return index
    return torch.arange(numel, dtype=torch.int64, device=param.device).view(param.shape)


def round_to_bf16_stochastic(x: Tensor, r16: Tensor) -> Tensor:
    """float32 → bfloat16: add 16 random bits (r16 < 2^16) below the kept ones and truncate
    (rounds the magnitude up with probability (dropped bits)/2^16). Non-finite values round to
    nearest."""
    u = x.view(torch.int32).to(torch.int64) & _MASK32
    finite = (u & 0x7F800000) != 0x7F800000
    top = ((u + r16) >> 16) & 0xFFFF
    rounded = torch.where(top >= 0x8000, top - 0x10000, top).to(torch.int16).view(torch.bfloat16)
    return torch.where(finite, rounded, x.to(torch.bfloat16))


def round_to_half_stochastic(x: Tensor, r16: Tensor) -> Tensor:
    """float32 → float16 between the two neighbours: lo, the float16 of largest magnitude ≤ |x|,
    and hi, the next one up; up iff u·(hi − lo) < |x| − lo with u = r16·2^-16 (r16 < 2^16).
    Exact, non-finite and |x| ≥ 65504 values round to nearest."""
    nearest = x.to(torch.float16)
    nearest_f = nearest.to(torch.float32)
    magnitude = x.abs()
    keep_nearest = ~(magnitude < _HALF_MAX) | (nearest_f == x)
    nearest_bits = nearest.view(torch.int16).to(torch.int64) & 0xFFFF
    sign = nearest_bits & 0x8000
    lo = (nearest_bits & 0x7FFF) - (nearest_f.abs() > magnitude).to(torch.int64)
    lo = lo.clamp(0, 0x7BFE)  # only elements that keep `nearest` fall outside
    hi = lo + 1
    lo_f = lo.to(torch.int16).view(torch.float16).to(torch.float32)
    hi_f = hi.to(torch.int16).view(torch.float16).to(torch.float32)
    u = r16.to(torch.float32) * _TWO_POW_MINUS_16
    mag = torch.where(u * (hi_f - lo_f) < magnitude - lo_f, hi, lo)
    signed = sign | mag
    rounded = torch.where(signed >= 0x8000, signed - 0x10000, signed).to(torch.int16)
    return torch.where(keep_nearest, nearest, rounded.view(torch.float16))


def round_stochastic(x: Tensor, dtype: torch.dtype, r16: Tensor) -> Tensor:
    """Round float32 `x` to a 16-bit `dtype` with 16 random bits per element."""
    if dtype == torch.bfloat16:
        return round_to_bf16_stochastic(x, r16)
    if dtype == torch.float16:
        return round_to_half_stochastic(x, r16)
    raise TypeError(f"stochastic rounding stores float16 or bfloat16, not {dtype}")
