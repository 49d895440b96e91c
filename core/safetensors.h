// Reading and writing the safetensors format (https://github.com/huggingface/safetensors), the weight format
// of Hugging Face and of our checkpoints.
//
// Layout: an 8-byte little-endian unsigned header length N, then N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string value>", ...}}   (metadata optional)
// (possibly padded with trailing spaces), then the data buffer; offsets are relative to the buffer start,
// tensors are stored row-major, little-endian, packed back to back with no gaps, and cover the whole buffer.
//
// Supported dtypes: F32, F64, BF16, F16, I32, U16 (the element types of loom::DType).
// Errors: every failure throws loom::Error naming the file, and the tensor where one is at fault.
// Threads: the functions keep no state; concurrent calls on different files are fine.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace loom {

// Tensors by name, in a meaningful order (file order on read, caller's order on write).
using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

namespace safetensors {

struct File {
  NamedTensors tensors;                         // CPU tensors in file (data offset) order
  std::map<std::string, std::string> metadata;  // the "__metadata__" object, empty if absent
};

// Writes `tensors` (in the given order; any device, copied to the host as needed) and `metadata` to `path`
// through AtomicFileWriter: `path` is replaced in one step or left untouched. Throws on a duplicate or empty
// name, the reserved name "__metadata__", an undefined tensor, or an I/O error. The header is padded with
// spaces so the data starts 8-byte aligned, as Python's safetensors does.
void write(const std::string& path, const NamedTensors& tensors,
           const std::map<std::string, std::string>& metadata = {});

// Reads a whole file into new CPU tensors. Validates everything before trusting it: header length against
// the file size, JSON syntax, duplicate names, dtype, shape, offsets (in range, equal to shape x dtype size,
// contiguous with no gaps or overlaps, covering the whole buffer) and the file length.
File read(const std::string& path);

// The safetensors dtype string ("F32", "BF16", ...) of a DType, and back (throws naming `what`).
const char* dtype_to_string(DType dtype);
DType dtype_from_string(const std::string& name, const std::string& what);

}  // namespace safetensors
}  // namespace loom
