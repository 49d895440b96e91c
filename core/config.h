// Loading run configurations: YAML files (configs/*.yaml) -> config::RunConfig (core/config.proto).
//
// The mapping is generic (protobuf descriptors and reflection), so new fields in config.proto need no code:
// - a YAML map fills a message; its keys are the proto field names. Unknown and duplicate keys are errors.
// - int32/int64/uint32/uint64: a plain integer (or an exact whole number like 1e5) within the type's range.
// - float/double: a plain number, or .inf / -.inf / .nan.   bool: true / false.
// - string: any scalar ("123" and 123 both give "123").   enum: the value's name.
// - repeated fields: a YAML list. A null value (`key:` or `key: ~`) leaves the field unset.
// - Fields marked `[(loom.config.required) = true]` must be present, checked recursively in every message
//   that is present (including list elements); a required message field must be present.
// Quoted scalars ("12") are strings and are rejected where a number or bool is expected.
// - Ranges: every numeric field has an inclusive range, `[(loom.config.min) = a, (loom.config.max) = b]`, and a
//   value outside it (or NaN) is an error naming the file, the key path, the value and the range, e.g.
//   configs/x.yaml:9:10: optim.beta1: 1 is out of range [0, 0.999999]
//   (each element of a repeated field is checked). A string field with `(loom.config.choices) = "a|b"` takes
//   only those values, whatever the device (train.dtype: bert is an error on the CPU too).
//
// Overrides ("key.sub=value", e.g. from the command line) are applied after the file and before the
// required-field check. The value is parsed as YAML (so `optim.lr=3e-4`, `data.mean=[0.5]` and
// `train.resume=` (null: unset) all work). List elements are addressed by index, `model.blocks.1.heads=4`
// or `model.blocks[1].heads=4`; the index must exist or equal the list size (which appends an element).
//
// Errors: every failure throws loom::Error "<file>:<line>:<column>: <key path>: <reason>", the position
// (1-based) being where the offending key or value starts, e.g.
//   configs/gpt_tiny.yaml:3:12: model.n_layer: expected an integer, got "twelve"
// A YAML syntax error reads "<file>:<line>:<column>: YAML syntax error: ...". A missing required field has no
// position ("<file>: train.max_steps: missing required field"), and errors in overrides name the override
// instead: "<file>: override 'model.n_layer=x': model.n_layer: ...".
// Threads: the functions keep no state; concurrent calls are fine.
#pragma once
#include <string>
#include <vector>

#include "core/config.pb.h"

namespace loom {

// Reads and parses `yaml_path` (see parse_run_config). Throws naming the file if it cannot be read.
config::RunConfig load_run_config(const std::string& yaml_path, const std::vector<std::string>& overrides = {});

// Parses YAML text; `source_name` is the file name used in error messages.
config::RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                                   const std::vector<std::string>& overrides = {});

// Serialises a config as YAML that parse_run_config reads back into an identical message (same fields set,
// same values; doubles and floats are written in shortest round-trip form, strings always quoted).
// With `include_defaults`, unset fields that have a declared default in config.proto are written with it,
// and absent sub-messages without required fields are written with their defaults (except a section whose
// presence turns a feature on, (enables_feature): prune), so the result parses back to equal values (with more
// fields marked present). Unset fields without a declared default (e.g. head_dim, derived from d_model /
// n_head) stay unset either way.
std::string run_config_to_yaml(const config::RunConfig& config, bool include_defaults = false);

// What `loom config` prints: `config` as commented YAML with every field of the schema in schema order, each
// followed by one line of help (its comment in core/config.proto, then its range, choices or type). A field
// neither set nor with a declared default is written `~` (unset: derived, as its comment says); an absent
// section that turns a feature on (prune) is written `~` with its fields and their defaults commented out
// below it. The text parses back (parse_run_config) to `config` with every default filled in.
std::string run_config_reference(const config::RunConfig& config);

}  // namespace loom
