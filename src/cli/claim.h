// The claims a command takes on a volume before it reads a key or writes anything
// (io/device_claim.h; README "Device ownership").
#pragma once

#include <vector>

#include "cli/luks_options.h"
#include "io/device_claim.h"

namespace ds::cli {

// Claims d.device in `mode`, and d.header too when it is given and exists (two commands writing
// one detached header are one owner too). `writes_device`: the command writes the device itself
// (data, or a header at its start), so a read-only device is refused here. The claims are held
// until the returned vector is destroyed; keep it for the whole command.
// `online_ok`: the command can run under the volume's own live mapping (online/dm_online.h), so
// that mapping's hold on the device is not a refusal (the header, detached or at the device's
// start, names the volume).
// With online_ok and `run_dir`: when a live read-write userspace view of this volume (same
// device, same header) serves from run_dir, no claim is taken and none is returned: that daemon
// holds the claim, and the command's operation runs inside it (fuse/online_control.h).
Result<std::vector<DeviceClaim>> ClaimVolume(Env& env, const DeviceArgs& d, ClaimMode mode,
                                             bool writes_device, bool online_ok = false,
                                             const std::string* run_dir = nullptr);

// The live mapping of the volume over d.device whose header is d.header (detached), or the
// device's own when d.header is empty; "" when there is none or no header can be read.
std::string ActiveMappingOf(Env& env, const DeviceArgs& d);

// cryptsetup's own owner: while `cryptsetup reencrypt` works on a volume it holds an flock on
// /run/cryptsetup/LN_LUKS2-reencryption-<UUID> (cryptsetup 2.6.1's reencryption lock), which
// diskseal's claims do not see. kBusy naming that lock while it is held: the header then shows an
// operation in progress (or none yet), not an interrupted one.
Status CheckCryptsetupReencrypt(const luks2::Metadata& md, const std::string& device);

// A block device given as --header (an empty partition or disk, as cryptsetup takes one).
bool IsBlockDevice(const std::string& path);
// Whether header device `header` may receive a new header: true when it holds no signature (all
// zero, or nothing the prober in volume/signature.h knows: cryptsetup uses it then), false when
// it holds a LUKS header (the caller's existing volume); any other signature (a filesystem,
// swap, an LVM PV ...) is refused (kInvalidArgument, naming it) unless `force`.
Result<bool> HeaderDeviceIsNew(Env& env, const std::string& header, bool force);

}  // namespace ds::cli
