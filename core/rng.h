// Counter-based random numbers (Philox4x32-10, Salmon et al., SC'11).
//
// Why counter-based: element i of a draw depends only on (seed, stream, i), so every backend, every rank and a
// resumed run produce the same numbers without sharing or saving generator state beyond a counter. The same
// header compiles for CUDA device code.
//
// Thread-safety: the functions are pure; a PhiloxStream object is not shared between threads.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LOOM_HOST_DEVICE __host__ __device__
#else
#define LOOM_HOST_DEVICE
#endif

namespace loom {

struct Philox4 {
  uint32_t v[4];
};

// Philox4x32 with 10 rounds: counter (c0..c3) and key (k0, k1) -> 4 random 32-bit words.
LOOM_HOST_DEVICE inline Philox4 philox4x32(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                           uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {{c0, c1, c2, c3}};
}

// Uniform in (0, 1] from 32 random bits (never 0, so log() is safe).
LOOM_HOST_DEVICE inline float uniform_from_bits(uint32_t bits) { return (bits >> 8) * (1.0f / 16777216.0f) + (1.0f / 16777216.0f); }

// A stream of draws identified by (seed, stream id); draw i is a pure function of (seed, stream, i).
class PhiloxStream {
 public:
  PhiloxStream(uint64_t seed, uint64_t stream, uint64_t position = 0)
      : seed_(seed), stream_(stream), position_(position) {}

  // The i-th block of four words of this stream.
  LOOM_HOST_DEVICE Philox4 block(uint64_t i) const {
    return philox4x32(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32), static_cast<uint32_t>(stream_),
                      static_cast<uint32_t>(stream_ >> 32), static_cast<uint32_t>(seed_),
                      static_cast<uint32_t>(seed_ >> 32));
  }
  // Next uniform float in (0, 1].
  float uniform() { return uniform_from_bits(block(position_++).v[0]); }
  // Next standard normal (Box-Muller on one block).
  float normal() {
    const Philox4 r = block(position_++);
    const float u1 = uniform_from_bits(r.v[0]), u2 = uniform_from_bits(r.v[1]);
    return std::sqrt(-2.0f * std::log(u1)) * std::cos(6.28318530717958647692f * u2);
  }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) {
    const Philox4 r = block(position_++);
    const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
    return bits % n;  // bias < n / 2^64, negligible for our n
  }
  uint64_t position() const { return position_; }
  void set_position(uint64_t p) { position_ = p; }
  uint64_t seed() const { return seed_; }
  uint64_t stream() const { return stream_; }

 private:
  uint64_t seed_, stream_, position_;
};

}  // namespace loom
