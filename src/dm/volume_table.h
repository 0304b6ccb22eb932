// A LUKS2 volume's data segments as a device-mapper table: shared by `diskseal open` and the
// machine workflow (enable), which both activate unlocked volumes through the kernel.
#pragma once

#include <map>
#include <vector>

#include "dm/dm.h"
#include "luks2/volume.h"

namespace ds::dm {

// The regular segments (backup segments skipped) in plaintext order, crypt segments keyed with
// `u.key` (borrowed: the result's spans point into it). kBusy for a header whose in-place operation
// was interrupted (recovery first), kUnsupported for a segment under another key or of a type
// diskseal cannot open.
Result<std::vector<Segment>> VolumeSegments(luks2::Volume& v, const luks2::Volume::Unlocked& u);
// The same for a volume whose segments may be under several keys (an in-place operation in
// progress: done part under the new key, the rest under the old one or plaintext): `keys` maps
// digest id -> key (borrowed). kPermissionDenied for a crypt segment whose key is missing.
Result<std::vector<Segment>> VolumeSegments(luks2::Volume& v, const std::map<int, const SecureBuffer*>& keys);

}  // namespace ds::dm
