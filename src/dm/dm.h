// Kernel activation of a volume through device-mapper (libdevmapper): a dm device /dev/mapper/NAME
// whose table is the volume's data segments in order, each a dm-crypt or a linear target over the
// data device. The dm UUID follows cryptsetup (CRYPT-LUKS2-<uuid without dashes>-<name>) so
// `cryptsetup status NAME` and `cryptsetup close NAME` recognise what diskseal opened, and diskseal
// recognises what cryptsetup opened.
// The host kernels of the development machines have no device-mapper: this part is exercised in
// the QEMU guest (tests/vm). Everything that does not talk to the kernel is tested on the host.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds::dm {

// One piece of the plaintext device. Sizes and offsets in 512-byte sectors, as dm tables count.
struct Segment {
  // kError: every I/O fails (no device). kSplitFlush: reads and writes go to `device` at
  // device_sector, empty flushes straight to the Activation's device (dm-delay with no delay in
  // any of its three classes): the online helper whose reads and writes wait while the device
  // below is suspended, and whose flushes must not (dm_online.h).
  enum class Type { kCrypt, kLinear, kError, kSplitFlush };
  Type type = Type::kCrypt;
  uint64_t sectors = 0;         // length in the plaintext device
  uint64_t device_sector = 0;   // where the segment starts on the data device
  // kCrypt only:
  std::string cipher;           // as dm-crypt spells it: "aes-xts-plain64"
  uint64_t iv_offset = 0;       // LUKS2 iv_tweak (512-byte units)
  uint32_t sector_size = 512;   // encryption sector size, 512..4096
  std::span<const uint8_t> key; // volume key of this segment's digest (borrowed)
  // The device under this segment when not the Activation's (a block device path): the online
  // engine routes its hotzone through a device of its own (online/dm_gate.h).
  std::string device;
};

struct Activation {
  std::string name;             // /dev/mapper/NAME
  std::string luks_uuid;        // the volume's LUKS2 uuid, with dashes
  std::string device;           // data device: a block device path
  std::vector<Segment> segments;  // in plaintext order; starts follow from the lengths
  bool read_only = false;
  std::string dm_uuid;          // when set, used instead of MakeUuid(luks_uuid, name)
  // A helper device of diskseal's own: udev rules are told to leave it alone (no probing, no
  // /dev/disk links), as cryptsetup does for its temporary devices.
  bool private_device = false;
};

// cryptsetup's dm UUID for a LUKS2 mapping: CRYPT-LUKS2-<uuid without dashes>-<name>.
std::string MakeUuid(const std::string& luks_uuid, const std::string& name);

// The parameter string of one target ("<cipher> <hex key> <iv> <maj:min> <offset> [opts]" for
// crypt, "<maj:min> <offset>" for linear, "<maj:min> <offset> 0" three times for split-flush,
// the last one `flush_majmin`'s), in locked memory because it holds the key.
// Devices are given as "major:minor" so the table does not depend on device node names.
Result<SecureBuffer> TargetParams(const Segment& seg, const std::string& device_majmin,
                                  const std::string& flush_majmin = "");

// Checks an Activation without touching the kernel: non-empty name and segments, non-zero
// lengths, a cipher and a sector size dm-crypt accepts for crypt segments, a key when needed.
Status Validate(const Activation& a);

// True when the kernel offers device-mapper (/dev/mapper/control answers a version request).
bool Available();

// Creates /dev/mapper/NAME with the table and waits for its node (udev, or libdevmapper creating
// it where udev does not run). kBusy when NAME exists; kUnsupported without device-mapper.
// The key reaches the kernel as hex in a table marked secure (the kernel wipes its copy of the
// ioctl buffer; libdevmapper wipes its own).
Status Create(const Activation& a);

// Loads `a`'s table as NAME's inactive table (it becomes live at the next Resume). Validates first.
Status Reload(const Activation& a);
// Suspends NAME without flushing queued I/O or freezing the filesystem on it (skip lockfs): it
// waits only for the I/O already in flight below it; new I/O waits until Resume.
Status Suspend(const std::string& name);
// Resumes NAME, making a loaded inactive table live. `private_device` as in Activation.
Status Resume(const std::string& name, bool private_device = false);
// Resumes NAME without waiting for udev's rules to finish with its event, which `cookie` stands
// for until WaitUdev. For a resume made while a device below NAME is suspended: the rules read
// NAME (blkid; LVM's pvscan when NAME holds a physical volume, as root on LVM over an encrypted
// partition does) and wait for that device, so waiting for them before resuming it deadlocks.
// Precondition: the caller calls WaitUdev(cookie) once the device below is resumed (a cookie never
// waited for leaks one SysV semaphore). A cookie still pending is waited for first. On error
// there is nothing left to wait for (cookie empty).
Status ResumeNoWait(const std::string& name, std::optional<uint32_t>& cookie);
// Waits for the udev event of a ResumeNoWait (without udev: makes the nodes libdevmapper queued)
// and empties `cookie`; nothing when it is empty.
void WaitUdev(std::optional<uint32_t>& cookie);

// One target of a live table, without its parameters beyond the device it maps to (a crypt
// table's key is read into locked memory and wiped).
struct TargetInfo {
  uint64_t start = 0, sectors = 0;  // in NAME, 512-byte sectors
  std::string type;                 // "crypt", "linear", "error"
  dev_t device = 0;                 // 0 when the target has none
  uint64_t device_sector = 0;       // where the target starts on `device` (crypt, linear)
  bool operator==(const TargetInfo&) const = default;
};
Result<std::vector<TargetInfo>> LiveTargets(const std::string& name);
// The device fields of one target's parameter string as the kernel reports it ("<maj:min>
// <offset>" for linear, "<cipher> <key> <iv_offset> <maj:min> <offset> ..." for crypt) into `t`
// (`t.type` set by the caller); other types, or fields that do not parse, leave them 0. Reads
// nothing else: the caller wipes a crypt target's key.
void ParseTargetDevice(std::string_view params, TargetInfo& t);

// Sends `message` to NAME (what `dmsetup message NAME 0 MESSAGE` sends) and returns the kernel's
// reply ("" when none). Device-mapper's own messages (its statistics, "@stats_...") answer also
// while NAME is suspended; a target's messages go to the target at sector 0.
Result<std::string> Message(const std::string& name, const std::string& message);

// Removes /dev/mapper/NAME. kBusy when it is open (mounted, held); kNotFound when absent.
Status Remove(const std::string& name);

struct MappingInfo {
  std::string name;
  dev_t dev = 0;             // /dev/mapper/NAME's device number
  std::string uuid;          // dm UUID ("" when none)
  bool live_table = false;   // false: created but never loaded (a crash mid-activation)
  bool suspended = false;
  int32_t open_count = 0;
  bool read_only = false;
  std::vector<dev_t> deps;   // underlying devices
  std::vector<std::string> target_types;  // "crypt", "linear" ...
};

// True for a mapping left unusable by a crash: no live table, or suspended with no table loaded.
bool IsStale(const MappingInfo& m);
// True for a LUKS2 mapping made by diskseal or cryptsetup (UUID CRYPT-LUKS2-...).
bool IsLuks2(const MappingInfo& m);

// The dm UUID prefix of the plain 1:1 linear mapping diskseal's initramfs puts under root at
// every boot ("prepared" mode, packaging/initramfs-tools/scripts/local-top/diskseal), full UUID
// DISKSEAL-LINEAR-<filesystem uuid>-<name>: no encryption, only a table `enable --volume-type OS`
// can later switch online. A dm UUID cannot be changed once set, so the mapping keeps it after
// diskseal switched it to a LUKS2 volume's table (online/dm_online.h says when it is the volume's).
inline constexpr char kPreparedLinearUuidPrefix[] = "DISKSEAL-LINEAR-";
bool IsPreparedLinear(const std::string& dm_uuid);

// nullopt when there is no mapping NAME.
Result<std::optional<MappingInfo>> Find(const std::string& name);
// Every dm device, sorted by name.
Result<std::vector<MappingInfo>> List();
// The mappings whose table uses `dev` (major:minor of a block device).
Result<std::vector<MappingInfo>> Holders(dev_t dev);

}  // namespace ds::dm
