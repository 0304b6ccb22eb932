// The binding of a detached LUKS2 header to its data device: a token of type "diskseal-device"
// (tokens of any type not starting with "luks2-" are opaque to cryptsetup, which keeps and dumps
// them; "keyslots": [] binds it to no keyslot) that records what the header can tell about the
// device it belongs to:
//   {"type": "diskseal-device", "keyslots": [], "size": "<bytes>",
//    "ids": ["wwn-0x...", "partuuid:..."],            // bus-independent ids; [] for files/loops
//    "fs": {"type": "ext4", "uuid": "..."}}          // absent: no recognised plaintext
// Recorded when diskseal initialises an operation (encrypt, decrypt, reencrypt) on a detached
// header; checked by every command that uses a detached header with a device:
//   - key-less, before any PBKDF: the size (exact while an operation is in progress, since every
//     offset in the header depends on it; never smaller afterwards) and the ids (refused only when
//     the device has bus-independent ids and none of them is recorded);
//   - after unlock, before any write: the plaintext's filesystem type+UUID read through the
//     header's own segments (a wrong header or device decrypts to noise, in which no signature is
//     found; a region still plaintext shows the other device's own filesystem).
// Headers without the token (cryptsetup's, older diskseal's) are accepted and get one at their
// next operation. Only the token's own keys are written; other tokens are never touched.
//
// Threading: pure functions over their inputs (plus reads of /dev/disk through `env`).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "luks2/metadata.h"
#include "util/secure_buffer.h"
#include "util/status.h"
#include "volume/signature.h"

namespace ds::luks2 { class Volume; }

namespace ds::engine {

inline constexpr const char* kBindingToken = "diskseal-device";

// A recognised signature at the start of some bytes (filesystem, LUKS, swap, LVM PV ...).
struct Signature {
  std::string type;  // "ext4", "xfs", "btrfs", "luks2", "swap", "LVM2_member", "vfat"
  std::string uuid;
  bool operator==(const Signature&) const = default;
};
// Bytes ProbeStart reads: enough for every signature machine/discovery.cc knows (btrfs at 64 KiB).
inline constexpr uint64_t kProbeBytes = volume::kSignatureProbeBytes;
// The signature at the start of `dev` (volume::ProbeSignature over its first kProbeBytes).
Result<std::optional<Signature>> ProbeStart(BlockDevice& dev);

// Bus-independent ids of the device at `path`: /dev/disk/by-id links named wwn-*, nvme-eui.*,
// nvme-uuid.* and /dev/disk/by-partuuid links ("partuuid:<x>") that resolve to it. Empty for a
// regular file, a loop device, or a machine without udev links. `disk_dir` is "/dev/disk" in
// production (tests hand in a tree of their own).
std::vector<std::string> StableIds(Env& env, const std::string& path, const std::string& disk_dir = "/dev/disk");

struct Binding {
  uint64_t size = 0;
  std::vector<std::string> ids;
  std::optional<Signature> fs;
};
// The binding token in `md`, if any (kCorrupt when it is malformed).
Result<std::optional<Binding>> ReadBinding(const luks2::Metadata& md);
// Writes (replaces) the binding token; the token id is kept when it exists.
void WriteBinding(luks2::Metadata& md, const Binding& b);

// Key-less check of `md` (from `header`) against the data device `device` with `size` bytes and
// `ids` now. `in_progress`: an operation is recorded in the header. kWrongDevice naming both when
// the evidence says the header belongs to another device; Ok when there is no token.
Status CheckIdentity(const luks2::Metadata& md, const std::string& header, const std::string& device,
                     uint64_t size, const std::vector<std::string>& ids, bool in_progress);

// What the plaintext start looks like through the header's segments, with the unlocked keys
// (digest id -> key). Where a hotzone is flagged in-reencryption over the probed bytes, both the
// previous and the final segment parameters are tried (it holds either, sector by sector).
struct PlainView {
  std::optional<Signature> sig;
  bool through_cipher = false;  // the bytes were decrypted with the header's key (not a linear segment)
};
Result<std::vector<PlainView>> ProbePlaintext(luks2::Volume& v, const std::map<int, const SecureBuffer*>& keys);

// Checks the recorded fingerprint against the views. Refused (kWrongDevice naming both) when a
// fingerprint is recorded and no view matches, unless a view shows a different filesystem that
// came through the header's cipher (only the right key yields a valid superblock: the filesystem
// was re-made inside the volume). Ok when nothing is recorded.
Status CheckFingerprint(const luks2::Metadata& md, const std::string& header, const std::string& device,
                        const std::vector<PlainView>& views);

// Both checks for a loaded detached volume: the key-less one now. Returns Ok for an attached header.
Status CheckBindingKeyless(Env& env, luks2::Volume& v, const std::string& header);
// After unlock: the fingerprint. Ok for an attached header.
Status CheckBindingUnlocked(luks2::Volume& v, const std::string& header,
                            const std::map<int, const SecureBuffer*>& keys);
// The binding for a detached header whose plaintext (through `keys`) is what it is now: size and
// ids of the data device, and the fingerprint seen now (a matching recorded one is kept when the
// plaintext shows none, e.g. a hotzone in flight).
Result<Binding> CurrentBinding(Env& env, luks2::Volume& v, const std::map<int, const SecureBuffer*>& keys);
// The binding of a plaintext device about to be encrypted (no header yet): `dev` opened from
// `path`, its plaintext being its own bytes.
Result<Binding> PlaintextBinding(Env& env, BlockDevice& dev, const std::string& path);

}  // namespace ds::engine
