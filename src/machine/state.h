// What `enable` and `disable` remember between runs, so that a reboot, a crash or kill -9 at any
// instant is followed by a run that continues exactly where the last one stopped.
//
// Layout under the state directory (/var/lib/diskseal, ADE's /var/lib/azure_disk_encryption_config
// counterpart; mode 0700):
//   lock                    the machine-wide lock (MachineLock), holding "pid command" of the holder
//   volumes/NAME.json       one VolumeRecord per volume, replaced atomically after every step
//   keys/NAME.key           the volume passphrase, mode 0400 (ADE's BEK key file counterpart)
//   headers/NAME.luks2      the detached LUKS2 header
// NAME is the volume's mapping name, which is its LUKS2 UUID (ADE names data mappings by UUID).
//
// Threading: StateDir keeps no state beyond its path; records are replaced atomically, so a status
// reader in another process sees either the previous or the next record, never a mix.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "machine/discovery.h"
#include "util/status.h"

namespace ds::machine {

// The steps of one volume, in order. Enable goes kPlanned..kConfigured; disable goes from
// kConfigured through kDisabling..kPlainMounted to kDisabled. The record says the last step that
// completed, so the next run starts with the one after it; every step is idempotent.
enum class Step {
  kPlanned,       // record written: what the volume was (device, mount point, options, fstab)
  kUnmounted,     // the plaintext filesystem is unmounted (key file written before this)
  kEscrowed,      // header formatted as a temp file; passphrase escrowed and verified (or no vault)
  kHeaderPlaced,  // the header is in place: the device is now "encryption in progress"
  kEncrypting,    // the engine runs; `rate` is updated about once a second
  kEncrypted,     // the whole device is ciphertext
  kOpened,        // the plaintext is open (kernel mapping, or userspace view + loop device)
  kMounted,       // mounted again at the same mount point with the same options
  kConfigured,    // crypttab and fstab name the mapping (backups kept): enable is done
  kDisabling,     // disable started: unmounting the mapping and closing it
  kClosed,        // the mapping is closed
  kDecrypting,    // the engine decrypts in place
  kDecrypted,     // the whole device is plaintext again
  kPlainMounted,  // the original device is mounted at the mount point again
  kDisabled,      // fstab/crypttab restored, key and header removed: disable is done
};
const char* StepName(Step s);
Result<Step> ParseStep(const std::string& s);

// What the running engine last reported; written by the process that runs it so that `status` in
// another process can show speed and time left. Meaningful while `pid` is alive.
struct Rate {
  int64_t pid = 0;
  uint64_t done = 0, total = 0;  // bytes
  double mib_s = 0, eta_s = 0;
  int64_t updated = 0;           // unix seconds
};

struct VolumeRecord {
  std::string name;            // mapping name (= the LUKS2 UUID unless `uuid` is set)
  // The OS volume (`enable --volume-type OS`): mounted at "/", its header on /boot, its mapping
  // activated by the initramfs (packaging/initramfs-tools) and named after ADE's ("osencrypt"),
  // so the LUKS2 UUID is kept apart in `uuid`.
  bool os = false;
  std::string uuid;            // the LUKS2 UUID when it differs from `name`
  // OS volume only: / is an LVM logical volume and `device` the physical volume under it (the
  // initramfs opens it before LVM activates; lvmlocal.conf keeps LVM off the raw device).
  bool lvm = false;
  const std::string& LuksUuid() const { return uuid.empty() ? name : uuid; }
  std::string device;          // the block device holding the data ("/dev/sdb1")
  std::string mountpoint, fstype;
  std::string mount_options;   // per-mount VFS options as mountinfo showed them (rw,relatime)
  std::optional<FstabEntry> fstab;  // the fstab line that mounted the plaintext, if there was one
  std::string header, key_file;
  std::string resilience = "checksum";
  std::string secret_id;       // the escrowed secret version, when a vault was used
  std::string loop;            // userspace: the loop device over the served file, when open
  Step step = Step::kPlanned;
  Rate rate;
  std::string last_error;      // the error that stopped the last run at this volume
  // This volume's place in the run that last acted on it ("data volume 2/3"), so that status
  // numbers it as that run's log did; 0: never run (records written before this field).
  int run_index = 0, run_size = 0;
};

class StateDir {
 public:
  StateDir(Env& env, std::string dir);
  const std::string& dir() const { return dir_; }
  std::string LockPath() const { return dir_ + "/lock"; }
  std::string RecordPath(const std::string& name) const;
  std::string KeyPath(const std::string& name) const;
  std::string HeaderPath(const std::string& name) const;

  // Creates the directory and its subdirectories (mode 0700) if needed.
  Status Prepare();
  // Replaces the record atomically (write temp, fsync, rename, fsync dir).
  Status Save(const VolumeRecord& r);
  // Every record, sorted by mount point. A missing state directory is no records.
  Result<std::vector<VolumeRecord>> List();
  Status Forget(const std::string& name);

 private:
  Env& env_;
  std::string dir_;
};

// The JSON form of a record (docs/json-schemas.md "state record"); exposed for tests.
std::string RecordToJson(const VolumeRecord& r);
Result<VolumeRecord> RecordFromJson(const std::string& text, const std::string& what);

// The machine-wide lock: flock on <state>/lock. One enable/disable runs at a time; the holder
// writes "PID COMMAND" into the file so a waiting or refused run can name it.
// Owns the file descriptor; the lock is released when the object is destroyed (or the process
// dies: the kernel drops flock locks with the last descriptor, so a kill -9 never leaves it held).
class MachineLock {
 public:
  MachineLock(MachineLock&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  MachineLock& operator=(MachineLock&&) = delete;
  MachineLock(const MachineLock&) = delete;
  ~MachineLock();

  // Takes the lock. When another process holds it: with `wait`, `on_wait(holder)` is called once
  // and the call blocks until the lock is free; without, kBusy naming the holder ("pid 123
  // (diskseal enable ...)").
  static Result<MachineLock> Acquire(const std::string& path, const std::string& command, bool wait,
                                     const std::function<void(const std::string&)>& on_wait);
  // "pid N (command)" of the current holder as recorded in the lock file, "" when no process
  // holds the lock (the kernel's /proc/locks is asked; the lock is never tried).
  static std::string Holder(const std::string& path);
  // The locked descriptor, for children that must close it (fuse::StartRequest::close_in_child).
  int fd() const { return fd_; }

 private:
  explicit MachineLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace ds::machine
