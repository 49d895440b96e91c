# The fuzz targets: tests/fuzz/<name>.cc, seeds in tests/fuzz/corpus/<name>/. Included by tests/fuzz/CMakeLists.txt
# (which builds them) and by the main CMakeLists.txt (which registers their `fuzz` ctest entries).
set(LOOM_FUZZ_TARGETS fuzz_config fuzz_safetensors fuzz_token_shard fuzz_idx fuzz_checkpoint_state
                      fuzz_tokenizer_text fuzz_tokenizer_files fuzz_controller)
