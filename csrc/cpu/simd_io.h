#pragma once

// cpu/simd_io.h — the SIMD memory side of the CPU kernels, shared by every optimizer's kernel
// (inna_cpu.cpp, innaprop_cpu.cpp): the SIMD level, blocks of two opmath vectors, their loads
// (16-bit data converted), their stores (rounded to nearest, or stochastically with the
// counter-based bits of inna_math.h), the block's random bits, and software prefetch. Names no
// optimizer. Include it FIRST in a kernel's .cpp: it picks the SIMD level before ATen's vector
// headers are seen.
//
// SIMD level: the vector types follow the flags the extension was compiled with (setup.py adds
// -mavx512f -mavx512bw -mavx512vl -mavx512dq, or -mavx2, with -mfma -mf16c, on machines that have
// them). The private namespace name keeps these instantiations apart from libtorch's own.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__FMA__) && defined(__F16C__)
#if !defined(CPU_CAPABILITY_AVX512)
#define CPU_CAPABILITY_AVX512
#endif
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(CPU_CAPABILITY_AVX2)
#define CPU_CAPABILITY_AVX2
#endif
#define CPU_CAPABILITY inna_fused_simd

#include "../inna_math.h"

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

namespace inna_fused {
namespace cpu {

using at::vec::Vectorized;

// A block is two SIMD vectors of opmath_t: 16 elements for float, 8 for double. 16 is also the
// width of one Vectorized<BFloat16/Half>, so 16-bit data converts in one step. Full blocks take
// the kFull = true instantiations (counts known at compile time); a span's last, partial block
// the kFull = false ones, whose loads zero-fill and whose stores write `count` lanes. Both run the
// same per-lane arithmetic (no contraction, see above), so an element's result does not depend on
// which of the two it went through.
template <typename opmath_t>
constexpr int64_t kBlock = 2 * Vectorized<opmath_t>::size();

// Load `count` (≤ kBlock) elements of `src` as two opmath vectors; lanes past `count` are 0.
template <bool kFull, typename opmath_t, typename src_t>
inline void load_block(const src_t* src, int64_t count, Vectorized<opmath_t>& a,
                       Vectorized<opmath_t>& b) {
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t H = Vec::size();
  if constexpr (std::is_same_v<src_t, opmath_t>) {
    if constexpr (kFull) {
      a = Vec::loadu(src);
      b = Vec::loadu(src + H);
    } else {
      a = Vec::loadu(src, std::min(count, H));
      b = count > H ? Vec::loadu(src + H, count - H) : Vec(opmath_t(0));
    }
  } else if constexpr (std::is_same_v<opmath_t, float>) {  // 16-bit data, float arithmetic
    const auto v = kFull ? Vectorized<src_t>::loadu(src) : Vectorized<src_t>::loadu(src, count);
    std::tie(a, b) = at::vec::convert_to_float<src_t>(v);
  } else {  // a bfloat16 phase of a float64 param
    opmath_t buf[kBlock<opmath_t>] = {};
    for (int64_t j = 0; j < count; ++j) buf[j] = static_cast<opmath_t>(src[j]);
    a = Vec::loadu(buf);
    b = Vec::loadu(buf + H);
  }
}

// random_bits(key, index + j) for j < L (inna_math.h), 8 (AVX2) or 16 (AVX-512) lanes at a time.
template <int64_t L>
inline void block_random_bits(uint64_t key, uint64_t index, uint32_t* bits) {
  // The salt depends on index >> 32: constant over the block unless its low half wraps.
  const bool one_salt = static_cast<uint32_t>(index) <= 0xFFFFFFFFu - L;
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(L % 16 == 0);
  if (one_salt) {
    const __m512i salt = _mm512_set1_epi32(static_cast<int32_t>(rounding_salt(key, index)));
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i c1 = _mm512_set1_epi32(static_cast<int32_t>(0x7FEB352Du));
    const __m512i c2 = _mm512_set1_epi32(static_cast<int32_t>(0x846CA68Bu));
    for (int64_t j = 0; j < L; j += 16) {
      __m512i x = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(index + j)), lanes);
      x = _mm512_xor_si512(x, salt);
      x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));  // mix32, as in inna_math.h
      x = _mm512_mullo_epi32(x, c1);
      x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
      x = _mm512_mullo_epi32(x, c2);
      x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
      _mm512_store_si512(bits + j, x);
    }
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  static_assert(L % 8 == 0);
  if (one_salt) {
    const __m256i salt = _mm256_set1_epi32(static_cast<int32_t>(rounding_salt(key, index)));
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i c1 = _mm256_set1_epi32(static_cast<int32_t>(0x7FEB352Du));
    const __m256i c2 = _mm256_set1_epi32(static_cast<int32_t>(0x846CA68Bu));
    for (int64_t j = 0; j < L; j += 8) {
      __m256i x = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(index + j)), lanes);
      x = _mm256_xor_si256(x, salt);
      x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));  // mix32, as in inna_math.h
      x = _mm256_mullo_epi32(x, c1);
      x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
      x = _mm256_mullo_epi32(x, c2);
      x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
      _mm256_store_si256(reinterpret_cast<__m256i*>(bits + j), x);
    }
    return;
  }
#endif
  (void)one_salt;
  for (int64_t j = 0; j < L; ++j) bits[j] = random_bits(key, index + static_cast<uint64_t>(j));
}

#if defined(CPU_CAPABILITY_AVX512)
// Store 32 16-bit values held as two 256-bit vectors: directly for a full block, through a buffer
// for the first `count` of a partial one.
template <bool kFull, typename dst_t>
inline void store_packed16(dst_t* dst, int64_t count, __m256i lo, __m256i hi) {
  static_assert(sizeof(dst_t) == 2);
  if constexpr (kFull) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst) + 1, hi);
  } else {
    alignas(64) uint16_t out[32];
    _mm256_store_si256(reinterpret_cast<__m256i*>(out), lo);
    _mm256_store_si256(reinterpret_cast<__m256i*>(out + 16), hi);
    std::memcpy(dst, out, count * sizeof(dst_t));
  }
}
#endif

// Which half of an element's 32 random bits a store uses (inna_math.h: theta_bits, phase_bits).
enum class BitsHalf { kTheta, kPhase };

// Store the first `count` lanes of (a, b) into `dst`: stochastically rounded with the block's
// random bits when asked (16-bit destinations), else rounded to nearest.
template <bool kFull, typename dst_t, typename opmath_t>
inline void store_block(dst_t* dst, int64_t count, const Vectorized<opmath_t>& a,
                        const Vectorized<opmath_t>& b, bool stochastic, const uint32_t* bits,
                        BitsHalf half) {
  using Vec = Vectorized<opmath_t>;
  constexpr int64_t H = Vec::size();
  constexpr int64_t L = kBlock<opmath_t>;
  if constexpr (std::is_same_v<dst_t, opmath_t>) {
    if constexpr (kFull) {
      a.store(dst);
      b.store(dst + H);
    } else {
      a.store(dst, std::min(count, H));
      if (count > H) b.store(dst + H, count - H);
    }
    return;
  } else {
    if constexpr (std::is_same_v<opmath_t, float>) {
      if (!stochastic) {
        const auto v = at::vec::convert_from_float<dst_t>(a, b);
        kFull ? v.store(dst) : v.store(dst, count);
        return;
      }
#if defined(CPU_CAPABILITY_AVX512)
      // The AVX-512 versions of the AVX2 code below (16 lanes per vector; see there).
      auto random16 = [&](const uint32_t* r) {
        const __m512i rand = _mm512_load_si512(r);
        return half == BitsHalf::kTheta ? _mm512_srli_epi32(rand, 16)
                                        : _mm512_and_si512(rand, _mm512_set1_epi32(0xFFFF));
      };
      if constexpr (std::is_same_v<dst_t, c10::BFloat16>) {
        // Each lane's float bits plus its random bits; the bfloat16 is the high half.
        auto add16 = [&](const Vectorized<float>& v, const uint32_t* r) {
          const __m512 x = v;
          const __m512i out = _mm512_add_epi32(_mm512_castps_si512(x), random16(r));
          const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
          return _mm512_mask_mov_epi32(out, nan, _mm512_set1_epi32(0x7FC00000));
        };
        // One permute gathers the 32 high halves of both vectors in element order.
        const __m512i high_halves = _mm512_set_epi16(
            63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
            31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        const __m512i packed =
            _mm512_permutex2var_epi16(add16(a, bits), high_halves, add16(b, bits + 16));
        if constexpr (kFull) {
          _mm512_storeu_si512(dst, packed);
        } else {
          store_packed16<false>(dst, count, _mm512_castsi512_si256(packed),
                                _mm512_extracti64x4_epi64(packed, 1));
        }
        return;
      }
      if constexpr (std::is_same_v<dst_t, c10::Half>) {
        auto round16 = [&](const Vectorized<float>& v, const uint32_t* r) {
          const __m512 x = v;
          const __m256i lo = _mm512_cvtps_ph(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
          const __m256i hi = _mm256_add_epi16(lo, _mm256_set1_epi16(1));
          const __m512 lo_f = _mm512_cvtph_ps(lo);
          const __m512 gap = _mm512_abs_ps(_mm512_sub_ps(_mm512_cvtph_ps(hi), lo_f));
          const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(x, lo_f));
          const __m512 u =
              _mm512_mul_ps(_mm512_cvtepi32_ps(random16(r)), _mm512_set1_ps(1.52587890625e-5f));
          const __mmask16 up = _mm512_cmp_ps_mask(_mm512_mul_ps(u, gap), frac, _CMP_LT_OQ);
          const __mmask16 big =
              _mm512_cmp_ps_mask(_mm512_abs_ps(x), _mm512_set1_ps(65504.0f), _CMP_NLT_UQ);
          const __m256i nearest =
              _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          return _mm256_mask_blend_epi16(big, _mm256_mask_blend_epi16(up, lo, hi), nearest);
        };
        store_packed16<kFull>(dst, count, round16(a, bits), round16(b, bits + 16));
        return;
      }
#endif
#if defined(CPU_CAPABILITY_AVX2)
      if constexpr (std::is_same_v<dst_t, c10::BFloat16>) {
        // round_stochastic_bf16 on 16 lanes: add the 16 random bits to the float bits and
        // truncate (inf keeps its bits: no carry reaches them); NaN becomes 0x7FC0.
        auto round8 = [&](const Vectorized<float>& v, const uint32_t* r) {
          __m256i rand = _mm256_load_si256(reinterpret_cast<const __m256i*>(r));
          rand = half == BitsHalf::kTheta ? _mm256_srli_epi32(rand, 16)
                                          : _mm256_and_si256(rand, _mm256_set1_epi32(0xFFFF));
          const __m256i out = _mm256_srli_epi32(_mm256_add_epi32(_mm256_castps_si256(v), rand), 16);
          const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
          return _mm256_blendv_epi8(out, _mm256_set1_epi32(0x7FC0), nan);
        };
        // packus works within 128-bit halves; the permute restores element order.
        const __m256i packed = _mm256_permute4x64_epi64(
            _mm256_packus_epi32(round8(a, bits), round8(b, bits + 8)), 0xD8);
        if constexpr (kFull) {
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), packed);
        } else {
          alignas(32) uint16_t out[16];
          _mm256_store_si256(reinterpret_cast<__m256i*>(out), packed);
          std::memcpy(dst, out, count * sizeof(dst_t));
        }
        return;
      }
      if constexpr (std::is_same_v<dst_t, c10::Half>) {
        // round_stochastic_half on 8 lanes with F16C: lo is the conversion toward zero (the
        // float16 of largest magnitude ≤ |x|), hi the next one up; round up iff
        // u·(hi − lo) < |x| − lo. Lanes with |x| ≥ 65504, inf or NaN round to nearest.
        auto round8 = [&](const Vectorized<float>& v, const uint32_t* r) {
          __m256i rand = _mm256_load_si256(reinterpret_cast<const __m256i*>(r));
          rand = half == BitsHalf::kTheta ? _mm256_srli_epi32(rand, 16)
                                          : _mm256_and_si256(rand, _mm256_set1_epi32(0xFFFF));
          const __m256 x = v;
          const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
          const __m128i lo = _mm256_cvtps_ph(x, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
          const __m128i hi = _mm_add_epi16(lo, _mm_set1_epi16(1));
          const __m256 lo_f = _mm256_cvtph_ps(lo);
          const __m256 gap = _mm256_and_ps(_mm256_sub_ps(_mm256_cvtph_ps(hi), lo_f), abs_mask);
          const __m256 frac = _mm256_and_ps(_mm256_sub_ps(x, lo_f), abs_mask);
          const __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(rand), _mm256_set1_ps(1.52587890625e-5f));
          const __m256 up = _mm256_cmp_ps(_mm256_mul_ps(u, gap), frac, _CMP_LT_OQ);
          const __m256 big = _mm256_cmp_ps(_mm256_and_ps(x, abs_mask), _mm256_set1_ps(65504.0f),
                                           _CMP_NLT_UQ);
          const __m128i nearest = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          auto mask16 = [](__m256 m) {  // 8 × 32-bit lane masks → 8 × 16-bit lane masks
            const __m256i i = _mm256_castps_si256(m);
            return _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
          };
          const __m128i rounded = _mm_blendv_epi8(lo, hi, mask16(up));
          return _mm_blendv_epi8(rounded, nearest, mask16(big));
        };
        alignas(32) uint16_t out[16];
        _mm_store_si128(reinterpret_cast<__m128i*>(out), round8(a, bits));
        _mm_store_si128(reinterpret_cast<__m128i*>(out + 8), round8(b, bits + 8));
        std::memcpy(dst, out, count * sizeof(dst_t));
        return;
      }
#endif
    }
    opmath_t buf[L];
    a.store(buf);
    b.store(buf + H);
    dst_t out[L];
    for (int64_t j = 0; j < count; ++j) {
      const uint32_t r16 = !stochastic ? 0u
                           : half == BitsHalf::kTheta ? theta_bits(bits[j]) : phase_bits(bits[j]);
      out[j] = round_store<dst_t>(buf[j], stochastic, r16);
    }
    std::memcpy(dst, out, count * sizeof(dst_t));
  }
}

// Software prefetch of the cache lines one block of `T` will need kPrefetchBytes further on. The
// hardware prefetcher alone left the loop stalled on memory between blocks (bfloat16 params with
// a bfloat16 state ran at 14 ms per 2^25 elements without it, 8 ms with it; 512 to 4096 bytes
// ahead were tried, 1024-2048 were best).
constexpr int64_t kPrefetchBytes = 2048;

template <int64_t L, typename T>
inline void prefetch_ahead(const T* block) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  constexpr int64_t kBytes = L * static_cast<int64_t>(sizeof(T));
  const char* ahead = reinterpret_cast<const char*>(block) + kPrefetchBytes;
  for (int64_t b = 0; b < kBytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
#else
  (void)block;
#endif
}

}  // namespace cpu
}  // namespace inna_fused
