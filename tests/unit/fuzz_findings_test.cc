// Regression tests for what the fuzz targets (tests/fuzz/) found in parsers owned elsewhere; each failed
// before its fix. (Finds in the data-file parsers are tested beside their other tests, e.g. idx_test.cc.)
#include <gtest/gtest.h>

#include <string>

#include "core/config.h"
#include "core/error.h"
#include "tests/common/test_util.h"

namespace loom {
namespace {
using testing::error_message;

// A complete config whose data.train is "shards/<name>_*.bin".
std::string config_with_train(const std::string& name) {
  return "model: {kind: gpt, n_layer: 1, d_model: 8, n_head: 2}\n"
         "data: {train: 'shards/" + name + "_*.bin', batch_size: 1}\n"
         "train: {max_steps: 1}\n";
}

// fuzz_config: a path with bytes that are not UTF-8 was accepted, and run_config_to_yaml then wrote it back
// with U+FFFD replacement characters: the config saved in checkpoints named another file.
TEST(FuzzFindings, ConfigTextMustBeUtf8) {
  const std::string kConfig = config_with_train("train");
  const std::string bad = config_with_train("\xffrain");
  EXPECT_EQ(error_message([&] { parse_run_config(bad, "bad.yaml"); }),
            "bad.yaml:" + testing::line_column(bad, 76) + ": not UTF-8 text (invalid byte 0xff at byte offset 76)");
  EXPECT_EQ(testing::line_column(bad, 76), "2:23");  // data: {train: 'shards/\xff
  EXPECT_NE(error_message([&] { parse_run_config(kConfig, "ok.yaml", {"data.train=a\xc3"}); })
                .find("ok.yaml: override 'data.train=a\xc3': not UTF-8 text (invalid byte 0xc3 at byte offset 12)"),
            std::string::npos);
  for (const char* bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82"})  // overlong, surrogate,
    EXPECT_THROW(parse_run_config(kConfig + "# " + bad + "\n", "c.yaml"), Error) << bad;  // > U+10FFFF, cut
  // Valid UTF-8 of every length round-trips unchanged.
  const config::RunConfig parsed =
      parse_run_config(config_with_train("caf\xc3\xa9_\xe6\x97\xa5_\xf0\x9f\x98\x80"), "u.yaml");
  EXPECT_EQ(parsed.data().train(), "shards/caf\xc3\xa9_\xe6\x97\xa5_\xf0\x9f\x98\x80_*.bin");
  EXPECT_EQ(parse_run_config(run_config_to_yaml(parsed), "w.yaml").data().train(), parsed.data().train());
}

// fuzz_config: a NUL byte in a path (valid UTF-8, but not YAML text) was read into the string, and
// run_config_to_yaml wrote it back as U+FFFD with the next character lost. Control characters other than tab,
// line feed and carriage return are refused, in files and overrides, naming where.
TEST(FuzzFindings, ConfigTextMustBePrintable) {
  const std::string kConfig = config_with_train("train");
  std::string bad = config_with_train("val/");
  bad.insert(bad.find("val/") + 4, 1, '\0');
  const size_t at = bad.find('\0');
  EXPECT_EQ(error_message([&] { parse_run_config(bad, "nul.yaml"); }),
            "nul.yaml:" + testing::line_column(bad, at) + ": not YAML text (control character U+0000 at byte offset " +
                std::to_string(at) + "; YAML allows only tab, line feed and carriage return among the control "
                "characters)");
  for (const char* control : {"\x01", "\x1b", "\x7f", "\xc2\x80", "\xef\xbf\xbe"})  // C0, DEL, C1, U+FFFE
    EXPECT_THROW(parse_run_config(config_with_train(std::string("a") + control), "c.yaml"), Error) << control;
  EXPECT_NE(error_message([&] { parse_run_config(kConfig, "ok.yaml", {"data.train=a\x07"}); })
                .find("ok.yaml: override 'data.train=a\x07': not YAML text (control character U+0007"),
            std::string::npos);
  // Tab, CR LF line ends and U+00A0 are YAML text and still parse.
  const config::RunConfig parsed =
      parse_run_config("model: {kind: gpt, n_layer: 1, d_model: 8, n_head: 2}\r\n"
                       "data: {train: \"a\tb\xc2\xa0" "c\", batch_size: 1}\r\ntrain: {max_steps: 1}\r\n",
                       "ok.yaml");
  EXPECT_EQ(parsed.data().train(), "a\tb\xc2\xa0" "c");
}

}  // namespace
}  // namespace loom

namespace loom {
namespace {

// fuzz_config: yaml-cpp's LoadAll never returned on ", " (each pass added an empty document, growing memory
// without bound), so `loom train` hung on such a config. Now it is an error at once.
TEST(FuzzFindings, ConfigThatIsJustACommaIsAnErrorNotAHang) {
  EXPECT_EQ(error_message([] { parse_run_config(", ", "comma.yaml"); }), "comma.yaml: the config is empty");
  EXPECT_EQ(error_message([] { parse_run_config("model: {}\n---\ntrain: {}\n", "two.yaml"); }),
            "two.yaml: expected one YAML document, found several");
}

}  // namespace
}  // namespace loom
