// Discovery: what volumes a machine has and what each one is, read from the files the kernel and
// the admin keep (/proc/self/mountinfo, /proc/swaps, /sys/class/block, /etc/fstab, /etc/crypttab)
// plus a look at each device's first bytes (LUKS, filesystem signatures, LVM PV label).
//
// Everything is read below a root directory (`MachineRoot`), "/" in production and a captured
// machine tree in tests (proc/, sys/, etc/, dev/ files copied or written by the test), so every
// doctor check and status rule can be tested against any machine. Device paths in the model are
// the machine's own paths ("/dev/sdb1"); `MachineRoot::Path` maps them under the root for
// reading.
//
// Threading: pure functions over their inputs; no global state.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::machine {

// Where a machine's files are. Not owned: `env` outlives the root.
struct MachineRoot {
  std::string dir = "/";  // "/" for the running machine
  // Where etc/ files (fstab, crypttab) are read and, by enable/disable, written: "" means
  // "<dir>/etc". Lets a test run enable against live mounts without touching the real /etc.
  std::string etc_dir;
  Env* env = nullptr;
  // "/proc/self/mountinfo" -> "<dir>/proc/self/mountinfo"
  std::string Path(const std::string& machine_path) const;
  std::string Etc(const std::string& name) const;  // "fstab" -> "<etc_dir or dir/etc>/fstab"
  bool live() const { return dir == "/" || dir.empty(); }
};

// One line of /proc/self/mountinfo, unescaped (\040 -> space).
struct Mount {
  int id = 0, parent = 0;
  uint32_t major = 0, minor = 0;
  std::string root;         // the path inside the filesystem that is mounted ("/" usually)
  std::string mountpoint;
  std::string options;      // per-mount options (rw,relatime)
  std::string fstype;
  std::string source;       // "/dev/sdb1", "tmpfs", ...
  std::string super_options;
};

struct FstabEntry {
  std::string spec;         // as written: /dev/sdb1, UUID=..., LABEL=...
  std::string file;         // mount point, or "none"/"swap"
  std::string vfstype;
  std::string options;
  int freq = 0, passno = 0;
};

struct CrypttabEntry {
  std::string name, device, key, options;
};

enum class VolumeRole { kOs, kBoot, kData, kSwap, kResource, kOther };
const char* RoleName(VolumeRole r);  // "OS", "Boot", "Data", "Swap", "Resource", "Other"

// A block device (whole disk, partition, loop, dm, md) and what discovery made of it.
struct BlockInfo {
  std::string name;         // sysfs name: "sdb1", "loop0", "dm-0"
  std::string dev;          // "/dev/sdb1" (for dm: "/dev/mapper/<dm name>" when known)
  uint32_t major = 0, minor = 0;
  uint64_t size_bytes = 0;
  bool partition = false;
  bool read_only = false;
  std::string parent;       // for a partition: the disk's sysfs name
  std::vector<std::string> holders;  // sysfs holders/ (dm devices built on it)
  std::vector<std::string> slaves;   // sysfs slaves/ (for dm/md: what it is built on)
  std::string dm_name, dm_uuid;      // for dm-N: dm/name, dm/uuid ("CRYPT-LUKS2-...", "LVM-...")
  // From the device's first bytes: "luks2", "luks1", "ext4", "xfs", "btrfs", "swap",
  // "LVM2_member", "vfat", or "" when nothing was recognised.
  std::string signature;
  std::string fs_uuid, fs_label;
};

// A volume diskseal could act on: a mounted filesystem, a swap area, or an unmounted device with
// a filesystem, with the role ADE would give it.
struct Volume {
  VolumeRole role = VolumeRole::kOther;
  std::string dev;          // "/dev/sdb1"
  std::string mountpoint;   // "" when not mounted
  std::string fstype;
  std::string mount_options;
  std::optional<FstabEntry> fstab;        // the fstab line that mounts it, if any
  std::optional<CrypttabEntry> crypttab;  // when it is (or backs) a crypttab entry
  bool is_luks = false;     // the device itself carries a LUKS header
  bool encrypted = false;   // it is, or sits on, an open LUKS/dm-crypt mapping
  bool lvm_pv = false, lvm_lv = false;
  // Mounted from diskseal's prepared linear mapping (dm::kPreparedLinearUuidPrefix: the 1:1
  // mapping the initramfs puts under root): the one device below it ("/dev/vda2"); else "".
  std::string prepared_from;
  uint64_t size_bytes = 0;
  int block = -1;           // index into Machine::blocks; -1 when sysfs has no entry
};

struct Machine {
  std::vector<Mount> mounts;
  std::vector<FstabEntry> fstab;
  std::vector<CrypttabEntry> crypttab;
  std::vector<BlockInfo> blocks;
  std::vector<std::string> swaps;  // devices or files from /proc/swaps
  std::vector<Volume> volumes;     // OS first, then boot, data (by mount point), swap, others
  const Volume* os() const;
  const Volume* boot() const;
  std::vector<const Volume*> data() const;
};

// Parsers, each tolerant of comments and blank lines and strict about what they keep: a line
// that does not parse is reported as kCorrupt naming the file and line number.
Result<std::vector<Mount>> ParseMountinfo(std::string_view text);
Result<std::vector<FstabEntry>> ParseFstab(std::string_view text);
Result<std::vector<CrypttabEntry>> ParseCrypttab(std::string_view text);

// volume::ProbeSignature (`first_bytes`: up to 68 KiB from the start of a device) into `info`:
// fills `info.signature`, `fs_uuid`, `fs_label`; leaves them empty when nothing matches.
void ProbeSignature(std::span<const uint8_t> first_bytes, BlockInfo& info);

// Reads the whole model under `root`. Missing files (no /etc/crypttab) are empty, not errors.
Result<Machine> Discover(const MachineRoot& root);

// Whether `v` is the device-mapper device named `dm_name` or is built on it (root on an LVM
// logical volume over it): the OS volume runs on its mapping.
bool BuiltOn(const Machine& m, const Volume& v, const std::string& dm_name);
// For a volume on an LVM logical volume: the one device below it that is not device-mapper (the
// physical volume, e.g. "/dev/vda2"), which `enable --volume-type OS` encrypts. kUnsupported
// naming the devices when the LV spans several, or when the stack holds something else (dm-crypt,
// md) between them.
Result<std::string> LvmPhysicalDevice(const Machine& m, const Volume& v);

}  // namespace ds::machine
