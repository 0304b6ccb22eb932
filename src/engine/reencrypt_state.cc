#include "engine/reencrypt_state.h"

#include <algorithm>

#include <openssl/crypto.h>

#include "luks2/digest.h"
#include "luks2/format.h"
#include "luks2/keyslot.h"
#include "luks2/volume.h"

namespace ds::engine {

using luks2::Json;

namespace {
constexpr const char* kRequirement = "online-reencrypt-v2";

bool HasFlag(const Json& seg, const char* flag) {
  auto it = seg.find("flags");
  if (it == seg.end() || !it->is_array()) return false;
  return std::find(it->begin(), it->end(), flag) != it->end();
}

std::optional<std::string> SegmentIdWithFlag(const Json& segs, const char* flag) {
  for (const auto& [k, s] : segs.items())
    if (HasFlag(s, flag)) return k;
  return std::nullopt;
}

std::optional<std::string> ReencryptKeyslotId(const luks2::Metadata& md) {
  for (const auto& [k, ks] : md.json["keyslots"].items())
    if (luks2::StrOr(ks, "type") == "reencrypt") return k;
  return std::nullopt;
}

// A copy of a backup segment describing [start, start+len) of the data (len 0: to the end).
Json Slice(const Json& backup, uint64_t start, uint64_t len) {
  Json s = backup;
  s.erase("flags");
  s["offset"] = luks2::U64Str(*luks2::JsonU64(backup["offset"]) + start);
  s["size"] = len ? Json(luks2::U64Str(len)) : Json("dynamic");
  if (s["type"] == "crypt")
    s["iv_tweak"] = luks2::U64Str(*luks2::JsonU64(backup["iv_tweak"]) + start / 512);
  return s;
}

void Put(Bytes& out, std::string_view s) { out.insert(out.end(), s.begin(), s.end()); }
void PutU64(Bytes& out, uint64_t v) {
  uint8_t b[8];
  PutBe64(b, v);
  out.insert(out.end(), b, b + 8);
}
void PutU32(Bytes& out, uint32_t v) {
  uint8_t b[4];
  PutBe32(b, v);
  out.insert(out.end(), b, b + 4);
}
void SerializeSegment(Bytes& out, const Json& s) {
  Put(out, luks2::StrOr(s, "type"));
  PutU64(out, luks2::JsonU64(s["offset"]).value_or(0));
  if (luks2::StrOr(s, "size") == "dynamic") Put(out, "dynamic");
  else PutU64(out, luks2::JsonU64(s["size"]).value_or(0));
  if (luks2::StrOr(s, "type") == "crypt") {
    PutU64(out, luks2::JsonU64(s["iv_tweak"]).value_or(0));
    Put(out, luks2::StrOr(s, "encryption"));
    PutU32(out, luks2::JsonU32(s["sector_size"]).value_or(0));
  }
}
}  // namespace

const char* ModeName(Mode m) {
  switch (m) {
    case Mode::kEncrypt: return "encrypt";
    case Mode::kDecrypt: return "decrypt";
    case Mode::kReencrypt: return "reencrypt";
  }
  return "?";
}

const char* ResilienceName(Resilience r) {
  switch (r) {
    case Resilience::kNone: return "none";
    case Resilience::kChecksum: return "checksum";
    case Resilience::kJournal: return "journal";
  }
  return "?";
}

Result<Resilience> ParseResilience(const std::string& s) {
  if (s == "checksum") return Resilience::kChecksum;
  if (s == "journal") return Resilience::kJournal;
  if (s == "none") return Resilience::kNone;
  if (s.rfind("datashift", 0) == 0)
    return Unsupported("resilience '" + s + "' (data shift) is not implemented yet; use a detached header");
  return InvalidArgument("--resilience must be checksum, journal or none");
}

uint32_t State::sector_size() const {
  uint32_t a = old_seg.type == "crypt" ? old_seg.sector_size : 512;
  uint32_t b = new_seg.type == "crypt" ? new_seg.sector_size : 512;
  return std::max(a, b);
}

Result<std::optional<State>> ReadState(const luks2::Metadata& md, uint64_t data_device_size) {
  auto ks_id = ReencryptKeyslotId(md);
  if (!ks_id) return std::optional<State>();
  const Json& ks = md.json["keyslots"][*ks_id];
  State st;
  st.keyslot = int(*ParseU64(*ks_id));
  auto reqs = md.requirements();
  if (std::find(reqs.begin(), reqs.end(), kRequirement) == reqs.end())
    return Unsupported("the in-place operation in this header is not in the online-reencrypt-v2 format");
  const std::string mode = luks2::StrOr(ks, "mode");
  st.mode = mode == "encrypt" ? Mode::kEncrypt : mode == "decrypt" ? Mode::kDecrypt : Mode::kReencrypt;
  if (luks2::StrOr(ks, "direction") != "forward")
    return Unsupported("backward in-place operations are not implemented yet");
  const Json& area = ks["area"];
  DS_ASSIGN_OR_RETURN(st.area.type, ParseResilience(luks2::StrOr(area, "type")));
  st.area.offset = *luks2::JsonU64(area["offset"]);
  st.area.size = *luks2::JsonU64(area["size"]);
  if (st.area.type == Resilience::kChecksum) {
    st.area.hash = luks2::StrOr(area, "hash");
    st.area.block = *luks2::JsonU32(area["sector_size"]);
  }
  const Json& segs = md.json["segments"];
  auto prev = SegmentIdWithFlag(segs, "backup-previous");
  auto fin = SegmentIdWithFlag(segs, "backup-final");
  if (!prev || !fin) return Corrupt("the in-place operation lacks its backup segments");
  if (SegmentIdWithFlag(segs, "backup-moved-segment"))
    return Unsupported("in-place operations with a moved segment (data shift) are not implemented yet");
  auto all = luks2::Segments(md);
  for (const auto& s : all) {
    if (std::to_string(s.id) == *prev) st.old_seg = s;
    if (std::to_string(s.id) == *fin) st.new_seg = s;
  }
  if (st.old_seg.offset != st.new_seg.offset)
    return Unsupported("in-place operations that move data are not implemented yet");
  if (auto d = luks2::DigestOfSegment(md, st.old_seg.id); d && st.old_seg.type == "crypt") st.digest_old = d->id;
  if (auto d = luks2::DigestOfSegment(md, st.new_seg.id); d && st.new_seg.type == "crypt") st.digest_new = d->id;
  if (data_device_size < st.new_seg.offset) return Corrupt("the data device is smaller than the data offset");
  st.data_size = (data_device_size - st.new_seg.offset) / st.sector_size() * st.sector_size();
  if (st.new_seg.size) st.data_size = *st.new_seg.size;

  auto is_side = [&](const luks2::SegmentInfo& s, const luks2::SegmentInfo& side, int digest) {
    if (s.type != side.type) return false;
    if (s.type == "linear") return true;
    auto d = luks2::DigestOfSegment(md, s.id);
    return d && d->id == digest && s.cipher == side.cipher && s.sector_size == side.sector_size;
  };
  enum { kNew, kHot, kOld } phase = kNew;
  uint64_t pos = 0;
  for (const auto& s : all) {
    if (s.id == st.old_seg.id || s.id == st.new_seg.id) continue;
    if (s.offset != st.new_seg.offset + pos)
      return Corrupt("segment " + std::to_string(s.id) + " does not continue where the previous one ended");
    DS_ASSIGN_OR_RETURN(uint64_t len, luks2::SegmentBytes(s, data_device_size));
    if (!s.size) len = st.data_size - pos;
    const bool hot = s.has_flag("in-reencryption");
    if (hot) {
      if (phase != kNew || !is_side(s, st.new_seg, st.digest_new))
        return Corrupt("the hotzone segment " + std::to_string(s.id) + " is not where the layout allows");
      phase = kHot;
      st.done = pos;
      st.hotzone_len = len;
    } else if (phase == kNew && is_side(s, st.new_seg, st.digest_new)) {
      st.done = pos + len;
    } else if (is_side(s, st.old_seg, st.digest_old)) {
      if (phase == kNew) st.done = pos;
      phase = kOld;
    } else {
      return Corrupt("segment " + std::to_string(s.id) + " belongs to neither the old nor the new layout");
    }
    pos += len;
  }
  if (pos != st.data_size && !(pos > st.data_size && phase == kOld))
    return Corrupt("the segments cover " + std::to_string(pos) + " bytes, not the " +
                   std::to_string(st.data_size) + " the operation is about");
  return std::optional<State>(st);
}

void SetProgress(luks2::Metadata& md, const State& st, uint64_t done,
                 std::optional<uint64_t> hotzone_len) {
  Json& segs = md.json["segments"];
  // Segment ids move with every rewrite; the backups are found by their flags.
  const Json old_b = segs[*SegmentIdWithFlag(segs, "backup-previous")];
  const Json new_b = segs[*SegmentIdWithFlag(segs, "backup-final")];
  Json out = Json::object();
  std::vector<std::string> new_ids, old_ids;
  int id = 0;
  auto add = [&](Json s, std::vector<std::string>& ids) {
    ids.push_back(std::to_string(id));
    out[std::to_string(id++)] = std::move(s);
  };
  const uint64_t hot = hotzone_len.value_or(0);
  if (done > 0) add(Slice(new_b, 0, done), new_ids);
  if (hot) {
    Json h = Slice(new_b, done, hot);
    h["flags"] = {"in-reencryption"};
    add(h, new_ids);
  }
  if (done + hot < st.data_size) add(Slice(old_b, done + hot, 0), old_ids);
  const std::string prev_id = std::to_string(id);
  out[prev_id] = old_b;
  old_ids.insert(old_ids.begin(), prev_id);
  ++id;
  const std::string fin_id = std::to_string(id);
  out[fin_id] = new_b;
  new_ids.insert(new_ids.begin(), fin_id);
  segs = out;
  for (auto& [k, d] : md.json["digests"].items()) {
    int did = int(*ParseU64(k));
    if (did == st.digest_new) d["segments"] = new_ids;
    else if (did == st.digest_old) d["segments"] = old_ids;
    else d["segments"] = Json::array();
  }
}

void SetFinished(luks2::Metadata& md, const State& st) {
  Json fin = md.json["segments"][*SegmentIdWithFlag(md.json["segments"], "backup-final")];
  fin.erase("flags");
  md.json["segments"] = {{"0", fin}};
  const std::string ks = std::to_string(st.keyslot);
  md.json["keyslots"].erase(ks);
  std::vector<std::string> drop;
  for (auto& [k, d] : md.json["digests"].items()) {
    bool verification = std::find(d["keyslots"].begin(), d["keyslots"].end(), ks) != d["keyslots"].end();
    if (verification) {
      drop.push_back(k);
      continue;
    }
    int did = int(*ParseU64(k));
    d["segments"] = (did == st.digest_new) ? Json::array({"0"}) : Json::array();
  }
  for (auto& k : drop) md.json["digests"].erase(k);
  Json& cfg = md.json["config"];
  if (cfg.contains("requirements") && cfg["requirements"].contains("mandatory")) {
    Json kept = Json::array();
    for (auto& r : cfg["requirements"]["mandatory"])
      if (r != kRequirement) kept.push_back(r);
    if (kept.empty()) cfg["requirements"].erase("mandatory");
    else cfg["requirements"]["mandatory"] = kept;
    if (cfg["requirements"].empty()) cfg.erase("requirements");
  }
}

Bytes VerificationData(const luks2::Metadata& md, const SecureBuffer* old_key,
                       const SecureBuffer* new_key) {
  Bytes out = {'v', '2'};
  if (old_key) out.insert(out.end(), old_key->data(), old_key->data() + old_key->size());
  if (new_key) out.insert(out.end(), new_key->data(), new_key->data() + new_key->size());
  auto ks_id = ReencryptKeyslotId(md);
  if (!ks_id) return {};
  const Json& ks = md.json["keyslots"][*ks_id];
  const Json& area = ks["area"];
  const std::string type = luks2::StrOr(area, "type");
  Put(out, luks2::StrOr(ks, "mode"));
  Put(out, luks2::StrOr(ks, "direction"));
  Put(out, type);
  PutU64(out, luks2::JsonU64(area["offset"]).value_or(0));
  PutU64(out, luks2::JsonU64(area["size"]).value_or(0));
  if (type == "checksum" || type == "datashift-checksum") {
    Put(out, luks2::StrOr(area, "hash"));
    PutU32(out, luks2::JsonU32(area["sector_size"]).value_or(0));
  }
  if (type.rfind("datashift", 0) == 0) PutU64(out, luks2::JsonU64(area["shift_size"]).value_or(0));
  const Json& segs = md.json["segments"];
  for (const char* flag : {"backup-previous", "backup-final", "backup-moved-segment"})
    if (auto id = SegmentIdWithFlag(segs, flag)) SerializeSegment(out, segs[*id]);
  return out;
}

Status CheckVerificationDigest(const luks2::Metadata& md, const State& st,
                               const SecureBuffer* old_key, const SecureBuffer* new_key) {
  auto d = luks2::DigestOfKeyslot(md, st.keyslot);
  if (!d) return Corrupt("the reencryption metadata has no verification digest");
  Bytes data = VerificationData(md, st.digest_old >= 0 ? old_key : nullptr,
                                st.digest_new >= 0 && st.digest_new != st.digest_old ? new_key : nullptr);
  auto ok = luks2::FindDigestHandler(d->type)->Verify(*d, data);
  OPENSSL_cleanse(data.data(), data.size());
  if (!ok.ok()) return ok.status();
  if (!*ok) return Corrupt("the reencryption metadata does not verify against the key (tampered or foreign)");
  return Status::Ok();
}

Status InitEncrypt(luks2::Metadata& md, const SecureBuffer& new_key, Resilience resilience,
                   uint32_t digest_iterations) {
  Json& segs = md.json["segments"];
  Json fin = segs["0"];
  fin["flags"] = {"backup-final"};
  Json prev = {{"type", "linear"}, {"offset", fin["offset"]}, {"size", "dynamic"},
               {"flags", {"backup-previous"}}};
  const uint32_t sector = *luks2::JsonU32(fin["sector_size"]);
  // The reencrypt keyslot takes the rest of the keyslots area after the luks2 keyslots.
  uint64_t area_off = 2 * md.hdr_size;
  for (const auto& k : luks2::Keyslots(md))
    area_off = std::max(area_off, (k.area_offset + k.area_size + 4095) / 4096 * 4096);
  if (area_off + (1u << 20) > md.areas_end())
    return Status(Code::kNoMemory, "no room left in the keyslots area for the reencryption area");
  int id = 0;
  while (md.json["keyslots"].contains(std::to_string(id))) ++id;
  Json area = {{"type", ResilienceName(resilience)},
               {"offset", luks2::U64Str(area_off)},
               {"size", luks2::U64Str(md.areas_end() - area_off)}};
  // Checksums per encryption sector: a write torn at a sector boundary leaves every checksummed
  // block wholly old or wholly new, so recovery can tell which is which.
  if (resilience == Resilience::kChecksum) {
    area["hash"] = "sha256";
    area["sector_size"] = sector;
  }
  md.json["keyslots"][std::to_string(id)] = {{"type", "reencrypt"}, {"key_size", 1},
                                             {"mode", "encrypt"}, {"direction", "forward"},
                                             {"priority", 0}, {"area", area}};
  segs = {{"0", {{"type", "linear"}, {"offset", fin["offset"]}, {"size", "dynamic"}}},
          {"1", prev},
          {"2", fin}};
  md.json["digests"]["0"]["segments"] = {"2"};
  Json& cfg = md.json["config"];
  cfg["requirements"]["mandatory"] = {kRequirement};
  Bytes vd = VerificationData(md, nullptr, &new_key);
  DS_ASSIGN_OR_RETURN(Json digest, luks2::CreatePbkdf2Digest(vd, "sha256", digest_iterations));
  OPENSSL_cleanse(vd.data(), vd.size());
  int did = 0;
  while (md.json["digests"].contains(std::to_string(did))) ++did;
  digest["keyslots"] = {std::to_string(id)};
  md.json["digests"][std::to_string(did)] = digest;
  return Status::Ok();
}

}  // namespace ds::engine
