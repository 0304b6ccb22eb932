// Where passphrases come from: a key file (--key-file, with --keyfile-offset/--keyfile-size, "-"
// for all of stdin), else one line of stdin when it is not a terminal, else a prompt on the
// terminal with echo off. Never from argv or the environment. The result lives in locked memory.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
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
  bool verify = false;        // -y/--verify-passphrase: on a terminal, ask twice
  unsigned tries = 3;         // -T/--tries: passphrases typed at a terminal (cryptsetup's default)
};

// Adds --key-file/-d, --keyfile-offset, --keyfile-size/-l, -y/--verify-passphrase and -T/--tries
// bound to `src`; with prefix "new-" (the second key of keyslot add/change) --new-keyfile (alias
// --new-key-file), --new-keyfile-offset and --new-keyfile-size, as cryptsetup 2.6.1 names them.
void AddKeyOptions(CLI::App& app, KeySource& src, const std::string& prefix = "");

// `verify` (or src.verify): on a terminal, ask twice and require the same answer, else
// kPermissionDenied (cryptsetup's "Passphrases do not match.", exit 2). Off a terminal there is
// nothing to verify against, as in cryptsetup.
Result<SecureBuffer> ReadKey(Env& env, const KeySource& src, const std::string& prompt,
                             bool verify);

// How many passphrases may be tried: src.tries when it is typed at a terminal (no key file, stdin
// a terminal, not from the vault), else 1 (cryptsetup's -T applies to terminals only).
unsigned TriesFor(const KeySource& src, bool from_vault);

// Reads a passphrase with `read` and tries it with `attempt`; a wrong one (kPermissionDenied) typed
// at a terminal is said on `err` and asked again, up to TriesFor() times in all. Any other error
// ends it at once. Like cryptsetup's open/luksAddKey loop around -T.
template <class T>
Result<T> WithTries(std::ostream& err, const KeySource& src, bool from_vault,
                    const std::function<Result<SecureBuffer>()>& read,
                    const std::function<Result<T>(const SecureBuffer&)>& attempt) {
  for (unsigned left = TriesFor(src, from_vault);; --left) {
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, read());
    Result<T> r = attempt(pass);
    if (r.ok() || r.status().code() != Code::kPermissionDenied || left <= 1) return r;
    err << "diskseal: " << r.status().message() << "\n" << std::flush;
  }
}

}  // namespace ds::cli
