// Helpers for LUKS2 tests: fast-PBKDF volumes and raw header surgery (rewrite both copies with
// valid checksums after editing the JSON, the way cryptsetup's mangle tests do).
#pragma once

#include <functional>
#include <string>

#include "io/block_device.h"
#include "luks2/header_io.h"
#include "luks2/volume.h"

namespace ds::test {

// Cheap KDF costs so tests do not spend seconds in Argon2.
inline luks2::PbkdfOptions FastPbkdf(const std::string& type = "pbkdf2") {
  luks2::PbkdfOptions p;
  p.type = type;
  p.force_iterations = type == "pbkdf2" ? 1000 : 4;
  p.memory_kib = 64;
  p.parallel = 1;
  return p;
}

inline luks2::FormatOptions FastFormat() {
  luks2::FormatOptions o;
  o.pbkdf = FastPbkdf();
  return o;
}

// Writes `md` as both copies without validating it (seqid unchanged).
inline Status WriteRaw(BlockDevice& dev, const luks2::Metadata& md) {
  DS_ASSIGN_OR_RETURN(Bytes p, luks2::EncodeCopy(md, false));
  DS_ASSIGN_OR_RETURN(Bytes s, luks2::EncodeCopy(md, true));
  DS_RETURN_IF_ERROR(dev.WriteAt(0, p));
  DS_RETURN_IF_ERROR(dev.WriteAt(md.hdr_size, s));
  return dev.Sync();
}

}  // namespace ds::test
