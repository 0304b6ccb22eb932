// What is open in userspace: one record per served volume under the run directory
// (/run/diskseal by default), so `list`, `close` and stale-mount cleanup work across processes.
// Layout: RUN/NAME is the served plaintext file (a FUSE mount on a regular file);
// RUN/.state/NAME.json records the daemon (pid + start time), device and volume;
// RUN/.state/NAME.log collects the daemon's stderr.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::fuse {

// Names of open volumes: 1-127 characters of [A-Za-z0-9._+-], not starting with '.' or '-' (the
// same rule serves /dev/mapper names, which the kernel caps at 127).
Status ValidateVolumeName(const std::string& name);

struct Mapping {
  std::string name;
  std::string device;      // canonical path of the data device
  std::string header;      // detached header, or "" when the header is on the device
  std::string uuid;        // LUKS2 uuid of the volume
  std::string file;        // the served plaintext file
  int64_t pid = 0;         // the serving daemon
  uint64_t pid_start = 0;  // the daemon's start time (/proc/PID/stat), guards against pid reuse
  uint64_t size = 0;       // plaintext bytes
  bool read_only = false;
  std::string error;       // set by a daemon whose final flush failed; reported by close
};

// Threading: no internal state beyond the path; concurrent use from several processes is safe for
// distinct names (each record is replaced atomically).
class RunDir {
 public:
  explicit RunDir(Env& env, std::string dir = "/run/diskseal");

  const std::string& dir() const { return dir_; }
  std::string FilePath(const std::string& name) const { return dir_ + "/" + name; }
  std::string StatePath(const std::string& name) const;
  std::string LogPath(const std::string& name) const;

  // Creates RUN and RUN/.state (mode 0700) if needed.
  Status Prepare();
  Status Save(const Mapping& m);
  // nullopt when NAME has no record.
  Result<std::optional<Mapping>> Find(const std::string& name);
  // Every record, sorted by name. Unreadable records are skipped with their name in `bad`.
  Result<std::vector<Mapping>> List(std::vector<std::string>* bad = nullptr);
  // Removes the record (and the log); missing is fine.
  Status Forget(const std::string& name);

  // Active: the recorded daemon is alive (same pid and start time). Otherwise the mapping is
  // stale: a crash or kill -9 left the record and perhaps a dead FUSE mount behind.
  static bool IsAlive(const Mapping& m);
  // Removes what a dead daemon left: detaches its loop devices when unused, lazily unmounts the
  // dead FUSE mount, removes the file and the record. Refuses (kBusy) while the daemon lives.
  Status CleanupStale(const Mapping& m);

 private:
  Env& env_;
  std::string dir_;
};

// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat); 0 if it has
// exited (gone, or a zombie not yet reaped).
uint64_t ProcessStartTime(int64_t pid);

// The run directories of every diskseal view mounted on this machine (FUSE mounts of subtype
// diskseal in /proc/self/mountinfo; a view's mount point is RUN/NAME), sorted, without
// duplicates. So `list` and `close` find views opened with another --run-dir. A stale record
// whose mount is gone too is not found this way.
std::vector<std::string> MountedRunDirs();
// The same from mountinfo text (for tests).
std::vector<std::string> MountedRunDirs(const std::string& mountinfo);

// Loop devices (/dev/loopN) whose backing file is `file`.
std::vector<std::string> LoopDevicesBackedBy(const std::string& file);
// Detaches a loop device unless something holds it (mounted, open): kBusy naming it then.
Status DetachLoop(const std::string& loop_dev, const std::string& what);

}  // namespace ds::fuse
