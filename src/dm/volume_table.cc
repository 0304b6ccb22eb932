#include "dm/volume_table.h"

#include <algorithm>

#include "luks2/metadata.h"

namespace ds::dm {

Result<std::vector<Segment>> VolumeSegments(luks2::Volume& v, const luks2::Volume::Unlocked& u) {
  return VolumeSegments(v, {{u.digest, &u.key}});
}

Result<std::vector<Segment>> VolumeSegments(luks2::Volume& v, const std::map<int, const SecureBuffer*>& keys) {
  std::vector<Segment> out;
  const uint64_t dev_size = v.data_device().Size();
  for (const auto& seg : luks2::Segments(v.metadata())) {
    if (std::any_of(seg.flags.begin(), seg.flags.end(),
                    [](const std::string& f) { return f.rfind("backup-", 0) == 0; }))
      continue;
    if (seg.has_flag("in-reencryption"))
      return Busy(v.name() + ": an in-place operation was interrupted here (segment " +
                  std::to_string(seg.id) + " is in-reencryption); run `diskseal resume` first");
    DS_ASSIGN_OR_RETURN(uint64_t bytes, luks2::SegmentBytes(seg, dev_size));
    Segment d;
    d.sectors = bytes / 512;
    d.device_sector = seg.offset / 512;
    if (seg.type == "linear") {
      d.type = Segment::Type::kLinear;
    } else if (seg.type == "crypt") {
      auto digest = luks2::DigestOfSegment(v.metadata(), seg.id);
      auto key = digest ? keys.find(digest->id) : keys.end();
      if (key == keys.end())
        return PermissionDenied(v.name() + ": segment " + std::to_string(seg.id) +
                                " is under a volume key the passphrase does not unlock");
      d.cipher = seg.cipher;
      d.iv_offset = seg.iv_tweak;
      d.sector_size = seg.sector_size;
      d.key = key->second->span();
    } else {
      return Unsupported(v.name() + ": segment " + std::to_string(seg.id) + " has type '" +
                         seg.type + "', which diskseal cannot open");
    }
    out.push_back(std::move(d));
  }
  if (out.empty()) return Corrupt(v.name() + ": the header describes no data segment");
  return out;
}

}  // namespace ds::dm
