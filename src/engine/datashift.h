// Putting a new LUKS2 header at the start of a device that holds data (encryption with data
// shift, `encrypt --reduce-device-size`), without a moment at which a power cut loses data or
// leaves a header that lies.
//
// The header image (S = shift bytes: both header copies, keyslots, zeros) overwrites the first S
// bytes of the data, so those are copied first to the moved-segment place the header names
// (device bytes [D-S, D) when the data is the first D-2S bytes). The order of writes:
//   1. the moved copy, and a staging record + the header image at [D-2S, D-S) (free space that
//      the operation's first hotzone is the first to overwrite); sync;
//   2. the front keyslot area [2*hdr_size, S); sync;   3. both header copies [0, 2*hdr_size); sync.
// Before 1 is durable the front is untouched, and a new run starts afresh. After it, the front
// may be anything until 3 is durable; the staging record (with hashes of the copy and the image)
// lets a new run finish 2 and 3 again -- repeatable as often as it is interrupted. Once a header
// copy is readable at the front its keyslot is already durable (2 before 3).
#pragma once

#include <optional>
#include <string>

#include "io/block_device.h"
#include "util/bytes.h"

namespace ds::engine {

// Performs steps 1-3. Preconditions: `image` is the first bytes of a shift-byte header image (a
// LUKS2 header made for data offset `shift` whose moved segment is at dev.Size() - shift; the
// bytes after `image` are zeros), dev.Size() >= 3 * shift, and the first shift bytes of `dev`
// are still the original data (no LUKS header there). Memory: a few MiB, whatever the shift.
Status PlaceShiftHeader(BlockDevice& dev, std::span<const uint8_t> image, uint64_t shift);

// Copies [from_off, +len) of `from` to [to_off, +len) of `to` through a small buffer; no sync.
// The ranges must not overlap when from and to are the same device.
Status CopyRange(BlockDevice& from, uint64_t from_off, BlockDevice& to, uint64_t to_off, uint64_t len);

enum class ShiftStart {
  kHeader,    // a LUKS2 header is readable at the start (placed, or cryptsetup's): resume it
  kRestored,  // an interrupted placement was completed from the staging record: resume it
  kNothing,   // neither: the front holds the original data, a fresh start is safe
};
// What a new run of `encrypt --reduce-device-size 2*shift` finds, completing an interrupted
// placement when there was one.
Result<ShiftStart> RecoverShiftHeader(BlockDevice& dev, uint64_t shift);

// Decryption with data shift (engine/reencrypt_state.h): copies the ciphertext of the data's first
// `shift` bytes from device [shift, 2*shift) to [0, shift), where the exported header's moved
// segment says it is, and syncs. Preconditions: the header that says so is durable but not yet
// where anyone looks for it (a new run redoes this copy), and no hotzone has run (the source is
// still intact). Repeatable: the source is never written.
Status CopyMovedSegmentToFront(BlockDevice& dev, uint64_t shift);

// A filesystem found at the start of a device, with the bytes it claims.
struct FilesystemExtent {
  std::string type;  // "ext2/3/4" family as "ext4" etc., "xfs", "btrfs"
  uint64_t size = 0;
};
// Reads the ext2/3/4, xfs and btrfs superblocks; nullopt when none of them is there.
Result<std::optional<FilesystemExtent>> ProbeFilesystem(BlockDevice& dev);

}  // namespace ds::engine
