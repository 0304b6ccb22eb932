// Running an outside program (e2fsck, resize2fs, update-initramfs) the way a shell would, with its
// output on this process's stderr (the user's terminal or the unit's journal).
//
// Threading: safe from any thread (posix_spawn); blocks until the program exits.
#pragma once

#include <string>
#include <vector>

#include "util/status.h"

namespace ds {

// Runs argv[0] (searched in PATH) with `argv`; its stdout goes to our stderr. Returns its exit
// status (128 + signal when killed). argv holds paths and names only, never a key: other users
// may read it in /proc. An error only when it could not be started or waited for.
Result<int> RunProgram(const std::vector<std::string>& argv);

}  // namespace ds
