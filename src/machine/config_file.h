// /etc/diskseal/diskseal.conf: the machine's defaults for the commands that act on the machine
// (vault URL, token file, CA, KEK, header and state directories), so that
// `diskseal enable --volume-type Data` needs no flags on a configured machine. A flag given on the
// command line always wins over the file (the CLI applies the file only to flags not given).
//
// Format: one `key = value` per line; blank lines and lines starting with `#` are ignored; the
// value is the rest of the line with surrounding blanks removed (no quoting, no inline comments:
// a path may contain `#`). Every key is the long name of the flag it sets, without `--`.
// Strict: an unknown key, a line without `=`, an empty value, a key given twice, a relative path
// or a vault URL that is not https:// is an error naming the file, the line and the key.
//
// Threading: pure functions, plus LoadMachineConfig which reads through the Env it is given.
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::machine {

inline constexpr char kDefaultConfigPath[] = "/etc/diskseal/diskseal.conf";

// One key the file may set: its name (= the flag's long name) and what it means.
struct ConfigKey {
  const char* name;
  const char* help;
};
std::span<const ConfigKey> ConfigKeys();

struct ConfigEntry {
  std::string key, value;
  int line = 0;  // 1-based line in the file, for error messages
};

struct MachineConfig {
  std::string path;                  // the file it was read from (for messages)
  std::vector<ConfigEntry> entries;  // in file order, each key at most once
  const ConfigEntry* Find(std::string_view key) const;
};

// Parses the text of a configuration file; `path` only names it in errors
// ("/etc/diskseal/diskseal.conf:7: unknown key 'vualt' (did you mean 'vault'?)").
Result<MachineConfig> ParseMachineConfig(std::string_view text, const std::string& path);

// Reads and parses `path`. A missing file is nullopt when `required` is false (the default file
// on an unconfigured machine) and kNotFound when it is true (--config FILE).
Result<std::optional<MachineConfig>> LoadMachineConfig(Env& env, const std::string& path, bool required);

}  // namespace ds::machine
