#include "luks2/metadata.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>

#include "luks2/digest.h"
#include "luks2/format.h"
#include "luks2/keyslot.h"
#include "luks2/token.h"

namespace ds::luks2 {

std::optional<uint64_t> JsonU64(const Json& j) {
  if (!j.is_string()) return std::nullopt;
  return ParseU64(j.get_ref<const std::string&>());
}

std::optional<uint32_t> JsonU32(const Json& j) {
  if (j.is_number_unsigned()) {
    uint64_t v = j.get<uint64_t>();
    if (v <= UINT32_MAX) return uint32_t(v);
  } else if (j.is_number_integer()) {
    int64_t v = j.get<int64_t>();
    if (v >= 0 && v <= int64_t(UINT32_MAX)) return uint32_t(v);
  }
  return std::nullopt;
}

std::string SerializeJson(const Json& j) {
  // nlohmann never escapes '/', matching JSON_C_TO_STRING_NOSLASHESCAPE. Invalid UTF-8 in a
  // string is replaced rather than throwing: such a header was already accepted by the parser.
  return j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

uint64_t Metadata::keyslots_size() const {
  auto c = json.find("config");
  if (c == json.end() || !c->is_object()) return 0;
  auto k = c->find("keyslots_size");
  if (k == c->end()) return 0;
  return JsonU64(*k).value_or(0);
}

std::vector<std::string> Metadata::requirements() const {
  std::vector<std::string> out;
  auto it = json.find("config");
  if (it == json.end()) return out;
  auto req = it->find("requirements");
  if (req == it->end() || !req->is_object()) return out;
  auto mand = req->find("mandatory");
  if (mand == req->end() || !mand->is_array()) return out;
  for (const auto& r : *mand)
    if (r.is_string()) out.push_back(r.get<std::string>());
  return out;
}

bool SegmentInfo::has_flag(const std::string& f) const {
  return std::find(flags.begin(), flags.end(), f) != flags.end();
}

namespace {

std::vector<int> IdArray(const Json& arr) {
  std::vector<int> out;
  for (const auto& v : arr) out.push_back(int(*ParseU64(v.get<std::string>())));
  return out;
}

Bytes B64(const Json& j) {
  auto b = Base64Decode(j.get<std::string>());
  return b ? *b : Bytes{};
}

uint32_t U32Or0(const Json& obj, const char* key) {
  if (!obj.is_object()) return 0;
  auto it = obj.find(key);
  return it == obj.end() ? 0 : JsonU32(*it).value_or(0);
}

KeyslotInfo ParseKeyslot(int id, const Json& k) {
  KeyslotInfo ks;
  ks.id = id;
  ks.type = k["type"].get<std::string>();
  ks.key_size = *JsonU32(k["key_size"]);
  // cryptsetup loads any priority; one that is not 0, 1 or 2 counts as normal (none given).
  if (k.contains("priority")) {
    auto p = JsonU32(k["priority"]);
    if (p && *p <= 2) ks.priority = int(*p);
  }
  const Json& area = k["area"];
  ks.area_type = StrOr(area, "type");
  ks.area_offset = *JsonU64(area["offset"]);
  ks.area_size = *JsonU64(area["size"]);
  ks.area_cipher = StrOr(area, "encryption");
  ks.area_key_size = U32Or0(area, "key_size");
  if (id >= kMaxKeyslots) {
    ks.unusable = "keyslot " + std::to_string(id) + ": the id is past the 32 keyslots LUKS2 allows";
  } else if (const KeyslotHandler* h = FindKeyslotHandler(ks.type)) {
    Status usable = h->Usable(k, std::to_string(id));
    if (!usable.ok()) ks.unusable = usable.message();
  }
  if (ks.type == "luks2") {
    // Read defensively: an unusable slot may hold anything Validate() lets through.
    const Json& kdf = k["kdf"];
    ks.kdf.type = StrOr(kdf, "type");
    auto salt = Base64Decode(StrOr(kdf, "salt"));
    if (salt) ks.kdf.salt = *salt;
    if (ks.kdf.type == "pbkdf2") {
      ks.kdf.hash = StrOr(kdf, "hash");
      ks.kdf.iterations = U32Or0(kdf, "iterations");
    } else {
      ks.kdf.time = U32Or0(kdf, "time");
      ks.kdf.memory_kib = U32Or0(kdf, "memory");
      ks.kdf.cpus = U32Or0(kdf, "cpus");
    }
    ks.af_hash = StrOr(k["af"], "hash");
    ks.af_stripes = U32Or0(k["af"], "stripes");
  }
  return ks;
}

SegmentInfo ParseSegment(int id, const Json& s) {
  SegmentInfo seg;
  seg.id = id;
  seg.type = s["type"].get<std::string>();
  seg.offset = *JsonU64(s["offset"]);
  if (s["size"].get<std::string>() != "dynamic") seg.size = *JsonU64(s["size"]);
  if (s.contains("flags"))
    for (const auto& f : s["flags"]) seg.flags.push_back(f.get<std::string>());
  if (seg.type == "crypt") {
    seg.iv_tweak = *JsonU64(s["iv_tweak"]);
    seg.cipher = s["encryption"].get<std::string>();
    seg.sector_size = *JsonU32(s["sector_size"]);
  }
  return seg;
}

template <class T, class F>
std::vector<T> ParseSection(const Json& section, F parse) {
  std::vector<T> out;
  for (const auto& [k, v] : section.items()) out.push_back(parse(int(*ParseU64(k)), v));
  std::sort(out.begin(), out.end(), [](const T& a, const T& b) { return a.id < b.id; });
  return out;
}

}  // namespace

std::vector<KeyslotInfo> Keyslots(const Metadata& md) {
  return ParseSection<KeyslotInfo>(md.json["keyslots"], ParseKeyslot);
}
std::vector<SegmentInfo> Segments(const Metadata& md) {
  return ParseSection<SegmentInfo>(md.json["segments"], ParseSegment);
}
std::vector<DigestInfo> Digests(const Metadata& md) {
  return ParseSection<DigestInfo>(md.json["digests"], [](int id, const Json& d) {
    DigestInfo di;
    di.id = id;
    di.type = d["type"].get<std::string>();
    di.keyslots = IdArray(d["keyslots"]);
    di.segments = IdArray(d["segments"]);
    const DigestHandler* h = FindDigestHandler(di.type);
    Status usable = h ? h->Usable(d, std::to_string(id))
                      : Unsupported("digest " + std::to_string(id) + ": type '" + di.type + "' is not supported");
    if (!usable.ok()) {
      di.unusable = usable.message();
      di.hash = StrOr(d, "hash");
      di.iterations = U32Or0(d, "iterations");
      return di;
    }
    if (di.type == "pbkdf2") {
      di.hash = d["hash"].get<std::string>();
      di.iterations = *JsonU32(d["iterations"]);
      di.salt = B64(d["salt"]);
      di.digest = B64(d["digest"]);
    }
    return di;
  });
}
std::vector<TokenInfo> Tokens(const Metadata& md) {
  return ParseSection<TokenInfo>(md.json["tokens"], [](int id, const Json& t) {
    return TokenInfo{id, t["type"].get<std::string>(), IdArray(t["keyslots"]), t};
  });
}

std::optional<KeyslotInfo> FindKeyslot(const Metadata& md, int id) {
  auto it = md.json["keyslots"].find(std::to_string(id));
  if (it == md.json["keyslots"].end()) return std::nullopt;
  return ParseKeyslot(id, *it);
}

std::optional<DigestInfo> DigestOfKeyslot(const Metadata& md, int keyslot) {
  for (auto& d : Digests(md))
    if (std::find(d.keyslots.begin(), d.keyslots.end(), keyslot) != d.keyslots.end()) return d;
  return std::nullopt;
}

std::optional<DigestInfo> DigestOfSegment(const Metadata& md, int segment) {
  for (auto& d : Digests(md))
    if (std::find(d.segments.begin(), d.segments.end(), segment) != d.segments.end()) return d;
  return std::nullopt;
}

// ---- validation ---------------------------------------------------------------------------------

namespace {

Status Rule(const std::string& where, const std::string& rule) { return Corrupt(where + ": " + rule); }

bool Numbered(const std::string& key) {
  return !key.empty() && key.size() <= 20 &&
         std::all_of(key.begin(), key.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
         ParseU64(key).has_value();
}

Status Need(const Json& obj, const char* field, Json::value_t type, const std::string& where) {
  auto it = obj.find(field);
  bool ok = it != obj.end();
  if (ok) {
    switch (type) {
      case Json::value_t::string: ok = it->is_string(); break;
      case Json::value_t::object: ok = it->is_object(); break;
      case Json::value_t::array: ok = it->is_array(); break;
      case Json::value_t::number_integer: ok = it->is_number_integer(); break;
      default: ok = false;
    }
  }
  if (!ok) {
    const char* tn = type == Json::value_t::string   ? "string"
                     : type == Json::value_t::object ? "object"
                     : type == Json::value_t::array  ? "array"
                                                     : "integer";
    return Rule(where, std::string("\"") + field + "\" must be present and a JSON " + tn);
  }
  return Status::Ok();
}

// A non-empty string: cryptsetup refuses an empty type, cipher, hash or salt at load.
Status NeedNonEmpty(const Json& obj, const char* field, const std::string& where) {
  DS_RETURN_IF_ERROR(Need(obj, field, Json::value_t::string, where));
  if (obj[field].get_ref<const std::string&>().empty())
    return Rule(where, std::string("\"") + field + "\" must not be empty");
  return Status::Ok();
}

Status NeedU64String(const Json& obj, const char* field, const std::string& where,
                     uint64_t* out = nullptr) {
  DS_RETURN_IF_ERROR(Need(obj, field, Json::value_t::string, where));
  auto v = JsonU64(obj[field]);
  if (!v) return Rule(where, std::string("\"") + field + "\" must be a decimal u64 string");
  if (out) *out = *v;
  return Status::Ok();
}

Status CheckIdArray(const Json& arr, const Json& section, const std::string& where,
                    const char* what) {
  // A reference listed twice is harmless (cryptsetup loads it); only its target must exist.
  for (const auto& v : arr) {
    if (!v.is_string() || !Numbered(v.get<std::string>()))
      return Rule(where, std::string(what) + " references must be decimal strings");
    if (!section.contains(v.get<std::string>()))
      return Rule(where, std::string("references ") + what + " " + v.get<std::string>() +
                             ", which does not exist");
  }
  return Status::Ok();
}

Status CheckSectionKeys(const Json& section, const char* name, int max) {
  for (const auto& [k, v] : section.items()) {
    if (!Numbered(k)) return Rule(std::string(name) + " \"" + k + "\"", "object keys must be decimal numbers");
    if (*ParseU64(k) >= uint64_t(max))
      return Rule(std::string(name) + " " + k, "id is out of range (at most " + std::to_string(max - 1) + ")");
    if (!v.is_object()) return Rule(std::string(name) + " " + k, "must be a JSON object");
  }
  return Status::Ok();
}

Status ValidateConfig(const Metadata& md) {
  const Json& c = md.json["config"];
  uint64_t json_size = 0, keyslots_size = 0;
  DS_RETURN_IF_ERROR(NeedU64String(c, "json_size", "config", &json_size));
  DS_RETURN_IF_ERROR(NeedU64String(c, "keyslots_size", "config", &keyslots_size));
  if (json_size != md.json_area_size())
    return Rule("config", "json_size " + std::to_string(json_size) +
                              " disagrees with the binary header's JSON area (" +
                              std::to_string(md.json_area_size()) + ")");
  if (keyslots_size == 0 || keyslots_size % kKeyslotsAlign || keyslots_size > kMaxKeyslotsSize)
    return Rule("config", "keyslots_size " + std::to_string(keyslots_size) +
                              " must be positive, 4096-aligned and at most 128 MiB");
  if (c.contains("flags")) {
    DS_RETURN_IF_ERROR(Need(c, "flags", Json::value_t::array, "config"));
    for (const auto& f : c["flags"])
      if (!f.is_string()) return Rule("config", "flags must be strings");
  }
  if (c.contains("requirements")) {
    DS_RETURN_IF_ERROR(Need(c, "requirements", Json::value_t::object, "config"));
    const Json& r = c["requirements"];
    if (r.contains("mandatory")) {
      DS_RETURN_IF_ERROR(Need(r, "mandatory", Json::value_t::array, "config.requirements"));
      for (const auto& f : r["mandatory"])
        if (!f.is_string()) return Rule("config.requirements", "mandatory must hold strings");
    }
  }
  return Status::Ok();
}

Status ValidateSegments(const Metadata& md) {
  const Json& segs = md.json["segments"];
  if (segs.empty()) return Rule("segments", "at least one segment is required");
  DS_RETURN_IF_ERROR(CheckSectionKeys(segs, "segment", kMaxSegments));
  std::vector<std::pair<uint64_t, const Json*>> regular;
  for (const auto& [k, s] : segs.items()) {
    const std::string where = "segment " + k;
    DS_RETURN_IF_ERROR(NeedNonEmpty(s, "type", where));
    uint64_t offset = 0, size = 0;
    DS_RETURN_IF_ERROR(NeedU64String(s, "offset", where, &offset));
    DS_RETURN_IF_ERROR(Need(s, "size", Json::value_t::string, where));
    bool dynamic = s["size"].get<std::string>() == "dynamic";
    if (!dynamic) {
      DS_RETURN_IF_ERROR(NeedU64String(s, "size", where, &size));
      if (size == 0) return Rule(where, "size must be \"dynamic\" or positive");
    }
    if (offset % 512 || size % 512) return Rule(where, "offset and size must be multiples of 512");
    bool backup = false;
    if (s.contains("flags")) {
      DS_RETURN_IF_ERROR(Need(s, "flags", Json::value_t::array, where));
      for (const auto& f : s["flags"]) {
        if (!f.is_string()) return Rule(where, "flags must be strings");
        if (f.get<std::string>().rfind("backup-", 0) == 0) backup = true;
      }
    }
    if (s["type"] == "crypt") {
      DS_RETURN_IF_ERROR(NeedU64String(s, "iv_tweak", where));
      DS_RETURN_IF_ERROR(NeedNonEmpty(s, "encryption", where));
      DS_RETURN_IF_ERROR(Need(s, "sector_size", Json::value_t::number_integer, where));
      auto ss = JsonU32(s["sector_size"]);
      if (!ss || *ss < 512 || *ss > 4096 || (*ss & (*ss - 1)))
        return Rule(where, "sector_size must be a power of 2 from 512 to 4096");
      if (size % *ss) return Rule(where, "size must be a multiple of sector_size");
      if (s.contains("integrity")) {
        DS_RETURN_IF_ERROR(Need(s, "integrity", Json::value_t::object, where));
        for (const char* f : {"type", "journal_encryption", "journal_integrity"})
          DS_RETURN_IF_ERROR(NeedNonEmpty(s["integrity"], f, where + " integrity"));
      }
      bool has_digest = false;
      for (const auto& [dk, d] : md.json["digests"].items())
        for (const auto& ref : d["segments"])
          if (ref == k) has_digest = true;
      if (!has_digest) return Rule(where, "a crypt segment must be referenced by a digest");
    }
    if (!backup) regular.emplace_back(*ParseU64(k), &s);
  }
  std::sort(regular.begin(), regular.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < regular.size(); ++i) {
    if (regular[i].first != i)
      return Rule("segments", "regular segments must be numbered 0.." +
                                  std::to_string(regular.size() - 1) + " without gaps");
    if (i + 1 < regular.size() && (*regular[i].second)["size"] == "dynamic")
      return Rule("segment " + std::to_string(i), "only the last segment may have size \"dynamic\"");
  }
  if (regular.empty()) return Rule("segments", "there is no regular segment (only backup segments)");
  // Backup segments follow the regular ones, and all ids together are 0..count-1: an in-place
  // operation's layout with a hole in it is not one any writer made.
  for (size_t i = 0; i < segs.size(); ++i)
    if (!segs.contains(std::to_string(i)))
      return Rule("segments", "segment ids must be 0.." + std::to_string(segs.size() - 1) +
                                  " without gaps (" + std::to_string(i) + " is missing)");
  // Regular segments are the plaintext laid end to end: no two may cover the same bytes.
  for (size_t i = 0; i < regular.size(); ++i) {
    for (size_t j = 0; j < regular.size(); ++j) {
      if (i == j) continue;
      const Json& a = *regular[i].second;
      const Json& b = *regular[j].second;
      const uint64_t ao = *JsonU64(a["offset"]), bo = *JsonU64(b["offset"]);
      const bool b_dynamic = b["size"] == "dynamic";
      if (ao >= bo && (b_dynamic || ao - bo < *JsonU64(b["size"])))
        return Rule("segment " + std::to_string(i), "overlaps segment " + std::to_string(j) + " on the device");
    }
  }
  return Status::Ok();
}

Status ValidateKeyslotsAndAreas(const Metadata& md) {
  const Json& kss = md.json["keyslots"];
  // Keyslot ids past 31 load (as in cryptsetup); such a slot is marked unusable when parsed.
  DS_RETURN_IF_ERROR(CheckSectionKeys(kss, "keyslot", INT32_MAX));
  const uint64_t begin = 2 * md.hdr_size, end = md.areas_end();
  struct Area { std::string id; uint64_t off, len; };
  std::vector<Area> areas;
  int reencrypt_slots = 0;
  for (const auto& [k, ks] : kss.items()) {
    const std::string where = "keyslot " + k;
    DS_RETURN_IF_ERROR(NeedNonEmpty(ks, "type", where));
    DS_RETURN_IF_ERROR(Need(ks, "key_size", Json::value_t::number_integer, where));
    if (!JsonU32(ks["key_size"])) return Rule(where, "key_size must fit in 32 bits");
    DS_RETURN_IF_ERROR(Need(ks, "area", Json::value_t::object, where));
    uint64_t off = 0, len = 0;
    DS_RETURN_IF_ERROR(NeedU64String(ks["area"], "offset", where + " area", &off));
    DS_RETURN_IF_ERROR(NeedU64String(ks["area"], "size", where + " area", &len));
    if (off < begin)
      return Rule(where, "area offset " + std::to_string(off) +
                             " lies inside the metadata copies (must be >= " + std::to_string(begin) + ")");
    if (len == 0) return Rule(where, "area size must be positive");
    if (len > end || off > end - len)
      return Rule(where, "area [" + std::to_string(off) + ", " + std::to_string(off + len) +
                             ") runs past the keyslots area (ends at " + std::to_string(end) + ")");
    for (const auto& a : areas)
      if (off < a.off + a.len && a.off < off + len)
        return Rule(where, "area [" + std::to_string(off) + ", " + std::to_string(off + len) +
                               ") overlaps keyslot " + a.id + "'s area");
    areas.push_back({k, off, len});
    const std::string type = ks["type"].get<std::string>();
    if (type == "reencrypt") ++reencrypt_slots;
    if (const KeyslotHandler* h = FindKeyslotHandler(type)) DS_RETURN_IF_ERROR(h->Validate(ks, k));
    int digests = 0;
    for (const auto& [dk, d] : md.json["digests"].items())
      for (const auto& ref : d["keyslots"])
        if (ref == k) ++digests;
    if (digests > 1) return Rule(where, "is referenced by more than one digest");
    if (type == "luks2" && digests == 0) return Rule(where, "has no digest");
  }
  if (reencrypt_slots > 1) return Rule("keyslots", "at most one reencrypt keyslot may exist");
  if (reencrypt_slots == 1) {
    // An operation in progress keeps the layouts before and after it as backup segments.
    for (const char* flag : {"backup-previous", "backup-final"}) {
      bool found = false;
      for (const auto& [sk, seg] : md.json["segments"].items())
        if (seg.contains("flags"))
          for (const auto& f : seg["flags"])
            if (f == flag) found = true;
      if (!found) return Rule("segments", std::string("the reencrypt keyslot needs a segment flagged ") + flag);
    }
  }
  return Status::Ok();
}

Status ValidateDigests(const Metadata& md) {
  const Json& ds = md.json["digests"];
  // Digest and token ids past 31 are loaded by cryptsetup (nothing addresses them by number);
  // the bound only keeps ids within an int.
  DS_RETURN_IF_ERROR(CheckSectionKeys(ds, "digest", INT32_MAX));
  if (ds.size() > size_t(kMaxDigests)) return Rule("digests", "at most 8 digests are allowed");
  for (const auto& [k, d] : ds.items()) {
    const std::string where = "digest " + k;
    DS_RETURN_IF_ERROR(NeedNonEmpty(d, "type", where));
    DS_RETURN_IF_ERROR(Need(d, "keyslots", Json::value_t::array, where));
    DS_RETURN_IF_ERROR(Need(d, "segments", Json::value_t::array, where));
    DS_RETURN_IF_ERROR(CheckIdArray(d["keyslots"], md.json["keyslots"], where, "keyslot"));
    DS_RETURN_IF_ERROR(CheckIdArray(d["segments"], md.json["segments"], where, "segment"));
  }
  return Status::Ok();
}

Status ValidateTokens(const Metadata& md) {
  const Json& ts = md.json["tokens"];
  DS_RETURN_IF_ERROR(CheckSectionKeys(ts, "token", INT32_MAX));
  for (const auto& [k, t] : ts.items()) {
    const std::string where = "token " + k;
    DS_RETURN_IF_ERROR(NeedNonEmpty(t, "type", where));
    DS_RETURN_IF_ERROR(Need(t, "keyslots", Json::value_t::array, where));
    DS_RETURN_IF_ERROR(CheckIdArray(t["keyslots"], md.json["keyslots"], where, "keyslot"));
    // A built-in token type's own fields are checked on import only: cryptsetup loads a header
    // whatever they hold, and diskseal never reads them.
  }
  return Status::Ok();
}

}  // namespace

Status Validate(const Metadata& md) {
  if (!IsValidMetadataSize(md.hdr_size)) return Corrupt("hdr_size is not an allowed metadata size");
  const Json& j = md.json;
  if (!j.is_object()) return Rule("JSON area", "the top level must be an object");
  for (const char* s : {"keyslots", "tokens", "segments", "digests", "config"})
    DS_RETURN_IF_ERROR(Need(j, s, Json::value_t::object, "JSON area"));
  DS_RETURN_IF_ERROR(ValidateConfig(md));
  DS_RETURN_IF_ERROR(ValidateTokens(md));
  DS_RETURN_IF_ERROR(ValidateDigests(md));
  DS_RETURN_IF_ERROR(ValidateSegments(md));
  DS_RETURN_IF_ERROR(ValidateKeyslotsAndAreas(md));
  // The data must lie past the metadata and keyslots, judged as cryptsetup does by the lowest
  // regular segment offset (crypt or linear); 0 means a detached header and nothing to check.
  uint64_t first = UINT64_MAX;
  std::string first_id;
  for (const auto& [k, s] : j["segments"].items()) {
    // Backup segments describe where data was or will be (a reencryption's old layout may start
    // inside today's keyslots area); cryptsetup judges the regular segments only.
    bool backup = false;
    if (s.contains("flags"))
      for (const auto& f : s["flags"])
        if (f.get<std::string>().rfind("backup-", 0) == 0) backup = true;
    if (backup) continue;
    uint64_t off = *JsonU64(s["offset"]);
    if (off < first) {
      first = off;
      first_id = k;
    }
  }
  if (first != UINT64_MAX && first != 0 && first < md.areas_end())
    return Rule("segment " + first_id, "data offset " + std::to_string(first) +
                                           " overlaps the metadata and keyslots areas (which end at " +
                                           std::to_string(md.areas_end()) + ")");
  if (SerializeJson(j).size() >= md.json_area_size())
    return Rule("JSON area", "the JSON does not fit in the JSON area");
  return Status::Ok();
}

}  // namespace ds::luks2
