// Element types. F64 exists for the CPU backend's float64 gradient checks; training uses F32 on the CPU
// and BF16/F16 activations with F32 master weights on CUDA.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace loom {

enum class DType : uint8_t { F32, F64, BF16, F16, I32, U16 };

// Bytes per element.
size_t dtype_size(DType t);
// Lower-case name as used in configs and safetensors ("f32", "bf16", ...).
const char* dtype_name(DType t);
// Inverse of dtype_name; throws loom::Error naming `what` on an unknown name.
DType dtype_from_name(const std::string& name, const std::string& what = "dtype");
bool is_floating(DType t);

// Host-side conversions between float and the 16-bit float formats (round to nearest even).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t float_to_f16(float f);
float f16_to_float(uint16_t h);

}  // namespace loom
