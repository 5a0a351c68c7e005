# AddressSanitizer build of the checkpoint/config parsers (include()d from
# tests/engine/CMakeLists.txt). The parser sources are compiled again, with
# -fsanitize=address, into checkpoint_asan_test; libtorch, Abseil and GoogleTest
# stay uninstrumented (ASan only needs its runtime linked into the executable).
# The engine library is not linked, so nothing else (sentencepiece, the model)
# is pulled in. Leak detection is off: libtorch's and protobuf's static
# registries are intentionally never freed and would be reported as leaks.
if(SINKSCOPE_ASAN)
  get_filename_component(_sinkscope_root "${CMAKE_CURRENT_LIST_DIR}/../.." ABSOLUTE)
  add_executable(checkpoint_asan_test
    ${CMAKE_CURRENT_LIST_DIR}/checkpoint_asan_test.cc
    ${CMAKE_CURRENT_LIST_DIR}/test_util.cc
    ${_sinkscope_root}/common/model_config.cc
    ${_sinkscope_root}/worker/engine/checkpoint_hf.cc
    ${_sinkscope_root}/worker/engine/checkpoint_llama2c.cc
    ${_sinkscope_root}/worker/engine/checkpoint_validate.cc
    ${_sinkscope_root}/worker/engine/checkpoint_gguf.cc
    ${_sinkscope_root}/worker/engine/file_mapping.cc
    ${_sinkscope_root}/common/gguf.cc)
  target_include_directories(checkpoint_asan_test PRIVATE ${_sinkscope_root})
  target_compile_options(checkpoint_asan_test PRIVATE
    -fsanitize=address -fno-omit-frame-pointer -g -O1 -Wno-unused-function)
  target_link_options(checkpoint_asan_test PRIVATE -fsanitize=address)
  target_link_libraries(checkpoint_asan_test PRIVATE
    ${TORCH_LIBRARIES} absl::status absl::statusor absl::strings absl::str_format
    nlohmann_json::nlohmann_json GTest::gtest sinkscope_gtest_main)
  add_test(NAME checkpoint_asan_test COMMAND checkpoint_asan_test)
  set_tests_properties(checkpoint_asan_test PROPERTIES
    ENVIRONMENT "${SINKSCOPE_TEST_ENV};ASAN_OPTIONS=detect_leaks=0:abort_on_error=1"
    TIMEOUT 900)
endif()
