// Serving a volume in the background: the CLI forks, the child (the daemon) mounts the plaintext
// file and serves it while holding the key; the parent returns once the file is usable, or with
// the child's error. Closing unmounts (which flushes), waits for the daemon and checks it synced.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "fuse/run_dir.h"
#include "io/block_device.h"
#include "util/status.h"

namespace ds::fuse {

struct StartRequest {
  std::string name;
  std::string device;  // canonical device path, recorded for list and "already open" checks
  std::string header;
  std::string uuid;
  bool read_only = false;
  uint32_t atomic_unit = 4096;  // the volume's sector size
  unsigned threads = 8;
  // Descriptors of the caller the daemon must not keep open (a machine lock the caller holds:
  // a flock shared with a long-lived child would never be released).
  std::vector<int> close_in_child;
  // Set (read-write views): the daemon listens on its control socket and runs the volume's
  // in-place operation itself when asked (fuse/online_control.h). Borrowed; the child's copy.
  Env* env = nullptr;
};

// Forks the daemon that serves `view` at run.FilePath(name). Preconditions: the name is valid and
// free (no record, no file), and the calling process is single-threaded (fork). `view` and what
// it borrows are used only by the child (a copy of this process's memory); the caller destroys
// its copies as usual. The child locks its memory (mlockall on fault) so the key held by the
// cipher never reaches swap, and never returns from this function.
// Returns the record of the running daemon (pid, file) once the file is mounted and recorded.
Result<Mapping> StartDaemon(RunDir& run, BlockDevice* view, const StartRequest& req);

// Closes a userspace mapping: detaches unused loop devices over the file (kBusy if one is
// mounted), unmounts the file (the kernel flushes cached writes to the daemon; kBusy if a program
// holds it open), waits for the daemon to sync and exit, and removes the record. A stale mapping
// (daemon dead) is cleaned up instead. Returns the daemon's final flush error if there was one.
Status StopDaemon(RunDir& run, const Mapping& m);

}  // namespace ds::fuse
