// Applies /etc/diskseal/diskseal.conf (machine/config_file.h) to the machine commands: each key
// sets the flag of the same name when the command has that flag and it was not given on the
// command line. Flags always win over the file.
#pragma once

#include <CLI/CLI.hpp>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::cli {

// True for the commands that read the configuration file (enable, disable, status, doctor,
// resume, recover): the ones that act on this machine's volumes and its vault. Commands on one
// device or file (format, encrypt, open ...) do exactly what their flags say.
bool ReadsMachineConfig(const std::string& command);

// Adds `--config FILE` to such a command. `path` (owned by the caller, outliving the parse)
// receives the flag's value.
void AddConfigOption(CLI::App& app, std::string& path);

// After parsing: loads `path` (or the default file when `path` is empty; a missing default file
// is no error, a missing named file is) and sets every flag the file names that `app` has and
// the command line did not give. A value the flag refuses is an error naming the file, line and key.
Status ApplyMachineConfig(Env& env, CLI::App& app, const std::string& path);

}  // namespace ds::cli
