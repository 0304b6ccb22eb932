#include "engine/binding.h"

#include <algorithm>
#include <filesystem>

#include "luks2/volume.h"
#include "volume/signature.h"

namespace ds::engine {

using luks2::Json;

namespace {

std::optional<Signature> SignatureOf(std::span<const uint8_t> bytes) {
  auto sig = volume::ProbeSignature(bytes);
  if (!sig) return std::nullopt;
  return Signature{sig->type, sig->uuid};
}

std::string Describe(const std::optional<Signature>& s) {
  return s ? "filesystem " + s->type + (s->uuid.empty() ? "" : " (UUID " + s->uuid + ")") : "no recognisable filesystem";
}

bool HasFlag(const Json& seg, const char* flag) {
  if (!seg.contains("flags") || !seg["flags"].is_array()) return false;
  return std::find(seg["flags"].begin(), seg["flags"].end(), flag) != seg["flags"].end();
}

std::optional<std::string> SegmentWithFlag(const Json& segs, const char* flag) {
  for (const auto& [k, s] : segs.items())
    if (HasFlag(s, flag)) return k;
  return std::nullopt;
}

Status WrongDevice(const std::string& header, const std::string& device, const std::string& why) {
  return Corrupt(header + " belongs to another device than " + device + ": " + why +
                 "; refusing to use them together (nothing was written)");
}

}  // namespace

Result<std::optional<Signature>> ProbeStart(BlockDevice& dev) {
  Bytes b(size_t(std::min<uint64_t>(kProbeBytes, dev.Size())));
  if (!b.empty()) DS_RETURN_IF_ERROR(dev.ReadAt(0, b));
  return SignatureOf(b);
}

std::vector<std::string> StableIds(Env& env, const std::string& path, const std::string& disk_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  const auto want = std::filesystem::canonical(path, ec);
  if (ec || !std::filesystem::is_block_file(want, ec)) return out;
  auto scan = [&](const std::string& sub, auto keep, const std::string& prefix) {
    auto names = env.ListDir(disk_dir + "/" + sub);
    if (!names.ok()) return;
    for (const auto& n : *names) {
      if (!keep(n)) continue;
      std::error_code e2;
      auto target = std::filesystem::canonical(std::filesystem::path(disk_dir) / sub / n, e2);
      if (!e2 && target == want) out.push_back(prefix + n);
    }
  };
  scan("by-id", [](const std::string& n) {
    return n.rfind("wwn-", 0) == 0 || n.rfind("nvme-eui.", 0) == 0 || n.rfind("nvme-uuid.", 0) == 0;
  }, "");
  scan("by-partuuid", [](const std::string&) { return true; }, "partuuid:");
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::optional<Binding>> ReadBinding(const luks2::Metadata& md) {
  if (!md.json.contains("tokens")) return std::optional<Binding>();
  for (const auto& [k, t] : md.json["tokens"].items()) {
    if (luks2::StrOr(t, "type") != kBindingToken) continue;
    Binding b;
    auto size = t.contains("size") ? luks2::JsonU64(t["size"]) : std::nullopt;
    if (!size) return Corrupt("token " + k + ": a " + std::string(kBindingToken) + " token needs a \"size\"");
    b.size = *size;
    if (t.contains("ids") && t["ids"].is_array())
      for (const auto& id : t["ids"])
        if (id.is_string()) b.ids.push_back(id.get<std::string>());
    if (auto fs = t.find("fs"); fs != t.end() && fs->is_object()) {
      Signature sig;
      if (auto ty = fs->find("type"); ty != fs->end() && ty->is_string()) sig.type = ty->get<std::string>();
      if (auto u = fs->find("uuid"); u != fs->end() && u->is_string()) sig.uuid = u->get<std::string>();
      b.fs = sig;
    }
    return std::optional<Binding>(b);
  }
  return std::optional<Binding>();
}

namespace {
Result<std::optional<Binding>> ReadBindingOf(const luks2::Metadata& md, const std::string& header) {
  auto b = ReadBinding(md);
  if (!b.ok()) return b.status().WithContext(header);
  return b;
}
}  // namespace

void WriteBinding(luks2::Metadata& md, const Binding& b) {
  Json& tokens = md.json["tokens"];
  std::string id;
  for (const auto& [k, t] : tokens.items())
    if (luks2::StrOr(t, "type") == kBindingToken) id = k;
  if (id.empty()) {
    int i = 0;
    while (tokens.contains(std::to_string(i))) ++i;
    id = std::to_string(i);
  }
  Json t = {{"type", kBindingToken}, {"keyslots", Json::array()}, {"size", luks2::U64Str(b.size)},
            {"ids", b.ids}};
  if (b.fs) t["fs"] = {{"type", b.fs->type}, {"uuid", b.fs->uuid}};
  tokens[id] = t;
}

Status CheckIdentity(const luks2::Metadata& md, const std::string& header, const std::string& device,
                     uint64_t size, const std::vector<std::string>& ids, bool in_progress) {
  DS_ASSIGN_OR_RETURN(auto b, ReadBindingOf(md, header));
  if (!b) return Status::Ok();
  if (in_progress ? size != b->size : size < b->size)
    return WrongDevice(header, device, "it was made for a device of " + std::to_string(b->size) + " bytes, " +
                                           device + " has " + std::to_string(size));
  if (!b->ids.empty() && !ids.empty() &&
      std::none_of(ids.begin(), ids.end(), [&](const std::string& i) {
        return std::find(b->ids.begin(), b->ids.end(), i) != b->ids.end();
      }))
    return WrongDevice(header, device, "it was made for the device " + b->ids.front() + ", " + device + " is " +
                                           ids.front());
  return Status::Ok();
}

Result<std::vector<PlainView>> ProbePlaintext(luks2::Volume& v, const std::map<int, const SecureBuffer*>& keys) {
  const Json segs = v.metadata().json["segments"];
  // Each view: the segments, and for a hotzone the backup segment whose parameters it carries.
  std::vector<std::pair<Json, std::string>> variants;
  const auto hot = SegmentWithFlag(segs, "in-reencryption");
  if (!hot) {
    variants.emplace_back(segs, "");
  } else {
    // A data-shift hotzone reads from another place than it writes: no prediction is made there.
    if (SegmentWithFlag(segs, "backup-moved-segment")) return std::vector<PlainView>();
    const auto prev = SegmentWithFlag(segs, "backup-previous");
    const auto fin = SegmentWithFlag(segs, "backup-final");
    if (!prev || !fin) return std::vector<PlainView>();
    for (const auto& which : {*fin, *prev}) {
      Json s = segs;
      const Json& h = segs[*hot];
      const Json& p = segs[which];
      Json n = {{"type", p["type"]}, {"offset", h["offset"]}, {"size", h["size"]}};
      if (p["type"] == "crypt") {
        const uint64_t data_start = luks2::JsonU64(p["offset"]).value_or(0);
        const uint64_t off = luks2::JsonU64(h["offset"]).value_or(0);
        n["encryption"] = p["encryption"];
        n["sector_size"] = p["sector_size"];
        n["iv_tweak"] = luks2::U64Str((off - data_start) / 512 + luks2::JsonU64(p["iv_tweak"]).value_or(0));
      }
      s[*hot] = n;
      variants.emplace_back(std::move(s), which);
    }
  }
  const luks2::Metadata saved = v.metadata();
  std::vector<PlainView> out;
  Status st = Status::Ok();
  for (const auto& [s, from] : variants) {
    luks2::Metadata& md = v.mutable_metadata();
    md = saved;
    md.json["segments"] = s;
    if (hot) {
      // The hotzone segment takes the key of the backup segment whose parameters it carries.
      for (auto& [dk, d] : md.json["digests"].items()) {
        Json kept = Json::array();
        for (const auto& sid : d["segments"])
          if (sid != *hot) kept.push_back(sid);
        if (std::find(d["segments"].begin(), d["segments"].end(), from) != d["segments"].end()) kept.push_back(*hot);
        d["segments"] = kept;
      }
    }
    auto plain = v.OpenData(keys);
    if (!plain.ok()) {
      // A view this caller holds no key for (one passphrase of an in-progress reencryption
      // opens one key) is no evidence either way.
      if (plain.status().code() == Code::kPermissionDenied) continue;
      st = plain.status();
      break;
    }
    auto sig = ProbeStart(**plain);
    if (!sig.ok()) {
      st = sig.status();
      break;
    }
    const Json& first = s.contains("0") ? s["0"] : s.front();  // the segment at plaintext offset 0
    out.push_back(PlainView{*sig, first["type"] == "crypt"});
  }
  v.mutable_metadata() = saved;
  DS_RETURN_IF_ERROR(st);
  return out;
}

Status CheckFingerprint(const luks2::Metadata& md, const std::string& header, const std::string& device,
                        const std::vector<PlainView>& views) {
  DS_ASSIGN_OR_RETURN(auto b, ReadBindingOf(md, header));
  if (!b || !b->fs || views.empty()) return Status::Ok();
  for (const auto& w : views)
    if (w.sig && *w.sig == *b->fs) return Status::Ok();
  // A valid superblock that came through the header's cipher: the key is right, the filesystem
  // was made anew inside the volume.
  for (const auto& w : views)
    if (w.sig && w.through_cipher) return Status::Ok();
  return WrongDevice(header, device, "it was made for a plaintext holding " + Describe(b->fs) + ", and " +
                                         device + " read through it shows " + Describe(views.front().sig));
}

Status CheckBindingKeyless(Env& env, luks2::Volume& v, const std::string& header) {
  if (!v.detached()) return Status::Ok();
  const bool in_progress = SegmentWithFlag(v.metadata().json["segments"], "backup-final").has_value();
  return CheckIdentity(v.metadata(), header, v.name(), v.data_device().Size(), StableIds(env, v.name()), in_progress);
}

Status CheckBindingUnlocked(luks2::Volume& v, const std::string& header,
                            const std::map<int, const SecureBuffer*>& keys) {
  if (!v.detached()) return Status::Ok();
  DS_ASSIGN_OR_RETURN(auto b, ReadBindingOf(v.metadata(), header));
  if (!b || !b->fs) return Status::Ok();
  DS_ASSIGN_OR_RETURN(auto views, ProbePlaintext(v, keys));
  return CheckFingerprint(v.metadata(), header, v.name(), views);
}

Result<Binding> CurrentBinding(Env& env, luks2::Volume& v, const std::map<int, const SecureBuffer*>& keys) {
  Binding b;
  b.size = v.data_device().Size();
  b.ids = StableIds(env, v.name());
  DS_ASSIGN_OR_RETURN(auto views, ProbePlaintext(v, keys));
  for (const auto& w : views)
    if (w.sig) {
      b.fs = w.sig;
      break;
    }
  return b;
}

Result<Binding> PlaintextBinding(Env& env, BlockDevice& dev, const std::string& path) {
  Binding b;
  b.size = dev.Size();
  DS_ASSIGN_OR_RETURN(b.fs, ProbeStart(dev));
  b.ids = StableIds(env, path);
  return b;
}

}  // namespace ds::engine
