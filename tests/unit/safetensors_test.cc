#include "core/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>

#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {

using testing::error_message;

namespace fs = std::filesystem;

// A fresh empty directory per test.
fs::path make_temp_dir() {
  std::string tmpl = (fs::path(::testing::TempDir()) / "loom_safetensors_XXXXXX").string();
  EXPECT_NE(::mkdtemp(tmpl.data()), nullptr);
  return tmpl;
}

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The file layout by the spec: u64 little-endian header length, JSON padded with spaces to 8-byte alignment
// of the data (as Python's safetensors writes it), then the data.
std::string build_file(const std::string& header_json, const std::string& data) {
  std::string header = header_json;
  header.append((8 - (8 + header.size()) % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

template <typename T>
std::string le_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

Tensor random_tensor(const Shape& shape, DType dtype, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-3.f, 3.f);
  std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
  Tensor t = Tensor::empty(shape, dtype);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = u(rng);
    switch (dtype) {
      case DType::F32:
        t.data<float>()[i] = v;
        break;
      case DType::F64:
        t.data<double>()[i] = static_cast<double>(v) * 1.000000001;
        break;
      case DType::BF16:
        t.data<uint16_t>()[i] = float_to_bf16(v);
        break;
      case DType::F16:
        t.data<uint16_t>()[i] = float_to_f16(v);
        break;
      case DType::I32:
        t.data<int32_t>()[i] = static_cast<int32_t>(rng());
        break;
      case DType::U16:
        t.data<uint16_t>()[i] = static_cast<uint16_t>(rng());
        break;
    }
  }
  return t;
}

TEST(Safetensors, RoundTripsEveryDtype) {
  const fs::path dir = make_temp_dir();
  std::mt19937 rng(7);
  NamedTensors tensors;
  const std::vector<Shape> shapes = {{3, 5}, {7}, {}, {2, 0, 3}, {1, 3, 2}, {11}};
  const DType dtypes[] = {DType::F32, DType::F64, DType::BF16, DType::F16, DType::I32, DType::U16};
  for (size_t i = 0; i < shapes.size(); ++i)
    for (DType t : dtypes)
      tensors.emplace_back("layer" + std::to_string(i) + "." + dtype_name(t), random_tensor(shapes[i], t, rng));
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "ünïcode \"quoted\""}};
  const std::string path = (dir / "all.safetensors").string();
  safetensors::write(path, tensors, metadata);

  const safetensors::File file = safetensors::read(path);
  EXPECT_EQ(file.metadata, metadata);
  ASSERT_EQ(file.tensors.size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& [name, want] = tensors[i];
    const auto& [got_name, got] = file.tensors[i];
    EXPECT_EQ(got_name, name);
    EXPECT_EQ(got.dtype(), want.dtype()) << name;
    EXPECT_EQ(got.shape(), want.shape()) << name;
    ASSERT_EQ(got.nbytes(), want.nbytes()) << name;
    if (want.nbytes()) {
      EXPECT_EQ(std::memcmp(got.raw(), want.raw(), want.nbytes()), 0) << name;
    }
  }
  // The data starts 8-byte aligned, as in files written by Python.
  const std::string bytes = read_bytes(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 8, 0u);
  // Writing through the atomic writer leaves no temporary files behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  fs::remove_all(dir);
}

// The byte layout the spec (and Python's safetensors.torch.save_file) produces, built by hand.
TEST(Safetensors, MatchesHandBuiltSpecLayout) {
  const fs::path dir = make_temp_dir();
  const std::vector<float> a = {1.5f, -2.25f, 3.0f, 0.125f, 7.0f, -0.5f};
  const std::vector<uint16_t> b = {float_to_bf16(1.0f), float_to_bf16(-3.5f), float_to_bf16(0.75f)};
  const std::vector<int32_t> c = {-7};
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[24,30]},"c":{"dtype":"I32","shape":[],"data_offsets":[30,34]}})";
  const std::string expected = build_file(header, le_bytes(a) + le_bytes(b) + le_bytes(c));

  // Reading a hand-built file.
  write_bytes(dir / "hand.safetensors", expected);
  const safetensors::File file = safetensors::read((dir / "hand.safetensors").string());
  ASSERT_EQ(file.tensors.size(), 3u);
  EXPECT_EQ(file.metadata.at("format"), "pt");
  EXPECT_EQ(file.tensors[0].first, "a");
  EXPECT_EQ(file.tensors[0].second.shape(), (Shape{2, 3}));
  EXPECT_EQ(file.tensors[0].second.to_vector(), a);
  EXPECT_EQ(file.tensors[1].second.dtype(), DType::BF16);
  EXPECT_EQ(file.tensors[1].second.to_vector(), (std::vector<float>{1.0f, -3.5f, 0.75f}));
  EXPECT_EQ(file.tensors[2].second.shape(), Shape{});
  EXPECT_EQ(file.tensors[2].second.item(), -7);

  // Writing the same tensors produces exactly those bytes.
  NamedTensors tensors = {{"a", Tensor::from_vector(a, {2, 3})},
                          {"b", Tensor::from_vector({1.0f, -3.5f, 0.75f}, {3}, DType::BF16)},
                          {"c", Tensor::from_ints(c, {})}};
  safetensors::write((dir / "ours.safetensors").string(), tensors, {{"format", "pt"}});
  EXPECT_EQ(read_bytes(dir / "ours.safetensors"), expected);

  // Python writes data in its own order (by dtype alignment, then name) and sorts header keys; the reader
  // returns tensors in data order whatever the key order.
  const std::string reordered =
      R"({"y":{"dtype":"F16","shape":[1],"data_offsets":[8,10]},"x":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})";
  write_bytes(
      dir / "order.safetensors",
      build_file(reordered, le_bytes(std::vector<double>{2.5}) + le_bytes(std::vector<uint16_t>{float_to_f16(-1.f)})));
  const safetensors::File ordered = safetensors::read((dir / "order.safetensors").string());
  ASSERT_EQ(ordered.tensors.size(), 2u);
  EXPECT_EQ(ordered.tensors[0].first, "x");
  EXPECT_EQ(ordered.tensors[0].second.item(), 2.5);
  EXPECT_EQ(ordered.tensors[1].second.item(), -1.0);
  EXPECT_TRUE(ordered.metadata.empty());
  fs::remove_all(dir);
}

TEST(Safetensors, CorruptFilesThrowNamingFileAndTensor) {
  const fs::path dir = make_temp_dir();
  const std::string eight = le_bytes(std::vector<float>{1.f, 2.f});
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape, int b, int e) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(b) + "," + std::to_string(e) + "]}";
  };
  const std::string valid = build_file("{" + entry("w", "F32", "[2]", 0, 8) + "}", eight);
  std::string huge_len = valid;
  huge_len[0] = static_cast<char>(0xff), huge_len[1] = static_cast<char>(0xff);

  struct Case {
    std::string name, bytes, reason;
  };
  const std::vector<Case> cases = {
      {"short", "abc", "truncated file: 3 bytes"},
      {"header_len", huge_len, "header length 65535 exceeds the file size"},
      {"bad_json", build_file("{\"w\":{\"dtype\":", eight), "bad safetensors header JSON"},
      {"not_object", build_file("[1,2]", ""), "bad safetensors header JSON: it must start with '{'"},
      {"unknown_dtype", build_file("{" + entry("w", "F33", "[2]", 0, 8) + "}", eight),
       "tensor 'w': unknown dtype 'F33'"},
      {"unsupported_dtype", build_file("{" + entry("w", "I64", "[1]", 0, 8) + "}", eight),
       "tensor 'w': unsupported dtype 'I64'"},
      {"size_mismatch", build_file("{" + entry("w", "F32", "[3]", 0, 8) + "}", eight),
       "tensor 'w': data_offsets [0,8] span 8 bytes but F32[3] needs 12"},
      {"reversed", build_file("{" + entry("w", "F32", "[0]", 8, 0) + "}", eight), "tensor 'w': data_offsets [8,0] end"},
      {"out_of_range",
       build_file("{" + entry("w", "F32", "[2]", 0, 8) + "," + entry("v", "F32", "[4]", 8, 24) + "}", eight),
       "truncated file: tensors need 24 data bytes but only 8 follow the header"},
      {"overlap", build_file("{" + entry("w", "F32", "[2]", 0, 8) + "," + entry("v", "F32", "[1]", 4, 8) + "}", eight),
       "tensor 'v': data_offsets [4, 8] overlap the previous tensor"},
      {"gap", build_file("{" + entry("w", "F32", "[1]", 4, 8) + "}", eight),
       "tensor 'w': data_offsets [4, 8] leave a gap after the previous tensor"},
      {"truncated", valid.substr(0, valid.size() - 3), "truncated file: tensors need 8 data bytes but only 5"},
      {"trailing", valid + "xx", "2 bytes after the last tensor are not covered by the header"},
      {"duplicate",
       build_file("{" + entry("w", "F32", "[1]", 0, 4) + "," + entry("w", "F32", "[1]", 4, 8) + "}", eight),
       "duplicate key 'w'"},
      {"bad_shape", build_file("{" + entry("w", "F32", "[-2]", 0, 8) + "}", eight),
       "tensor 'w': shape [-2] must hold non-negative integers"},
      {"extra_field", build_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", eight),
       "tensor 'w': unknown field 'x'"},
      {"missing_field", build_file(R"({"w":{"dtype":"F32","shape":[2]}})", eight),
       "tensor 'w': missing field 'data_offsets'"},
      {"bad_metadata", build_file(R"({"__metadata__":{"k":1}})", ""), "__metadata__ value for 'k' must be a string"},
  };
  for (const Case& c : cases) {
    const std::string path = (dir / (c.name + ".safetensors")).string();
    write_bytes(path, c.bytes);
    const std::string message = error_message([&] { safetensors::read(path); });
    EXPECT_EQ(message.rfind(path + ": ", 0), 0u) << c.name << ": " << message;
    EXPECT_NE(message.find(c.reason), std::string::npos) << c.name << ": " << message;
  }
  EXPECT_NE(error_message([&] { safetensors::read((dir / "missing").string()); }).find("cannot open"), std::string::npos);
  // Sanity: the unmodified file reads.
  write_bytes(dir / "valid.safetensors", valid);
  EXPECT_EQ(safetensors::read((dir / "valid.safetensors").string()).tensors.at(0).second.to_vector(),
            (std::vector<float>{1.f, 2.f}));
  fs::remove_all(dir);
}

TEST(Safetensors, WriteRejectsBadNames) {
  const fs::path dir = make_temp_dir();
  const std::string path = (dir / "x.safetensors").string();
  const Tensor t = Tensor::zeros({2}, DType::F32);
  EXPECT_NE(error_message([&] {
              safetensors::write(path, {{"a", t}, {"a", t}});
            }).find("duplicate tensor name 'a'"),
            std::string::npos);
  EXPECT_NE(error_message([&] {
              safetensors::write(path, {{"__metadata__", t}});
            }).find("invalid tensor name"),
            std::string::npos);
  EXPECT_NE(error_message([&] { safetensors::write(path, {{"u", Tensor()}}); }).find("'u' is undefined"), std::string::npos);
  EXPECT_FALSE(fs::exists(path));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace loom
