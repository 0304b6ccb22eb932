#include "luks2/volume.h"

#include <algorithm>
#include <cstring>

#include "crypto/crypto.h"
#include "luks2/digest.h"
#include "luks2/format.h"
#include "luks2/token.h"
#include "volume/crypt_device.h"
#include "volume/segmented_device.h"

namespace ds::luks2 {

namespace {

// Requirement flags we understand. Any other mandatory flag means: read-only, never unlock.
const char* const kKnownRequirements[] = {"offline-reencrypt", "online-reencrypt",
                                          "online-reencrypt-v2", "online-reencrypt-v3"};

uint64_t AlignUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

Status CheckName(const std::string& s, const char* what) {
  if (s.size() >= 48) return InvalidArgument(std::string(what) + " is longer than 47 bytes");
  if (s.find('\0') != std::string::npos) return InvalidArgument(std::string(what) + " contains NUL");
  return Status::Ok();
}

}  // namespace

std::string NewUuid() {
  uint8_t b[16];
  (void)RandomBytes(b);
  b[6] = uint8_t((b[6] & 0x0f) | 0x40);
  b[8] = uint8_t((b[8] & 0x3f) | 0x80);
  std::string h = HexEncode(b);
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

bool IsValidUuid(const std::string& s) {
  if (s.size() != 36) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !std::isxdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

Result<uint64_t> SegmentBytes(const SegmentInfo& s, uint64_t device_size) {
  if (s.offset > device_size)
    return Corrupt("segment " + std::to_string(s.id) + " starts at " + std::to_string(s.offset) +
                   ", past the end of the data device (" + std::to_string(device_size) + " bytes)");
  if (s.size) {
    if (*s.size > device_size - s.offset)
      return Corrupt("segment " + std::to_string(s.id) + " runs past the end of the data device");
    return *s.size;
  }
  uint64_t n = device_size - s.offset;
  return n / s.sector_size * s.sector_size;
}

Result<Volume> Volume::Load(Env& env, const std::string& device, const std::string& header_path,
                            bool writable) {
  Volume v;
  v.name_ = device;
  OpenOptions o;
  o.write = writable;
  if (header_path.empty()) {
    DS_ASSIGN_OR_RETURN(v.md_dev_, env.Open(device, o));
  } else {
    DS_ASSIGN_OR_RETURN(v.md_dev_, env.Open(header_path, o));
    DS_ASSIGN_OR_RETURN(v.data_dev_, env.Open(device, o));
  }
  DS_ASSIGN_OR_RETURN(v.read_, ReadHeader(*v.md_dev_));
  if (v.metadata_device().Size() < v.read_.md.areas_end())
    return Corrupt(v.md_dev_->name() + ": LUKS2 header needs " +
                   std::to_string(v.read_.md.areas_end()) + " bytes but the device has " +
                   std::to_string(v.md_dev_->Size()));
  return v;
}

Result<Volume> Volume::FromDevices(std::string name, std::unique_ptr<BlockDevice> md,
                                   std::unique_ptr<BlockDevice> data) {
  Volume v;
  v.name_ = std::move(name);
  v.md_dev_ = std::move(md);
  v.data_dev_ = std::move(data);
  DS_ASSIGN_OR_RETURN(v.read_, ReadHeader(*v.md_dev_));
  return v;
}

Result<Volume> Volume::Format(Env& env, const std::string& device, const std::string& header_path,
                              const FormatOptions& o, std::span<const uint8_t> passphrase,
                              const FormatHook& before_commit, SecureBuffer* key_out) {
  // ---- check every option before touching anything ----
  if (o.key_size_bits % 8 || o.key_size_bits == 0)
    return InvalidArgument("--key-size must be a whole number of bytes");
  const size_t key_bytes = o.key_size_bits / 8;
  DS_RETURN_IF_ERROR(CheckCipherSpec(o.cipher, key_bytes).WithContext("--cipher/--key-size"));
  if (o.sector_size != 0 &&
      (o.sector_size < 512 || o.sector_size > 4096 || (o.sector_size & (o.sector_size - 1))))
    return InvalidArgument("--sector-size must be 512, 1024, 2048 or 4096");
  if (!IsValidMetadataSize(o.metadata_size))
    return InvalidArgument("--luks2-metadata-size must be 16k, 32k, 64k, 128k, 256k, 512k, 1m, 2m or 4m");
  if (o.keyslots_size % kKeyslotsAlign || o.keyslots_size > kMaxKeyslotsSize)
    return InvalidArgument("--luks2-keyslots-size must be 4096-aligned and at most 128 MiB");
  DS_RETURN_IF_ERROR(CheckName(o.label, "--label"));
  DS_RETURN_IF_ERROR(CheckName(o.subsystem, "--subsystem"));
  if (!o.uuid.empty() && !IsValidUuid(o.uuid)) return InvalidArgument("--uuid is not a valid UUID");
  if (o.keyslot && (*o.keyslot < 0 || *o.keyslot >= kMaxKeyslots))
    return InvalidArgument("--key-slot must be 0..31");
  if (passphrase.empty()) return InvalidArgument("the passphrase is empty");
  DS_ASSIGN_OR_RETURN(KdfSpec kdf, ChooseKdf(o.pbkdf));
  DS_ASSIGN_OR_RETURN(uint32_t digest_iters, ChooseDigestIterations(o.pbkdf));

  const uint64_t md2 = 2 * o.metadata_size;
  const bool detached = !header_path.empty();
  uint64_t data_offset = 0, keyslots_size = o.keyslots_size;
  if (o.offset_sectors) {
    data_offset = *o.offset_sectors * 512;
    if (!detached && !keyslots_size) {
      if (data_offset <= md2) return InvalidArgument("--offset leaves no room for the LUKS2 header");
      keyslots_size = std::min<uint64_t>((data_offset - md2) / kKeyslotsAlign * kKeyslotsAlign, kMaxKeyslotsSize);
    }
  }
  if (!keyslots_size) keyslots_size = kDefaultDataOffset - md2;
  if (!detached && !o.offset_sectors)
    data_offset = std::max<uint64_t>(kDefaultDataOffset, AlignUp(md2 + keyslots_size, 1u << 20));
  if (!detached && data_offset < md2 + keyslots_size)
    return InvalidArgument("--offset " + std::to_string(data_offset / 512) +
                           " is inside the LUKS2 header and keyslots area (" +
                           std::to_string((md2 + keyslots_size) / 512) + " sectors)");
  uint32_t sector_size = o.sector_size;
  if (o.sector_size != 0 && data_offset % o.sector_size)
    return InvalidArgument("the data offset must be a multiple of --sector-size");
  const uint64_t area_need = Luks2KeyslotAreaSize(uint32_t(key_bytes));
  if (keyslots_size < area_need)
    return InvalidArgument("--luks2-keyslots-size is too small for one keyslot (" +
                           std::to_string(area_need) + " bytes needed)");

  // ---- open devices ----
  Volume v;
  v.name_ = device;
  OpenOptions rw;
  rw.write = true;
  rw.exclusive = true;
  bool fresh_file = false;  // a header file created here holds only zeros
  if (detached) {
    OpenOptions ro;
    DS_ASSIGN_OR_RETURN(v.data_dev_, env.Open(device, ro));
    if (env.Exists(header_path)) {
      DS_ASSIGN_OR_RETURN(v.md_dev_, env.Open(header_path, rw));
    } else {
      DS_ASSIGN_OR_RETURN(v.md_dev_, env.Create(header_path, md2 + keyslots_size));
      fresh_file = true;
    }
  } else {
    DS_ASSIGN_OR_RETURN(v.md_dev_, env.Open(device, rw));
  }
  BlockDevice& md_dev = *v.md_dev_;
  BlockDevice& data_dev = v.data_device();
  if (md_dev.Size() < md2 + keyslots_size)
    return InvalidArgument(md_dev.name() + ": too small for the LUKS2 header (" +
                           std::to_string(md2 + keyslots_size) + " bytes needed)");
  if (sector_size == 0)
    sector_size = (data_offset % 4096 == 0 && data_dev.Size() > data_offset &&
                   (data_dev.Size() - data_offset) % 4096 == 0) ? 4096 : 512;
  if (data_dev.Size() < data_offset + sector_size)
    return InvalidArgument(device + ": too small: the data would start at " +
                           std::to_string(data_offset) + " of " + std::to_string(data_dev.Size()) +
                           " bytes");
  DS_ASSIGN_OR_RETURN(bool is_luks, HasLuksMagic(md_dev));
  if (is_luks && !o.force)
    return Busy(md_dev.name() + ": already holds a LUKS header; use --force to overwrite it");

  // ---- build the header in memory ----
  SecureBuffer vk(key_bytes);
  if (o.volume_key) {
    if (o.volume_key->size() != key_bytes)
      return InvalidArgument("the volume key is " + std::to_string(o.volume_key->size()) + " bytes; --key-size says " +
                             std::to_string(key_bytes));
    std::memcpy(vk.data(), o.volume_key->data(), key_bytes);
  } else {
    do {
      DS_RETURN_IF_ERROR(RandomBytes(vk.span()));
    } while (key_bytes % 2 == 0 && std::memcmp(vk.data(), vk.data() + key_bytes / 2, key_bytes / 2) == 0);
  }

  Metadata& md = v.read_.md;
  md.hdr_size = o.metadata_size;
  md.seqid = 0;
  md.label = o.label;
  md.subsystem = o.subsystem;
  md.uuid = o.uuid.empty() ? NewUuid() : o.uuid;
  md.json = Json::object();
  md.json["keyslots"] = Json::object();
  md.json["tokens"] = Json::object();
  Json seg;
  seg["type"] = "crypt";
  seg["offset"] = U64Str(data_offset);
  seg["size"] = "dynamic";
  seg["iv_tweak"] = "0";
  seg["encryption"] = o.cipher;
  seg["sector_size"] = sector_size;
  md.json["segments"] = {{"0", seg}};
  DS_ASSIGN_OR_RETURN(Json digest, CreatePbkdf2Digest(vk.span(), "sha256", digest_iters));
  const std::string slot = std::to_string(o.keyslot.value_or(0));
  digest["keyslots"] = {slot};
  digest["segments"] = {"0"};
  md.json["digests"] = {{"0", digest}};
  md.json["config"] = {{"json_size", U64Str(o.metadata_size - 4096)},
                       {"keyslots_size", U64Str(keyslots_size)}};

  // ---- write: wipe the header areas, keyslot material, then the header (which syncs) ----
  // Wiping first means a crash before the header is written leaves no stale LUKS header behind
  // that could be mistaken for this one. A file just created is zeros already.
  if (!fresh_file) {
    Bytes zero(1 << 20, 0);
    const uint64_t end = md2 + keyslots_size;
    for (uint64_t off = 0; off < end; off += zero.size()) {
      size_t n = size_t(std::min<uint64_t>(zero.size(), end - off));
      DS_RETURN_IF_ERROR(md_dev.WriteAt(off, std::span<const uint8_t>(zero).first(n)));
    }
  }
  DS_ASSIGN_OR_RETURN(Json ks, CreateLuks2Keyslot(md_dev, md2, area_need, kdf, passphrase, vk.span()));
  md.json["keyslots"][slot] = ks;
  if (before_commit) DS_RETURN_IF_ERROR(before_commit(md, vk));
  DS_RETURN_IF_ERROR(WriteHeader(md_dev, md));
  if (key_out) *key_out = std::move(vk);
  v.read_.primary = {0, true, true, md.seqid, ""};
  v.read_.secondary = {md.hdr_size, true, true, md.seqid, ""};
  return v;
}

Status Volume::CheckRequirements() const {
  for (const auto& r : metadata().requirements()) {
    bool known = std::find_if(std::begin(kKnownRequirements), std::end(kKnownRequirements),
                              [&](const char* k) { return r == k; }) != std::end(kKnownRequirements);
    if (!known)
      return Unsupported(name_ + ": the header requires '" + r +
                         "', which this version of diskseal does not support; refusing to unlock");
  }
  return Status::Ok();
}

Result<Volume::Unlocked> Volume::Unlock(std::span<const uint8_t> passphrase,
                                        std::optional<int> keyslot) const {
  DS_RETURN_IF_ERROR(CheckRequirements());
  std::vector<KeyslotInfo> order;
  std::string skipped;  // slots diskseal cannot use: never tried, named when nothing unlocks
  for (auto& ks : Keyslots(metadata())) {
    const KeyslotHandler* h = FindKeyslotHandler(ks.type);
    if (!h || !h->unlockable()) continue;
    if (keyslot ? ks.id != *keyslot : ks.priority.value_or(1) == 0) continue;
    if (!ks.unusable.empty()) {
      if (keyslot) return Unsupported(name_ + ": " + ks.unusable + "; diskseal cannot use this keyslot");
      skipped += (skipped.empty() ? "" : "; ") + ks.unusable;
      continue;
    }
    order.push_back(ks);
  }
  if (keyslot && order.empty())
    return NotFound(name_ + ": keyslot " + std::to_string(*keyslot) + " is not an active luks2 keyslot");
  std::stable_sort(order.begin(), order.end(), [](const KeyslotInfo& a, const KeyslotInfo& b) {
    return a.priority.value_or(1) > b.priority.value_or(1);
  });
  BlockDevice& md_dev = const_cast<Volume*>(this)->metadata_device();
  Status last;
  for (const auto& ks : order) {
    auto digest = DigestOfKeyslot(metadata(), ks.id);
    if (!digest) continue;
    const DigestHandler* dh = FindDigestHandler(digest->type);
    if (!dh || !digest->unusable.empty()) {
      const std::string why = dh ? digest->unusable : "digest " + std::to_string(digest->id) + ": type '" + digest->type + "' is not supported";
      if (keyslot) return Unsupported(name_ + ": keyslot " + std::to_string(ks.id) + ": " + why);
      skipped += (skipped.empty() ? "" : "; ") + ("keyslot " + std::to_string(ks.id) + ": " + why);
      continue;
    }
    auto key = FindKeyslotHandler(ks.type)->Open(md_dev, ks, passphrase);
    if (!key.ok()) {
      // An unreadable keyslot (I/O, memory, unsupported cipher) is remembered but the next is tried.
      last = key.status();
      if (last.code() == Code::kIOError) return last.WithContext(name_ + ": keyslot " + std::to_string(ks.id));
      continue;
    }
    DS_ASSIGN_OR_RETURN(bool match, dh->Verify(*digest, key->span()));
    if (match) return Unlocked{ks.id, digest->id, std::move(key).value()};
  }
  if (!last.ok() && last.code() != Code::kPermissionDenied && order.size() == 1)
    return last.WithContext(name_ + ": keyslot " + std::to_string(order[0].id));
  return PermissionDenied(name_ + ": no key available with this passphrase" +
                          (skipped.empty() ? "" : " (not tried, unusable: " + skipped + ")"));
}

Result<std::map<int, SecureBuffer>> Volume::UnlockAll(std::span<const uint8_t> passphrase) const {
  std::map<int, SecureBuffer> out;
  for (const auto& ks : Keyslots(metadata())) {
    const KeyslotHandler* h = FindKeyslotHandler(ks.type);
    if (!h || !h->unlockable() || !ks.unusable.empty()) continue;
    auto digest = DigestOfKeyslot(metadata(), ks.id);
    if (!digest || out.count(digest->id)) continue;
    auto u = Unlock(passphrase, ks.id);
    if (u.ok()) out.emplace(u->digest, std::move(u->key));
    else if (u.status().code() != Code::kPermissionDenied) return u.status();
  }
  if (out.empty()) return PermissionDenied(name_ + ": no key available with this passphrase");
  return out;
}

Result<std::pair<uint64_t, uint64_t>> Volume::FindAreaGap(uint64_t need) const {
  const Metadata& md = metadata();
  std::vector<std::pair<uint64_t, uint64_t>> used;
  for (const auto& ks : Keyslots(md)) used.emplace_back(ks.area_offset, ks.area_size);
  std::sort(used.begin(), used.end());
  uint64_t pos = 2 * md.hdr_size;
  for (const auto& [off, len] : used) {
    if (off >= pos + need) break;
    pos = std::max(pos, AlignUp(off + len, kKeyslotsAlign));
  }
  if (pos + need > md.areas_end())
    return Status(Code::kNoMemory, name_ + ": no space left in the keyslots area for a new keyslot");
  return std::pair<uint64_t, uint64_t>{pos, need};
}

Status Volume::WipeArea(uint64_t offset, uint64_t size) {
  Bytes junk(size_t(std::min<uint64_t>(size, 1 << 20)));
  for (uint64_t done = 0; done < size; done += junk.size()) {
    size_t n = size_t(std::min<uint64_t>(junk.size(), size - done));
    DS_RETURN_IF_ERROR(RandomBytes(std::span<uint8_t>(junk).first(n)));
    DS_RETURN_IF_ERROR(md_dev_->WriteAt(offset + done, std::span<const uint8_t>(junk).first(n)));
  }
  return md_dev_->Sync();
}

Result<int> Volume::AddKeyslot(const Unlocked& u, std::span<const uint8_t> passphrase,
                               const PbkdfOptions& pbkdf, std::optional<int> slot) {
  if (passphrase.empty()) return InvalidArgument("the new passphrase is empty");
  Metadata& md = read_.md;
  int id = -1;
  if (slot) {
    if (*slot < 0 || *slot >= kMaxKeyslots) return InvalidArgument("--key-slot must be 0..31");
    if (md.json["keyslots"].contains(std::to_string(*slot)))
      return InvalidArgument(name_ + ": keyslot " + std::to_string(*slot) + " is already in use; choose a free one with --key-slot");
    id = *slot;
  } else {
    for (int i = 0; i < kMaxKeyslots && id < 0; ++i)
      if (!md.json["keyslots"].contains(std::to_string(i))) id = i;
    if (id < 0) return InvalidArgument(name_ + ": all 32 keyslots are in use; remove one first");
  }
  DS_ASSIGN_OR_RETURN(KdfSpec kdf, ChooseKdf(pbkdf));
  DS_ASSIGN_OR_RETURN(auto gap, FindAreaGap(Luks2KeyslotAreaSize(uint32_t(u.key.size()))));
  DS_ASSIGN_OR_RETURN(Json ks, CreateLuks2Keyslot(*md_dev_, gap.first, gap.second, kdf, passphrase,
                                                  u.key.span()));
  const std::string sid = std::to_string(id);
  Metadata before = md;
  md.json["keyslots"][sid] = ks;
  md.json["digests"][std::to_string(u.digest)]["keyslots"].push_back(sid);
  Status s = Commit();
  if (!s.ok()) {
    read_.md = std::move(before);
    return s;
  }
  return id;
}

Status Volume::ChangeKeyslot(const Unlocked& u, std::span<const uint8_t> new_passphrase,
                             const PbkdfOptions& pbkdf) {
  if (new_passphrase.empty()) return InvalidArgument("the new passphrase is empty");
  Metadata& md = read_.md;
  auto old = FindKeyslot(md, u.keyslot);
  if (!old) return NotFound(name_ + ": keyslot " + std::to_string(u.keyslot) + " does not exist");
  DS_ASSIGN_OR_RETURN(KdfSpec kdf, ChooseKdf(pbkdf));
  // The new material goes to a free area so that the old keyslot stays intact until the header
  // that points at the new one is durable.
  DS_ASSIGN_OR_RETURN(auto gap, FindAreaGap(Luks2KeyslotAreaSize(uint32_t(u.key.size()))));
  DS_ASSIGN_OR_RETURN(Json ks, CreateLuks2Keyslot(*md_dev_, gap.first, gap.second, kdf,
                                                  new_passphrase, u.key.span()));
  Json& slot = md.json["keyslots"][std::to_string(u.keyslot)];
  if (slot.contains("priority")) ks["priority"] = slot["priority"];
  Json saved = slot;
  slot = ks;
  Status s = Commit();
  if (!s.ok()) {
    md.json["keyslots"][std::to_string(u.keyslot)] = saved;
    return s;
  }
  return WipeArea(old->area_offset, old->area_size);
}

Status Volume::RemoveKeyslot(int id, bool force) {
  Metadata& md = read_.md;
  const std::string sid = std::to_string(id);
  auto ks = FindKeyslot(md, id);
  if (!ks) return NotFound(name_ + ": keyslot " + std::to_string(id) + " does not exist");
  if (!force && ks->type == "luks2") {
    auto digest = DigestOfKeyslot(md, id);
    int others = 0;
    if (digest && !digest->segments.empty())
      for (int k : digest->keyslots)
        if (k != id) ++others;
    if (digest && !digest->segments.empty() && others == 0)
      return InvalidArgument(name_ + ": keyslot " + sid +
                             " is the last one that unlocks the data; removing it would lose the "
                             "data for good (use --force if that is what you want)");
  }
  Metadata before = md;
  md.json["keyslots"].erase(sid);
  auto drop_ref = [&](Json& section) {
    for (auto& [k, obj] : section.items()) {
      Json& arr = obj["keyslots"];
      Json kept = Json::array();
      for (auto& r : arr)
        if (r != sid) kept.push_back(r);
      arr = kept;
    }
  };
  drop_ref(md.json["digests"]);
  drop_ref(md.json["tokens"]);
  // A digest that no longer serves a keyslot or segment is dropped, as cryptsetup does.
  std::vector<std::string> unused;
  for (auto& [k, d] : md.json["digests"].items())
    if (d["keyslots"].empty() && d["segments"].empty()) unused.push_back(k);
  for (auto& k : unused) md.json["digests"].erase(k);
  Status s = Commit();
  if (!s.ok()) {
    read_.md = std::move(before);
    return s;
  }
  return WipeArea(ks->area_offset, ks->area_size);
}

Result<int> Volume::ImportToken(const Json& token, std::optional<int> id, bool replace) {
  Metadata& md = read_.md;
  DS_RETURN_IF_ERROR(CheckImportedToken(md, token));
  int tid = -1;
  if (id) {
    if (*id < 0 || *id >= kMaxTokens) return InvalidArgument("--token-id must be 0..31");
    if (md.json["tokens"].contains(std::to_string(*id)) && !replace)
      return InvalidArgument(name_ + ": token " + std::to_string(*id) + " already exists (use --token-replace)");
    tid = *id;
  } else {
    for (int i = 0; i < kMaxTokens && tid < 0; ++i)
      if (!md.json["tokens"].contains(std::to_string(i))) tid = i;
    if (tid < 0) return InvalidArgument(name_ + ": all 32 token slots are in use; remove one first");
  }
  Metadata before = md;
  md.json["tokens"][std::to_string(tid)] = token;
  Status s = Commit();
  if (!s.ok()) {
    read_.md = std::move(before);
    return s;
  }
  return tid;
}

Result<Json> Volume::ExportToken(int id) const {
  auto it = metadata().json["tokens"].find(std::to_string(id));
  if (it == metadata().json["tokens"].end())
    return NotFound(name_ + ": token " + std::to_string(id) + " does not exist");
  return *it;
}

Status Volume::RemoveToken(int id) {
  Metadata& md = read_.md;
  if (!md.json["tokens"].contains(std::to_string(id)))
    return NotFound(name_ + ": token " + std::to_string(id) + " does not exist");
  Metadata before = md;
  md.json["tokens"].erase(std::to_string(id));
  Status s = Commit();
  if (!s.ok()) read_.md = std::move(before);
  return s;
}

Status Volume::Commit() {
  if (!md_dev_->writable()) return Internal(name_ + ": volume was opened read-only");
  return WriteHeader(*md_dev_, read_.md);
}

Result<std::unique_ptr<BlockDevice>> Volume::OpenData(const std::map<int, const SecureBuffer*>& keys) {
  DS_RETURN_IF_ERROR(CheckRequirements());
  auto out = std::make_unique<SegmentedDevice>(name_);
  BlockDevice& data = data_device();
  for (const auto& seg : Segments(metadata())) {
    bool backup = std::any_of(seg.flags.begin(), seg.flags.end(),
                              [](const std::string& f) { return f.rfind("backup-", 0) == 0; });
    if (backup) continue;
    if (seg.has_flag("in-reencryption"))
      return Busy(name_ + ": an in-place operation was interrupted here (segment " +
                  std::to_string(seg.id) + " is in-reencryption); run `diskseal resume` first");
    DS_ASSIGN_OR_RETURN(uint64_t bytes, SegmentBytes(seg, data.Size()));
    if (seg.type == "linear") {
      out->Append(std::make_unique<CryptDevice>(&data, seg.offset, bytes, nullptr, 512, 0));
    } else if (seg.type == "crypt") {
      auto d = DigestOfSegment(metadata(), seg.id);
      auto k = d ? keys.find(d->id) : keys.end();
      if (k == keys.end())
        return PermissionDenied(name_ + ": no key for segment " + std::to_string(seg.id));
      DS_ASSIGN_OR_RETURN(auto cipher, SectorCipher::Create(seg.cipher, k->second->span()));
      out->Append(std::make_unique<CryptDevice>(&data, seg.offset, bytes, std::move(cipher),
                                                seg.sector_size, seg.iv_tweak));
    } else {
      return Unsupported(name_ + ": segment " + std::to_string(seg.id) + " has type '" + seg.type +
                         "', which diskseal cannot open");
    }
  }
  return std::unique_ptr<BlockDevice>(std::move(out));
}

}  // namespace ds::luks2
