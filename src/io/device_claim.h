// One owner per device (README "Device ownership"). Every diskseal command that writes a
// device's data or header, and every view that serves it, claims the device first; a second
// claimant is refused with kBusy naming the holder, whatever path it used to name the device.
//
// The claim is keyed on the device's identity, not on its path:
//   - a block device: its dev_t (st_rdev), so /dev/loop3, a /dev/disk/by-id link and a copy of the
//     node are one device;
//   - a regular file: st_dev + st_ino;
//   - a loop device with a backing file: that file's identity (LOOP_GET_STATUS64 lo_device and
//     lo_inode), so an image file and the loop device over it are one owner.
// The lock is an flock on <lock dir>/<identity> (runtime state: /run/diskseal/locks, or
// $DISKSEAL_LOCK_DIR), shared for read-only views, exclusive for everything that writes. The kernel
// drops an flock with the last descriptor of its open file, so a killed holder never leaves it
// behind, and a child forked while holding it (the userspace view's daemon) keeps it for its life.
//
// On top of the lock, Acquire refuses a device the kernel itself uses: mounted, swapped on, held by
// a mapping (/sys/class/block/X/holders), or, for a file or a loop device, a file that backs a loop
// device in use. The ground truth is an O_EXCL open of each block device (EBUSY while the kernel
// holds it); mountinfo, /proc/swaps and holders only name who.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "util/status.h"

namespace ds {

enum class ClaimMode {
  kShared,     // read-only views and exports: writers are refused while any lives
  kExclusive,  // commands that write data or a header, read-write views
};

// What the claim is keyed on. Two paths name the same device iff their keys are equal.
struct DeviceIdentity {
  std::string key;          // "blk-8:16" or "file-254:1-123456": the lock file's name
  bool block = false;       // the path is a block device
  dev_t rdev = 0;           // block devices: the device number
  std::string backing;      // a loop device's backing file as the kernel reports it, or ""
};

// Resolves `path` (symlinks followed) to its identity. kNotFound when it does not exist,
// kInvalidArgument when it is neither a regular file nor a block device.
Result<DeviceIdentity> IdentifyDevice(const std::string& path);

struct ClaimOptions {
  ClaimMode mode = ClaimMode::kExclusive;
  // The command writes the device itself (not only a detached header): a read-only device
  // (losetup -r, blockdev --setro, a read-only filesystem or file) is refused here, before any
  // key derivation or header file.
  bool write_device = false;
  // Device-mapper devices (by name) whose hold on the device is expected: the volume's own live
  // mapping while an online operation runs under it (online/dm_online.h). The device is still
  // refused when anything else holds it or it is mounted itself.
  std::vector<std::string> allowed_holders;
};

// A held claim. Move-only; released when the last DeviceClaim of this identity in this process is
// destroyed (several in one process share one lock: a command that claims and then opens a view
// of the same device does not deadlock itself). Threading: Acquire and destruction may run on any
// thread (a process-wide registry under a mutex). Across fork the child keeps the lock until it
// exits or closes every descriptor; Acquire must not run concurrently with fork.
class DeviceClaim {
 public:
  DeviceClaim(DeviceClaim&& o) noexcept : key_(std::move(o.key_)) { o.key_.clear(); }
  DeviceClaim& operator=(DeviceClaim&&) = delete;
  DeviceClaim(const DeviceClaim&) = delete;
  ~DeviceClaim();

  // Claims `path` or returns kBusy ("PATH: in use by diskseal encrypt ... (pid 123)",
  // "PATH: mounted on /mnt", "IMG: backs /dev/loop3, which is mounted on /mnt" ...),
  // kPermissionDenied for a read-only device with write_device, or the error of the lookup.
  // Never blocks. Precondition: no claim of this identity in this process is being upgraded
  // (a shared claim followed by an exclusive one in the same process is refused, kBusy).
  static Result<DeviceClaim> Acquire(const std::string& path, const ClaimOptions& opts);

  // The directory of lock files: $DISKSEAL_LOCK_DIR when set (tests), else /run/diskseal/locks.
  static std::string LockDir();

  const std::string& key() const { return key_; }

 private:
  explicit DeviceClaim(std::string key) : key_(std::move(key)) {}
  std::string key_;
};

// Processes holding an flock on the file with this device and inode, from the kernel's lock table
// (/proc/locks), waiters excluded. A pid may have exited since (flock records the locker).
std::vector<int> FlockHolderPids(dev_t dev, ino_t ino);

// "diskseal encrypt /dev/loop3 --header h1" from /proc/PID/cmdline (arguments joined by spaces,
// cut at `max` characters), "" when the process is gone.
std::string ProcessCommandLine(int pid, size_t max = 160);

// Why the kernel holds `path` (mount point, swap, holder mapping, a loop device over the file),
// or "" when it does not. The same checks as Acquire, without taking any lock.
Result<std::string> KernelUse(const std::string& path, const std::vector<std::string>& allowed_holders = {});

}  // namespace ds
