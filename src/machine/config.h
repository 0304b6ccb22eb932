// The lines enable and disable put into /etc/crypttab and /etc/fstab, and the edits themselves.
// Edits touch only the line of the volume concerned and keep every other byte of the file
// (comments, order, spacing); applying the same edit twice gives the same file (steps are
// repeated after a crash). Writes keep a backup of the file as it was before diskseal first
// changed it (fstab.diskseal.bak, crypttab.diskseal.bak) and replace the file atomically.
//
// Threading: pure functions, plus ApplyEtcEdit which does file I/O through the Env it is given.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "io/block_device.h"
#include "machine/discovery.h"
#include "util/status.h"

namespace ds::machine {

// fstab/crypttab escape: space, tab, newline and backslash as \040 \011 \012 \134.
std::string EscapeField(std::string_view s);
std::string UnescapeField(std::string_view s);

// ADE's crypttab shape for a data volume with a detached header:
//   <name> <device> <keyfile> luks,nofail,header=<header>
// `device` must find the data device at boot by itself: with a detached header the device carries
// no LUKS signature, so there is no UUID= to find it by (see StableDeviceSpec).
std::string CrypttabLine(const std::string& name, const std::string& device,
                         const std::string& key_file, const std::string& header);
// The name that finds `dev` ("/dev/sdb1") after a reboot, when device names may change: a
// /dev/disk/by-id link to it (the disk's serial: what survives re-cabling, as ADE's
// /dev/disk/azure/scsi1/lunN links do), else PARTUUID=, else `dev` itself (a loop device has no
// stable name). Links are read below `root`.
std::string StableDeviceSpec(Env& env, const MachineRoot& root, const std::string& dev);
// The same for the initramfs, which resolves names with blkid before udev's by-id rules may have
// run: PARTUUID= first, then StableDeviceSpec's choice.
std::string BootDeviceSpec(Env& env, const MachineRoot& root, const std::string& dev);
std::string FstabLine(const FstabEntry& e);
// The fstab entry mounting the opened mapping at the original mount point: the original line's
// options (or "defaults"), with nofail added so a missing key never stops the boot.
FstabEntry MappingFstabEntry(const std::string& name, const std::string& mountpoint,
                             const std::string& fstype, const std::optional<FstabEntry>& original);

// fstab: replaces the first line whose mount point is `mountpoint` by `line` (or removes it when
// `line` is nullopt) and drops any further line for that mount point; appends when none exists.
std::string SetFstabLine(std::string_view text, const std::string& mountpoint,
                         const std::optional<std::string>& line);
// crypttab: the same keyed by the mapping name (first field).
std::string SetCrypttabLine(std::string_view text, const std::string& name,
                            const std::optional<std::string>& line);

// LVM (root on a logical volume over the OS volume): the raw device under /dev/mapper/osencrypt
// must never be used as a physical volume: until its start is encrypted it shows the same PV as
// the mapping, and LVM activating the root LV on it would let writes bypass the encryption. So
// lvm/lvmlocal.conf (read after lvm.conf by every LVM command, and copied into the initramfs by
// lvm2's hook) gets a block between "# diskseal begin" and "# diskseal end" whose
// devices/global_filter rejects the device's `paths` (each a /dev path; LVM rejects a device when
// any of its names matches a reject pattern). Reject patterns only: an accept pattern would let
// another name of the same device through. Replaces an earlier diskseal block.
std::string WithLvmRejectFilter(std::string_view lvmlocal, const std::vector<std::string>& paths);
// `lvmlocal` without diskseal's block (the text unchanged when it has none).
std::string WithoutLvmRejectFilter(std::string_view lvmlocal);
// Why diskseal cannot add its filter, or "" when it can: an active global_filter of the admin's
// (diskseal would replace it) or a devices file (use_devicesfile = 1: LVM would ignore the
// mapping) in lvm.conf or lvmlocal.conf.
std::string LvmFilterProblem(std::string_view lvm_conf, std::string_view lvmlocal);
// The same for the machine's <etc>/lvm/lvm.conf and lvmlocal.conf (a missing file is empty; one
// that cannot be read is the problem).
std::string MachineLvmFilterProblem(Env& env, const MachineRoot& root);

// Reads <etc>/<file> (missing: empty), writes <etc>/<file>.diskseal.bak once if it does not exist
// yet (the admin's file as it was before diskseal first touched it), applies `edit` and replaces
// the file atomically when the content changed. Mode 0644.
Status ApplyEtcEdit(Env& env, const MachineRoot& root, const std::string& file,
                    const std::function<std::string(std::string_view)>& edit);

}  // namespace ds::machine
