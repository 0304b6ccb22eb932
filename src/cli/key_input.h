// Where passphrases come from: a key file (--key-file, with --keyfile-offset/--keyfile-size, "-"
// for all of stdin), else one line of stdin when it is not a terminal, else a prompt on the
// terminal with echo off. Never from argv or the environment. The result lives in locked memory.
#pragma once

#include <cstdint>
#include <string>

#include <CLI/CLI.hpp>

#include "io/block_device.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds::cli {

struct KeySource {
  std::string key_file;
  uint64_t keyfile_offset = 0;
  uint64_t keyfile_size = 0;  // 0: to the end of the file (at most 8 MiB)
};

// Adds --key-file/-d, --keyfile-offset, --keyfile-size bound to `src` (prefix "new-" for the
// second key of keyslot add/change).
void AddKeyOptions(CLI::App& app, KeySource& src, const std::string& prefix = "");

// `verify`: on a terminal, ask twice and require the same answer (new passphrases).
Result<SecureBuffer> ReadKey(Env& env, const KeySource& src, const std::string& prompt,
                             bool verify);

}  // namespace ds::cli
