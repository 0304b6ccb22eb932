// Mounting, unmounting and loop devices for enable/disable: the kernel calls (mount(2),
// umount2(2), the loop ioctls), with the errors that matter turned into messages that name who
// is in the way. These act on the running machine only (never below a MachineRoot).
//
// Threading: no state; safe from any thread (the kernel serialises the operations).
#pragma once

#include <string>
#include <vector>

#include "util/status.h"

namespace ds::machine {

// Processes with a file, a working directory or a root under `mountpoint`, as "pid 123 (comm)".
std::vector<std::string> MountHolders(const std::string& mountpoint);

// Unmounts `mountpoint`. kBusy naming the holders (or a mount below it) when the kernel refuses.
Status UnmountFs(const std::string& mountpoint);

// Mounts `source` at `mountpoint`. `vfs_options` are per-mount options as mountinfo shows them
// (rw,nosuid,relatime: turned into MS_* flags); `fs_options` the filesystem's own options from
// fstab (errors=remount-ro); VFS words among them are turned into flags too, "defaults",
// "nofail", "auto"/"noauto", "user"/"nouser", "_netdev" and x-* are dropped (mount(8) options).
Status MountFs(const std::string& source, const std::string& mountpoint, const std::string& fstype,
             const std::string& vfs_options, const std::string& fs_options);

// The source device of what is mounted at `mountpoint` now ("" when nothing is), read from
// /proc/self/mountinfo; the topmost mount when several are stacked.
Result<std::string> MountedSource(const std::string& mountpoint);

// Attaches a free loop device to `file` (read-write, direct I/O off, autoclear off) and returns
// its path; an existing loop device over `file` is returned instead (the step is repeated after a
// crash).
Result<std::string> AttachLoop(const std::string& file);

}  // namespace ds::machine
