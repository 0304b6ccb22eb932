// Reading and writing the two metadata copies of a LUKS2 header.
//
// Reading is strict: both copies are read and checked (binary header, checksum, JSON area
// framing, every rule of Validate()); the valid copy with the higher seqid wins. When the primary
// is unreadable, all nine secondary offsets are tried. A damaged copy is reported in HeaderRead,
// never repaired here: repair is an explicit command. Nothing here writes unless asked to.
//
// Writing follows cryptsetup's protocol per copy (binary header with zero checksum, JSON area,
// binary header with checksum, then fdatasync), primary first, then secondary -- or secondary
// first when it is the broken one -- so that at every instant at least one copy is complete: a
// crash leaves the old or the new header, never neither, even after an earlier crash.
#pragma once

#include <string>

#include "io/block_device.h"
#include "luks2/metadata.h"

namespace ds::luks2 {

struct CopyStatus {
  uint64_t offset = 0;
  bool present = false;  // a LUKS2 magic was found
  bool valid = false;
  uint64_t seqid = 0;
  std::string error;  // why it is not valid
};

struct HeaderRead {
  Metadata md;  // the winning copy
  CopyStatus primary, secondary;
  bool from_secondary = false;
  // A copy is invalid, missing, or older than the other: `repair` would rewrite it.
  bool needs_repair() const {
    return !primary.valid || !secondary.valid || primary.seqid != secondary.seqid;
  }
};

// Reads the header of `dev`. kCorrupt naming both copies' faults when neither is valid; a device
// with no LUKS2 magic at all gets "not a LUKS2 device".
Result<HeaderRead> ReadHeader(BlockDevice& dev);

// Cheap probe: does the device start with a LUKS1 or LUKS2 magic?
Result<bool> HasLuksMagic(BlockDevice& dev);

// Validates `md`, increments its seqid and writes both copies. If the device already holds a
// header with the same UUID, its seqid must equal md.seqid (the one this header was read with),
// otherwise another writer got there first and nothing is written (kBusy).
Status WriteHeader(BlockDevice& dev, Metadata& md);

// Writes one copy of `md` as it is (seqid unchanged); used by repair.
Status WriteCopy(BlockDevice& dev, const Metadata& md, bool secondary);

// Serialises a whole header (both copies, keyslot area excluded) to bytes, as WriteHeader would.
Result<Bytes> EncodeCopy(const Metadata& md, bool secondary);

}  // namespace ds::luks2
