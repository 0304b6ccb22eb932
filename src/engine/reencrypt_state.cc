#include "engine/reencrypt_state.h"

#include <algorithm>
#include <chrono>
#include <limits>

#include <openssl/crypto.h>

#include "crypto/crypto.h"
#include "luks2/digest.h"
#include "luks2/format.h"
#include "luks2/keyslot.h"
#include "luks2/volume.h"

namespace ds::engine {

using luks2::Json;

namespace {
constexpr const char* kRequirement = "online-reencrypt-v2";
// cryptsetup 2.6.1 records decryption with data shift (a moved segment at the front) as v3.
constexpr const char* kRequirementV3 = "online-reencrypt-v3";

bool HasRequirement(const luks2::Metadata& md, const char* r) {
  auto reqs = md.requirements();
  return std::find(reqs.begin(), reqs.end(), r) != reqs.end();
}

// By index, not iterators: GCC 12's -Wnull-dereference misfires on inlined json iterators here.
bool HasFlag(const Json& seg, const char* flag) {
  if (!seg.is_object() || !seg.contains("flags")) return false;
  const Json& flags = seg.at("flags");
  if (!flags.is_array()) return false;
  for (size_t i = 0; i < flags.size(); ++i)
    if (flags[i] == flag) return true;
  return false;
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

bool IsNewSide(const luks2::Metadata& md, const luks2::SegmentInfo& s, const State& st, uint64_t pos) {
  if (s.type != "crypt" || s.cipher != st.new_seg.cipher || s.sector_size != st.new_seg.sector_size ||
      s.offset != st.NewAt(pos) || s.iv_tweak != st.new_seg.iv_tweak + pos / 512)
    return false;
  auto d = luks2::DigestOfSegment(md, s.id);
  return d && d->id == st.digest_new;
}

// The regular segments of a decryption with data shift read, in data order (cryptsetup 2.6.1):
//   [moved crypt at 0, or its hotzone (linear, in-reencryption), or new linear from 0]
//   [new linear from shift] [hotzone, linear, in-reencryption] [old crypt at shift + p]
// Logical byte p >= shift lives at p when new and at shift + p when old; [0, shift) at 0 always.
Result<std::optional<State>> ReadDecryptShiftState(const luks2::Metadata& md, State st,
                                                   const std::vector<luks2::SegmentInfo>& all,
                                                   uint64_t device_size) {
  if (st.old_seg.type != "crypt" || st.new_seg.type != "linear" || st.moved->type != "crypt" ||
      st.shift == 0 || st.moved->offset != 0 || st.moved->size != st.shift || st.old_seg.offset != st.shift ||
      st.new_seg.offset != 0 || st.old_seg.iv_tweak != 0 || st.moved->iv_tweak != 0 ||
      st.moved->cipher != st.old_seg.cipher || st.moved->sector_size != st.old_seg.sector_size)
    return Corrupt("a data-shift decryption needs a crypt old segment at shift_size, a linear new one at 0 "
                   "and a crypt moved segment of shift_size bytes at 0");
  if (auto d = luks2::DigestOfSegment(md, st.old_seg.id)) st.digest_old = d->id;
  if (device_size <= 2 * st.shift) return Corrupt("the device is too small for the data-shift layout");
  st.data_size = (device_size - st.shift) / st.sector_size() * st.sector_size();
  if (st.old_seg.size) st.data_size = *st.old_seg.size;
  if (st.data_size <= st.shift || st.shift + st.data_size > device_size || st.shift % st.sector_size())
    return Corrupt("the data size does not fit the shift and the sector size");
  auto is_old = [&](const luks2::SegmentInfo& s, uint64_t pos) {
    if (s.type != "crypt" || s.cipher != st.old_seg.cipher || s.sector_size != st.old_seg.sector_size ||
        s.iv_tweak != pos / 512 || s.offset != (pos < st.shift ? pos : st.shift + pos))
      return false;
    auto d = luks2::DigestOfSegment(md, s.id);
    return d && d->id == st.digest_old;
  };
  enum Part { kOld, kHot, kNew };
  Part front = kOld;
  uint64_t pos = 0, new_end = st.shift, hot_len = 0;
  bool hot = false, old_seen = false;
  for (const auto& s : all) {
    if (s.id == st.old_seg.id || s.id == st.new_seg.id || s.id == st.moved->id) continue;
    const std::string id = std::to_string(s.id);
    const uint64_t len = s.size ? *s.size : (pos < st.data_size ? st.data_size - pos : 0);
    const bool flagged = s.has_flag("in-reencryption");
    const bool lin = s.type == "linear" && s.offset == pos;
    if (pos == 0) {
      if (is_old(s, 0) && !flagged && len == st.shift) front = kOld;
      else if (lin && flagged && len == st.shift) front = kHot, hot = true, hot_len = len;
      else if (lin && !flagged && len >= st.shift) front = kNew, new_end = len;
      else return Corrupt("segment " + id + " is not where a decryption with data shift allows at the front");
    } else if (lin && !flagged && (!hot || front == kHot) && !old_seen && pos == new_end) {
      new_end = pos + len;
    } else if (lin && flagged && !hot && !old_seen && front == kOld) {
      hot = true;
      hot_len = len;
    } else if (is_old(s, pos) && !flagged && front == kOld) {
      old_seen = true;
    } else {
      return Corrupt("segment " + id + " is not where a decryption with data shift allows");
    }
    pos += len;
  }
  if (pos != st.data_size)
    return Corrupt("the segments cover " + std::to_string(pos) + " bytes, not the " +
                   std::to_string(st.data_size) + " the operation is about");
  if (front != kOld && new_end != st.data_size)
    return Corrupt("the moved segment is under way before the rest is done");
  if (hot && hot_len > st.shift)  // a longer one would have written over its own source
    return Corrupt("a hotzone of " + std::to_string(hot_len) + " bytes is longer than the shift");
  if (hot) st.hotzone_len = hot_len;
  const uint64_t rest = st.data_size - st.shift;
  st.done = front == kOld ? new_end - st.shift : front == kHot ? rest : st.data_size;
  return std::optional<State>(st);
}

// Writes the regular segments of a decryption with data shift for progress `done` (see
// ReadDecryptShiftState), then the backups as cryptsetup orders them: previous, final, moved.
void SetDecryptShiftProgress(luks2::Metadata& md, const State& st, uint64_t done, uint64_t hot) {
  Json& segs = md.json["segments"];
  const Json moved_b = segs[*SegmentIdWithFlag(segs, "backup-moved-segment")];
  const Json old_b = segs[*SegmentIdWithFlag(segs, "backup-previous")];
  const Json new_b = segs[*SegmentIdWithFlag(segs, "backup-final")];
  Json out = Json::object();
  std::vector<std::string> old_ids;
  int id = 0;
  auto add = [&](Json s, bool is_old) {
    if (is_old) old_ids.push_back(std::to_string(id));
    out[std::to_string(id++)] = std::move(s);
  };
  auto linear = [](uint64_t off, uint64_t len) {
    return Json{{"type", "linear"}, {"offset", luks2::U64Str(off)},
                {"size", len ? Json(luks2::U64Str(len)) : Json("dynamic")}};
  };
  const uint64_t rest = st.data_size - st.shift;
  if (done >= st.data_size) {
    add(linear(0, 0), false);
  } else if (done == rest) {  // only the moved segment is left, or under way
    if (hot) {
      Json h = linear(0, st.shift);
      h["flags"] = {"in-reencryption"};
      add(h, false);
    } else {
      Json m = moved_b;
      m.erase("flags");
      add(m, true);
    }
    add(linear(st.shift, 0), false);
  } else {
    Json m = moved_b;
    m.erase("flags");
    add(m, true);
    if (done) add(linear(st.shift, done), false);
    if (hot) {
      Json h = linear(st.shift + done, hot);
      h["flags"] = {"in-reencryption"};
      add(h, false);
    }
    if (done + hot < rest) {
      Json o = old_b;
      const uint64_t p = st.shift + done + hot;
      o.erase("flags");
      o["offset"] = luks2::U64Str(st.shift + p);
      o["iv_tweak"] = luks2::U64Str(p / 512);
      add(o, true);
    }
  }
  add(old_b, true);
  add(new_b, false);
  add(moved_b, true);
  segs = out;
  for (auto& [k, d] : md.json["digests"].items())
    d["segments"] = int(*ParseU64(k)) == st.digest_old ? Json(old_ids) : Json::array();
}

// The regular segments of an encryption with data shift read, in data order:
//   [moved copy of [0, shift)] [old linear] [hotzone, in-reencryption] [new crypt]
// (cryptsetup's reencrypt_make_hot_segments_encrypt_shift / _enc_create_segments_shift_after).
Result<std::optional<State>> ReadShiftState(const luks2::Metadata& md, State st, const Json& area,
                                            const std::vector<luks2::SegmentInfo>& all,
                                            uint64_t device_size) {
  st.shift = luks2::JsonU64(area["shift_size"]).value_or(0);
  if (st.mode == Mode::kDecrypt && !st.backward && st.area.type == Resilience::kDatashiftChecksum && st.moved)
    return ReadDecryptShiftState(md, std::move(st), all, device_size);
  if (st.mode != Mode::kEncrypt || !st.backward || st.area.type != Resilience::kDatashift || !st.moved)
    return Unsupported("only encryption with a data shift (backward, resilience datashift, a moved "
                       "first segment) and decryption (forward, datashift-checksum) are implemented "
                       "among the data-shift layouts");
  if (st.old_seg.type != "linear" || !st.old_seg.size || st.new_seg.type != "crypt")
    return Corrupt("a data-shift encryption needs a sized linear old segment and a crypt new one");
  if (st.moved->type != "linear" || st.moved->size != st.shift || st.shift == 0)
    return Corrupt("the moved segment must be linear and shift_size bytes long");
  if (auto d = luks2::DigestOfSegment(md, st.new_seg.id)) st.digest_new = d->id;
  st.data_size = *st.old_seg.size;
  if (st.data_size < st.shift || st.data_size % st.sector_size())
    return Corrupt("the data size does not fit the shift and the sector size");
  if (st.moved->offset + st.shift > device_size || st.NewAt(st.data_size) > device_size)
    return Corrupt("the device is smaller than the data-shift layout says");
  if (st.moved->offset < st.NewAt(st.data_size))
    return Corrupt("the moved segment overlaps the shifted data");
  enum { kOld, kHot, kNew } phase = kOld;
  uint64_t pos = 0, new_start = st.data_size, hot_len = 0;
  bool hot = false;
  for (const auto& s : all) {
    if (s.id == st.old_seg.id || s.id == st.new_seg.id || s.id == st.moved->id) continue;
    const uint64_t len = s.size ? *s.size : (pos < st.data_size ? st.data_size - pos : 0);
    const std::string id = std::to_string(s.id);
    if (phase == kOld && pos == 0 && s.type == "linear" && s.offset == st.moved->offset) {
      if (len != st.shift) return Corrupt("segment " + id + ": the moved copy is not whole");
    } else if (phase == kOld && s.type == "linear" && s.offset == st.old_seg.offset + pos && pos >= st.shift) {
    } else if (phase == kOld && s.has_flag("in-reencryption") && IsNewSide(md, s, st, pos)) {
      if (pos < st.shift && pos + len > st.shift)
        return Corrupt("segment " + id + ": a hotzone across the end of the moved copy");
      phase = kHot;
      hot = true;
      hot_len = len;
    } else if (phase != kNew && !s.has_flag("in-reencryption") && IsNewSide(md, s, st, pos)) {
      phase = kNew;
      new_start = pos;
    } else if (phase == kNew && !s.has_flag("in-reencryption") && IsNewSide(md, s, st, pos)) {
    } else {
      return Corrupt("segment " + id + " is not where an encryption with data shift allows");
    }
    pos += len;
  }
  if (pos != st.data_size)
    return Corrupt("the segments cover " + std::to_string(pos) + " bytes, not the " +
                   std::to_string(st.data_size) + " the operation is about");
  if (hot) st.hotzone_len = hot_len;
  st.done = st.data_size - new_start;
  return std::optional<State>(st);
}

void SetShiftProgress(luks2::Metadata& md, const State& st, uint64_t done, uint64_t hot) {
  Json& segs = md.json["segments"];
  const Json moved_b = segs[*SegmentIdWithFlag(segs, "backup-moved-segment")];
  const Json old_b = segs[*SegmentIdWithFlag(segs, "backup-previous")];
  const Json new_b = segs[*SegmentIdWithFlag(segs, "backup-final")];
  Json out = Json::object();
  std::vector<std::string> new_ids;
  int id = 0;
  auto add = [&](Json s, bool is_new) {
    if (is_new) new_ids.push_back(std::to_string(id));
    out[std::to_string(id++)] = std::move(s);
  };
  // The old part is whole hotzones of the linear data plus the whole moved copy, or nothing:
  // the moved copy is never split (cryptsetup cannot resume a split one).
  const uint64_t old_len = st.data_size - done - hot;
  if (old_len > 0) {
    Json m = moved_b;
    m.erase("flags");
    add(m, false);
  }
  if (old_len > st.shift) add(Slice(old_b, st.shift, old_len - st.shift), false);
  if (hot) {
    Json h = Slice(new_b, old_len, hot);
    h["flags"] = {"in-reencryption"};
    add(h, true);
  }
  const bool sole = old_len == 0 && hot == 0;
  if (done > 0) add(Slice(new_b, old_len + hot, sole ? 0 : done), true);
  for (const Json* b : {&moved_b, &old_b, &new_b}) {
    if (b == &new_b) new_ids.push_back(std::to_string(id));
    out[std::to_string(id++)] = *b;
  }
  segs = out;
  for (auto& [k, d] : md.json["digests"].items())
    d["segments"] = int(*ParseU64(k)) == st.digest_new ? Json(new_ids) : Json::array();
}
// The last step of every Init*: the verification digest over the metadata as it now stands and
// the keys, linked to the reencrypt keyslot `keyslot_id` only (cryptsetup's layout). The
// verification bytes hold key material and are wiped once hashed.
Status AddVerificationDigest(luks2::Metadata& md, int keyslot_id, const SecureBuffer* old_key,
                             const SecureBuffer* new_key, uint32_t digest_iterations) {
  Bytes vd = VerificationData(md, old_key, new_key);
  auto digest = luks2::CreatePbkdf2Digest(vd, "sha256", digest_iterations);
  OPENSSL_cleanse(vd.data(), vd.size());
  if (!digest.ok()) return digest.status();
  int did = 0;
  while (md.json["digests"].contains(std::to_string(did))) ++did;
  (*digest)["keyslots"] = {std::to_string(keyslot_id)};
  md.json["digests"][std::to_string(did)] = std::move(*digest);
  return Status::Ok();
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
    case Resilience::kDatashift: return "datashift";
    case Resilience::kDatashiftChecksum: return "datashift-checksum";
  }
  return "?";
}

namespace {
// Seconds to hash `buf` in 4 KiB blocks with `hash`, the best of three (a preempted run must not
// decide); infinity when the hash is missing.
double SecondsToHash(const char* hash, std::span<const uint8_t> buf) {
  if (!HashSize(hash)) return std::numeric_limits<double>::infinity();
  Bytes sums(buf.size() / 4096 * HashSize(hash));
  double best = std::numeric_limits<double>::infinity();
  for (int i = 0; i < 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!HashBlocks(hash, buf, 4096, sums).ok()) return std::numeric_limits<double>::infinity();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}
}  // namespace

std::string DefaultChecksumHash() {
  // Measured once per process on 256 KiB (a few milliseconds even where SHA-256 is emulated).
  static const std::string chosen = [] {
    const Bytes buf(256u << 10, 0x5a);
    return SecondsToHash("md5", buf) * 1.5 < SecondsToHash("sha256", buf) ? std::string("md5")
                                                                          : std::string("sha256");
  }();
  return chosen;
}

Result<std::string> ParseChecksumHash(const std::string& name) {
  // Names as cryptsetup spells them (its OpenSSL backend maps the blake2 ones); OpenSSL here
  // knows them under the same names.
  static const char* const kKnown[] = {"md5", "sha1", "sha256", "sha512", "blake2b-512", "blake2s-256"};
  for (const char* k : kKnown)
    if (name == k) {
      if (!HashSize(name)) return Unsupported("--resilience-hash " + name + " is not available here (FIPS mode?)");
      return name;
    }
  std::string choices;
  for (const char* k : kKnown) choices += std::string(choices.empty() ? "" : ", ") + k;
  return InvalidArgument("--resilience-hash must be one of " + choices);
}

namespace {
Result<std::string> ChecksumHashOrDefault(std::string_view h) {
  if (h.empty()) return DefaultChecksumHash();
  return ParseChecksumHash(std::string(h));
}
}  // namespace

Result<Resilience> ParseResilience(const std::string& s) {
  if (s == "checksum") return Resilience::kChecksum;
  if (s == "journal") return Resilience::kJournal;
  if (s == "none") return Resilience::kNone;
  if (s == "datashift") return Resilience::kDatashift;
  if (s == "datashift-checksum") return Resilience::kDatashiftChecksum;
  if (s.rfind("datashift", 0) == 0)
    return Unsupported("resilience '" + s + "' is not supported: with a data shift diskseal uses cryptsetup's "
                       "datashift (encrypt) and datashift-checksum (decrypt)");
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
  if (!HasRequirement(md, kRequirement) && !HasRequirement(md, kRequirementV3))
    return Unsupported("the in-place operation in this header is not in the online-reencrypt-v2/v3 format");
  const std::string mode = luks2::StrOr(ks, "mode");
  st.mode = mode == "encrypt" ? Mode::kEncrypt : mode == "decrypt" ? Mode::kDecrypt : Mode::kReencrypt;
  st.backward = luks2::StrOr(ks, "direction") == "backward";
  const Json& area = ks["area"];
  DS_ASSIGN_OR_RETURN(st.area.type, ParseResilience(luks2::StrOr(area, "type")));
  st.area.offset = *luks2::JsonU64(area["offset"]);
  st.area.size = *luks2::JsonU64(area["size"]);
  if (st.area.type == Resilience::kChecksum || st.area.type == Resilience::kDatashiftChecksum) {
    st.area.hash = luks2::StrOr(area, "hash");
    st.area.block = *luks2::JsonU32(area["sector_size"]);
  }
  const Json& segs = md.json["segments"];
  auto prev = SegmentIdWithFlag(segs, "backup-previous");
  auto fin = SegmentIdWithFlag(segs, "backup-final");
  if (!prev || !fin) return Corrupt("the in-place operation lacks its backup segments");
  auto moved = SegmentIdWithFlag(segs, "backup-moved-segment");
  auto all = luks2::Segments(md);
  for (const auto& s : all) {
    if (std::to_string(s.id) == *prev) st.old_seg = s;
    if (std::to_string(s.id) == *fin) st.new_seg = s;
    if (moved && std::to_string(s.id) == *moved) st.moved = s;
  }
  if (moved || st.area.type == Resilience::kDatashift || st.area.type == Resilience::kDatashiftChecksum) return ReadShiftState(md, std::move(st), area, all, data_device_size);
  if (st.old_seg.offset != st.new_seg.offset)
    return Unsupported("a reencryption that also moves the data (cryptsetup reencrypt --reduce-device-size "
                       "on an encrypted volume) is not supported by diskseal; finish it with cryptsetup "
                       "reencrypt --resume-only");
  if (auto d = luks2::DigestOfSegment(md, st.old_seg.id); d && st.old_seg.type == "crypt") st.digest_old = d->id;
  if (auto d = luks2::DigestOfSegment(md, st.new_seg.id); d && st.new_seg.type == "crypt") st.digest_new = d->id;
  if (data_device_size < st.new_seg.offset) return Corrupt("the data device is smaller than the data offset");
  st.data_size = (data_device_size - st.new_seg.offset) / st.sector_size() * st.sector_size();
  if (st.new_seg.size) st.data_size = *st.new_seg.size;

  // A segment may belong to two digests: cryptsetup assigns a reencryption's hotzone to both the
  // old and the new key's digest while it is in flight.
  const std::vector<luks2::DigestInfo> digests = luks2::Digests(md);
  auto has_digest = [&](int segment, int digest) {
    for (const auto& d : digests)
      if (d.id == digest && std::find(d.segments.begin(), d.segments.end(), segment) != d.segments.end()) return true;
    return false;
  };
  auto is_side = [&](const luks2::SegmentInfo& s, const luks2::SegmentInfo& side, int digest) {
    if (s.type != side.type) return false;
    if (s.type == "linear") return true;
    return has_digest(s.id, digest) && s.cipher == side.cipher && s.sector_size == side.sector_size;
  };
  // Forward the layout reads new* hot? old*; backward old* hot? new*. `first`/`second` are the
  // sides in on-disk order.
  const bool fwd = !st.backward;
  const luks2::SegmentInfo& first = fwd ? st.new_seg : st.old_seg;
  const luks2::SegmentInfo& second = fwd ? st.old_seg : st.new_seg;
  const int first_digest = fwd ? st.digest_new : st.digest_old;
  const int second_digest = fwd ? st.digest_old : st.digest_new;
  enum { kFirst, kHot, kSecond } phase = kFirst;
  uint64_t pos = 0, first_end = 0, hot_len = 0;
  bool hot_seen = false;
  for (const auto& s : all) {
    if (s.id == st.old_seg.id || s.id == st.new_seg.id) continue;
    if (s.offset != st.new_seg.offset + pos)
      return Corrupt("segment " + std::to_string(s.id) + " does not continue where the previous one ended");
    DS_ASSIGN_OR_RETURN(uint64_t len, luks2::SegmentBytes(s, data_device_size));
    if (!s.size) len = pos < st.data_size ? st.data_size - pos : 0;
    if (s.has_flag("in-reencryption")) {
      if (phase == kSecond || hot_seen || !is_side(s, st.new_seg, st.digest_new))
        return Corrupt("the hotzone segment " + std::to_string(s.id) + " is not where the layout allows");
      phase = kHot;
      hot_seen = true;
      hot_len = len;
    } else if (phase == kFirst && is_side(s, first, first_digest)) {
      first_end = pos + len;
    } else if (is_side(s, second, second_digest)) {
      phase = kSecond;
    } else {
      return Corrupt("segment " + std::to_string(s.id) + " belongs to neither the old nor the new layout");
    }
    pos += len;
  }
  if (pos != st.data_size)
    return Corrupt("the segments cover " + std::to_string(pos) + " bytes, not the " +
                   std::to_string(st.data_size) + " the operation is about");
  if (hot_seen) st.hotzone_len = hot_len;
  // Bytes in the new layout, not counting a hotzone under way.
  st.done = fwd ? first_end : st.data_size - first_end - hot_len;
  return std::optional<State>(st);
}

void SetProgress(luks2::Metadata& md, const State& st, uint64_t done,
                 std::optional<uint64_t> hotzone_len) {
  if (st.moved && st.decrypt_shift()) return SetDecryptShiftProgress(md, st, done, hotzone_len.value_or(0));
  if (st.moved) return SetShiftProgress(md, st, done, hotzone_len.value_or(0));
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
  if (!st.backward) {
    if (done > 0) add(Slice(new_b, 0, done), new_ids);
    if (hot) {
      Json h = Slice(new_b, done, hot);
      h["flags"] = {"in-reencryption"};
      add(h, new_ids);
    }
    if (done + hot < st.data_size) add(Slice(old_b, done + hot, 0), old_ids);
  } else {
    const uint64_t old_len = st.data_size - done - hot;
    const bool old_last = done == 0 && hot == 0;
    if (old_len > 0) add(Slice(old_b, 0, old_last ? 0 : old_len), old_ids);
    if (hot) {
      Json h = Slice(new_b, old_len, done == 0 ? 0 : hot);
      h["flags"] = {"in-reencryption"};
      add(h, new_ids);
    }
    if (done > 0) add(Slice(new_b, old_len + hot, 0), new_ids);
  }
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
  // After a reencryption the old key opens nothing: its keyslots and digest go with it.
  if (st.mode == Mode::kReencrypt && st.digest_old >= 0 && st.digest_old != st.digest_new) {
    const std::string od = std::to_string(st.digest_old);
    for (auto& k : md.json["digests"][od]["keyslots"]) {
      md.json["keyslots"].erase(k.get<std::string>());
      for (auto& [tk, t] : md.json["tokens"].items()) {
        Json kept = Json::array();
        for (auto& r : t["keyslots"])
          if (r != k) kept.push_back(r);
        t["keyslots"] = kept;
      }
    }
    drop.push_back(od);
  }
  for (auto& k : drop) md.json["digests"].erase(k);
  Json& cfg = md.json["config"];
  if (cfg.contains("requirements") && cfg["requirements"].contains("mandatory")) {
    Json kept = Json::array();
    for (auto& r : cfg["requirements"]["mandatory"])
      if (r != kRequirement && r != kRequirementV3) kept.push_back(r);
    if (kept.empty()) cfg["requirements"].erase("mandatory");
    else cfg["requirements"]["mandatory"] = kept;
    if (cfg["requirements"].empty()) cfg.erase("requirements");
  }
}

Status InitDecrypt(luks2::Metadata& md, const SecureBuffer& old_key, Resilience resilience,
                   uint32_t digest_iterations, std::string_view checksum_hash) {
  Json& segs = md.json["segments"];
  if (segs.size() != 1 || !segs.contains("0") || segs["0"]["type"] != "crypt")
    return Unsupported("only a volume with one crypt segment can be decrypted in place");
  Json prev = segs["0"];
  prev["flags"] = {"backup-previous"};
  Json fin = {{"type", "linear"}, {"offset", prev["offset"]}, {"size", "dynamic"},
              {"flags", {"backup-final"}}};
  auto d0 = luks2::DigestOfSegment(md, 0);
  if (!d0) return Corrupt("the data segment has no digest");
  uint64_t area_off = 2 * md.hdr_size;
  for (const auto& k : luks2::Keyslots(md))
    area_off = std::max(area_off, (k.area_offset + k.area_size + 4095) / 4096 * 4096);
  if (area_off + (64u << 10) > md.areas_end())
    return Status(Code::kNoMemory, "no room left in the keyslots area for the reencryption area");
  int id = 0;
  while (md.json["keyslots"].contains(std::to_string(id))) ++id;
  Json area = {{"type", ResilienceName(resilience)},
               {"offset", luks2::U64Str(area_off)},
               {"size", luks2::U64Str(md.areas_end() - area_off)}};
  if (resilience == Resilience::kChecksum) {
    DS_ASSIGN_OR_RETURN(area["hash"], ChecksumHashOrDefault(checksum_hash));
    area["sector_size"] = *luks2::JsonU32(prev["sector_size"]);
  }
  md.json["keyslots"][std::to_string(id)] = {{"type", "reencrypt"}, {"key_size", 1},
                                             {"mode", "decrypt"}, {"direction", "backward"},
                                             {"priority", 0}, {"area", area}};
  Json plain = prev;
  plain.erase("flags");
  segs = {{"0", plain}, {"1", prev}, {"2", fin}};
  md.json["digests"][std::to_string(d0->id)]["segments"] = {"0", "1"};
  md.json["config"]["requirements"]["mandatory"] = {kRequirement};
  return AddVerificationDigest(md, id, &old_key, nullptr, digest_iterations);
}

Status InitReencrypt(luks2::Metadata& md, BlockDevice& md_dev, const SecureBuffer& old_key,
                     const SecureBuffer& new_key, std::span<const uint8_t> passphrase,
                     const luks2::KdfSpec& kdf, const std::string& new_cipher, uint32_t new_sector,
                     Resilience resilience, uint32_t digest_iterations, std::string_view checksum_hash) {
  return InitReencrypt(md, md_dev, old_key, new_key, {NewKeyslot{passphrase, std::nullopt}}, kdf, new_cipher,
                       new_sector, resilience, digest_iterations, checksum_hash);
}

Status InitReencrypt(luks2::Metadata& md, BlockDevice& md_dev, const SecureBuffer& old_key,
                     const SecureBuffer& new_key, const std::vector<NewKeyslot>& new_keyslots,
                     const luks2::KdfSpec& kdf, const std::string& new_cipher, uint32_t new_sector,
                     Resilience resilience, uint32_t digest_iterations, std::string_view checksum_hash) {
  if (new_keyslots.empty()) return InvalidArgument("a reencryption needs at least one keyslot for the new key");
  Json& segs = md.json["segments"];
  if (segs.size() != 1 || !segs.contains("0") || segs["0"]["type"] != "crypt")
    return Unsupported("only a volume with one crypt segment can be reencrypted in place");
  auto d_old = luks2::DigestOfSegment(md, 0);
  if (!d_old) return Corrupt("the data segment has no digest");
  // 1. keyslots for the new key (one per kept passphrase), placed before the reencrypt area
  uint64_t pos = 2 * md.hdr_size;
  for (const auto& k : luks2::Keyslots(md)) pos = std::max(pos, (k.area_offset + k.area_size + 4095) / 4096 * 4096);
  const uint64_t need = luks2::Luks2KeyslotAreaSize(uint32_t(new_key.size()));
  if (pos + need * new_keyslots.size() + (64u << 10) > md.areas_end())
    return Status(Code::kNoMemory, "no room in the keyslots area for " + std::to_string(new_keyslots.size()) +
                                       " new keyslot(s) and the reencryption area");
  Json new_ids = Json::array();
  for (const NewKeyslot& nk : new_keyslots) {
    DS_ASSIGN_OR_RETURN(Json ks_new, luks2::CreateLuks2Keyslot(md_dev, pos, need, kdf, nk.passphrase, new_key.span()));
    pos += need;
    int new_slot = 0;
    while (md.json["keyslots"].contains(std::to_string(new_slot))) ++new_slot;
    const std::string sid = std::to_string(new_slot);
    md.json["keyslots"][sid] = ks_new;
    new_ids.push_back(sid);
    if (!nk.replaces) continue;
    const std::string old_sid = std::to_string(*nk.replaces);
    for (auto& [tk, t] : md.json["tokens"].items()) {
      if (!t.contains("keyslots") || !t["keyslots"].is_array()) continue;
      if (std::find(t["keyslots"].begin(), t["keyslots"].end(), old_sid) != t["keyslots"].end())
        t["keyslots"].push_back(sid);
    }
  }
  DS_ASSIGN_OR_RETURN(Json d_new, luks2::CreatePbkdf2Digest(new_key.span(), "sha256", digest_iterations));
  int new_digest = 0;
  while (md.json["digests"].contains(std::to_string(new_digest))) ++new_digest;
  d_new["keyslots"] = new_ids;
  // 2. segments: old crypt, backups (previous = today's segment, final = the new parameters)
  Json prev = segs["0"];
  prev["flags"] = {"backup-previous"};
  Json fin = segs["0"];
  fin["encryption"] = new_cipher;
  fin["sector_size"] = new_sector;
  fin["flags"] = {"backup-final"};
  Json cur = segs["0"];
  segs = {{"0", cur}, {"1", prev}, {"2", fin}};
  md.json["digests"][std::to_string(d_old->id)]["segments"] = {"0", "1"};
  d_new["segments"] = {"2"};
  md.json["digests"][std::to_string(new_digest)] = d_new;
  // 3. the reencrypt keyslot over the rest of the keyslots area
  const uint64_t area_off = pos;  // just past the new keyslots
  int id = 0;
  while (md.json["keyslots"].contains(std::to_string(id))) ++id;
  Json area = {{"type", ResilienceName(resilience)},
               {"offset", luks2::U64Str(area_off)},
               {"size", luks2::U64Str(md.areas_end() - area_off)}};
  if (resilience == Resilience::kChecksum) {
    DS_ASSIGN_OR_RETURN(area["hash"], ChecksumHashOrDefault(checksum_hash));
    area["sector_size"] = std::max(new_sector, *luks2::JsonU32(prev["sector_size"]));
  }
  md.json["keyslots"][std::to_string(id)] = {{"type", "reencrypt"}, {"key_size", 1},
                                             {"mode", "reencrypt"}, {"direction", "forward"},
                                             {"priority", 0}, {"area", area}};
  md.json["config"]["requirements"]["mandatory"] = {kRequirement};
  return AddVerificationDigest(md, id, &old_key, &new_key, digest_iterations);
}

Bytes VerificationData(const luks2::Metadata& md, const SecureBuffer* old_key,
                       const SecureBuffer* new_key) {
  // The version byte follows the requirement: cryptsetup 2.6.1 writes v3 for data-shift decryption.
  Bytes out = {'v', uint8_t(HasRequirement(md, kRequirementV3) ? '3' : '2')};
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
                   uint32_t digest_iterations, std::string_view checksum_hash) {
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
  if (area_off + (64u << 10) > md.areas_end())
    return Status(Code::kNoMemory, "no room left in the keyslots area for the reencryption area");
  int id = 0;
  while (md.json["keyslots"].contains(std::to_string(id))) ++id;
  Json area = {{"type", ResilienceName(resilience)},
               {"offset", luks2::U64Str(area_off)},
               {"size", luks2::U64Str(md.areas_end() - area_off)}};
  // Checksums per encryption sector: a write torn at a sector boundary leaves every checksummed
  // block wholly old or wholly new, so recovery can tell which is which.
  if (resilience == Resilience::kChecksum) {
    DS_ASSIGN_OR_RETURN(area["hash"], ChecksumHashOrDefault(checksum_hash));
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
  return AddVerificationDigest(md, id, nullptr, &new_key, digest_iterations);
}

}  // namespace ds::engine

namespace ds::engine {

Status InitEncryptShift(luks2::Metadata& md, const SecureBuffer& new_key, uint64_t shift,
                        uint64_t data_size, uint64_t device_size, uint32_t digest_iterations) {
  Json& segs = md.json["segments"];
  if (segs.size() != 1 || !segs.contains("0") || luks2::JsonU64(segs["0"]["offset"]) != shift)
    return InvalidArgument("the new header must have one crypt segment at the shift offset");
  if (shift == 0 || shift % 4096 || data_size < shift || data_size + 2 * shift > device_size)
    return InvalidArgument("the data shift does not fit the device");
  Json fin = segs["0"];
  fin["flags"] = {"backup-final"};
  // The moved copy sits right after the data in its new place, in the freed tail.
  const uint64_t moved_at = shift + data_size;
  Json moved = {{"type", "linear"}, {"offset", luks2::U64Str(moved_at)}, {"size", luks2::U64Str(shift)},
                {"flags", {"backup-moved-segment"}}};
  Json prev = {{"type", "linear"}, {"offset", "0"}, {"size", luks2::U64Str(data_size)},
               {"flags", {"backup-previous"}}};
  // Data shift needs no room for checksums or copies: one 4 KiB area, as cryptsetup makes it.
  uint64_t area_off = 2 * md.hdr_size;
  for (const auto& k : luks2::Keyslots(md))
    area_off = std::max(area_off, (k.area_offset + k.area_size + 4095) / 4096 * 4096);
  if (area_off + 4096 > md.areas_end())
    return Status(Code::kNoMemory, "no room left in the keyslots area for the reencryption area");
  int id = 0;
  while (md.json["keyslots"].contains(std::to_string(id))) ++id;
  Json area = {{"type", "datashift"}, {"offset", luks2::U64Str(area_off)}, {"size", "4096"},
               {"shift_size", luks2::U64Str(shift)}};
  md.json["keyslots"][std::to_string(id)] = {{"type", "reencrypt"}, {"key_size", 1},
                                             {"mode", "encrypt"}, {"direction", "backward"},
                                             {"priority", 0}, {"area", area}};
  Json first = moved;
  first.erase("flags");
  Json out = {{"0", first}};
  int n = 1;
  if (data_size > shift)
    out[std::to_string(n++)] = {{"type", "linear"}, {"offset", luks2::U64Str(shift)},
                                {"size", luks2::U64Str(data_size - shift)}};
  out[std::to_string(n++)] = moved;
  out[std::to_string(n++)] = prev;
  const std::string fin_id = std::to_string(n);
  out[fin_id] = fin;
  segs = out;
  md.json["digests"]["0"]["segments"] = {fin_id};
  md.json["config"]["requirements"]["mandatory"] = {kRequirement};
  return AddVerificationDigest(md, id, nullptr, &new_key, digest_iterations);
}

}  // namespace ds::engine

namespace ds::engine {

Status InitDecryptShift(luks2::Metadata& md, const SecureBuffer& old_key, uint64_t device_size,
                        uint32_t digest_iterations) {
  Json& segs = md.json["segments"];
  if (segs.size() != 1 || !segs.contains("0") || segs["0"]["type"] != "crypt")
    return Unsupported("only a volume with one crypt segment can be decrypted in place");
  const uint64_t shift = luks2::JsonU64(segs["0"]["offset"]).value_or(0);
  const uint32_t sector = luks2::JsonU32(segs["0"]["sector_size"]).value_or(0);
  if (shift == 0 || sector == 0 || shift % sector || luks2::JsonU64(segs["0"]["iv_tweak"]) != 0 ||
      luks2::StrOr(segs["0"], "size") != "dynamic")
    return Unsupported("only a data segment at a non-zero offset, to the end, with IV tweak 0 can be moved back");
  if (device_size <= 2 * shift) return InvalidArgument("the device is too small to move the data back");
  auto d0 = luks2::DigestOfSegment(md, 0);
  if (!d0) return Corrupt("the data segment has no digest");
  uint64_t area_off = 2 * md.hdr_size;
  for (const auto& k : luks2::Keyslots(md))
    area_off = std::max(area_off, (k.area_offset + k.area_size + 4095) / 4096 * 4096);
  // The checksums of the one in-place hotzone (the moved segment, `shift` bytes).
  const uint64_t need = (shift / sector * 32 + 4095) / 4096 * 4096;
  if (area_off + need > md.areas_end())
    return Status(Code::kNoMemory, "no room left in the keyslots area for the checksums of the moved segment");
  int id = 0;
  while (md.json["keyslots"].contains(std::to_string(id))) ++id;
  Json area = {{"type", "datashift-checksum"}, {"offset", luks2::U64Str(area_off)},
               {"size", luks2::U64Str(md.areas_end() - area_off)}, {"hash", "sha256"},
               {"sector_size", sector}, {"shift_size", luks2::U64Str(shift)}};
  md.json["keyslots"][std::to_string(id)] = {{"type", "reencrypt"}, {"key_size", 1},
                                             {"mode", "decrypt"}, {"direction", "forward"},
                                             {"priority", 0}, {"area", area}};
  const Json old = segs["0"];
  Json moved = old;
  moved["offset"] = "0";
  moved["size"] = luks2::U64Str(shift);
  Json rest = old;
  rest["offset"] = luks2::U64Str(2 * shift);
  rest["iv_tweak"] = luks2::U64Str(shift / 512);
  Json moved_b = moved, prev = old;
  moved_b["flags"] = {"backup-moved-segment"};
  prev["flags"] = {"backup-previous"};
  Json fin = {{"type", "linear"}, {"offset", "0"}, {"size", "dynamic"}, {"flags", {"backup-final"}}};
  segs = {{"0", moved}, {"1", rest}, {"2", moved_b}, {"3", prev}, {"4", fin}};
  md.json["digests"][std::to_string(d0->id)]["segments"] = {"0", "1", "2", "3"};
  md.json["config"]["requirements"]["mandatory"] = {kRequirementV3};
  return AddVerificationDigest(md, id, &old_key, nullptr, digest_iterations);
}

}  // namespace ds::engine
