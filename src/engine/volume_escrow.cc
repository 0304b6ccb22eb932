#include "engine/volume_escrow.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include <openssl/crypto.h>

#include "engine/binding.h"
#include "luks2/digest.h"
#include "luks2/header_io.h"

namespace ds::engine {

using namespace vault;  // this file speaks the vault client's types throughout

namespace {

constexpr size_t kMaxSecretValue = 25 * 1024;  // Azure Key Vault's limit, and ours

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// The escrowed volume key, checked against the header's digests: a header in mid-operation keeps
// its new key's digest with no segment yet, so any digest of `md` that verifies will do; a final
// header (`segment0`) must have it as the digest of its one data segment.
Status CheckVolumeKey(const luks2::Metadata& md, const SecureBuffer& vk, bool segment0 = false) {
  std::vector<luks2::DigestInfo> digests;
  if (segment0) {
    auto d = luks2::DigestOfSegment(md, 0);
    if (!d) return Corrupt("the header has no digest for segment 0");
    digests.push_back(*d);
  } else {
    digests = luks2::Digests(md);
  }
  for (const auto& d : digests) {
    const luks2::DigestHandler* h = luks2::FindDigestHandler(d.type);
    if (!h) continue;
    DS_ASSIGN_OR_RETURN(bool ok, h->Verify(d, vk.span()));
    if (ok) return Status::Ok();
  }
  return Corrupt("the escrowed volume key does not match the header's digest");
}

// A parsed header secret.
struct Envelope {
  std::string state, passphrase_secret;
  luks2::Metadata md;  // hdr_size, uuid, label, subsystem, json
  Bytes stored_key;    // base64-decoded volume_key (wrapped when kek is set)
  std::string kek, alg;
};

Result<Envelope> ParseEnvelope(const SecretBundle& s) {
  const std::string where = "vault secret " + s.name + "/" + s.version;
  if (s.content_type != kContentTypeHeader)
    return Corrupt(where + " has contentType '" + s.content_type + "', not " + kContentTypeHeader);
  luks2::Json j = luks2::Json::parse(s.value.view(), nullptr, false);
  if (!j.is_object() || luks2::StrOr(j, "format") != kHeaderFormat || !j.contains("luks2") || !j["luks2"].is_object())
    return Corrupt(where + " is not a " + std::string(kHeaderFormat) + " document");
  Envelope e;
  e.state = luks2::StrOr(j, "state");
  e.passphrase_secret = luks2::StrOr(j, "passphrase_secret");
  e.kek = luks2::StrOr(j, "volume_key_kek");
  e.alg = luks2::StrOr(j, "volume_key_alg");
  auto hs = j.find("hdr_size");
  if (hs == j.end() || !hs->is_number_unsigned()) return Corrupt(where + ": no hdr_size");
  e.md.hdr_size = hs->get<uint64_t>();
  e.md.uuid = luks2::StrOr(j, "uuid");
  e.md.label = luks2::StrOr(j, "label");
  e.md.subsystem = luks2::StrOr(j, "subsystem");
  e.md.json = j["luks2"];
  auto key = Base64Decode(luks2::StrOr(j, "volume_key"));
  if (!key || key->empty()) return Corrupt(where + ": no volume_key");
  e.stored_key = std::move(*key);
  Status valid = luks2::Validate(e.md);
  if (!valid.ok()) return valid.WithContext(where + ": the escrowed LUKS2 metadata");
  return e;
}

Result<SecureBuffer> UnwrapVolumeKey(VaultClient& client, const Envelope& e) {
  if (e.kek.empty()) return SecureBuffer(e.stored_key);
  DS_ASSIGN_OR_RETURN(auto kek, ParseObjectId(e.kek, "keys"));
  return client.UnwrapKey(kek.first, kek.second, e.alg, e.stored_key);
}

// The newest enabled version of `name` (a version EscrowAndVerify or this file disabled is
// skipped, as FetchEscrowedPassphrase does).
Result<SecretBundle> NewestEnabled(VaultClient& client, const std::string& name) {
  auto got = client.GetSecret(name);
  if (!got.ok() && got.status().code() == Code::kPermissionDenied &&
      got.status().message().find("disabled") != std::string::npos) {
    DS_ASSIGN_OR_RETURN(auto versions, client.ListSecretVersions(name));
    const SecretBundle* best = nullptr;
    for (const auto& v : versions)
      if (v.enabled && (!best || v.created > best->created)) best = &v;
    if (!best) return got.status();
    return client.GetSecret(name, best->version);
  }
  return got;
}

struct HeaderEscrow {
  std::string name;
  std::string kek, kek_version, alg;  // empty kek: stored unwrapped
  std::string machine, passphrase_secret;
};

// Stores `md` + `vk` as a new version of the header secret, reads that version back and checks
// it; a version that fails the check is disabled. Returns the stored version's id.
Result<std::string> StoreHeader(VaultClient& client, const HeaderEscrow& h, const luks2::Metadata& md,
                                const SecureBuffer& vk, const std::string& state) {
  DS_RETURN_IF_ERROR(CheckVolumeKey(md, vk).WithContext(md.uuid));
  luks2::Json j = luks2::Json::object();
  j["format"] = kHeaderFormat;
  j["state"] = state;
  j["uuid"] = md.uuid;
  j["label"] = md.label;
  j["subsystem"] = md.subsystem;
  j["hdr_size"] = md.hdr_size;
  j["passphrase_secret"] = h.passphrase_secret;
  j["luks2"] = md.json;
  Tags tags = {{kTagMachineName, h.machine}, {kTagLuksUuid, md.uuid}, {"DisksealHeaderState", state}};
  std::string key_b64;
  if (!h.kek.empty()) {
    DS_ASSIGN_OR_RETURN(auto wrapped, client.WrapKey(h.kek, h.kek_version, h.alg, vk.span()));
    if (wrapped.first.empty()) return Corrupt("vault wrapkey reply has no kid");
    key_b64 = Base64Encode(wrapped.second);
    j["volume_key_kek"] = wrapped.first;
    j["volume_key_alg"] = h.alg;
    tags[kTagKekUrl] = wrapped.first;
    tags[kTagAlgorithm] = h.alg;
  } else {
    key_b64 = Base64Encode(vk.span());
  }
  j["volume_key"] = key_b64;
  OPENSSL_cleanse(key_b64.data(), key_b64.size());
  std::string value = luks2::SerializeJson(j);
  if (auto it = j.find("volume_key"); it != j.end()) {
    std::string& s = it->get_ref<std::string&>();
    OPENSSL_cleanse(s.data(), s.size());
  }
  SecureBuffer secret_value(AsBytes(value));
  OPENSSL_cleanse(value.data(), value.size());
  if (secret_value.size() > kMaxSecretValue)
    return Unsupported(h.name + ": the header's metadata is " + std::to_string(secret_value.size()) +
                       " bytes as a secret, over the vault's 25 KiB limit for a secret value");
  auto set = client.SetSecret(h.name, secret_value.span(), kContentTypeHeader, tags);
  if (!set.ok()) return set.status().WithContext("escrow of " + h.name);
  if (set->version.empty()) return Corrupt("vault set-secret reply has no version id");
  Status check = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(SecretBundle back, client.GetSecret(h.name, set->version));
    if (!back.value.Equals(secret_value.span())) return Corrupt("read-back header differs from the one stored");
    DS_ASSIGN_OR_RETURN(Envelope e, ParseEnvelope(back));
    DS_ASSIGN_OR_RETURN(SecureBuffer key, UnwrapVolumeKey(client, e));
    if (!key.Equals(vk.span())) return Corrupt("read-back volume key differs");
    return CheckVolumeKey(e.md, key);
  }();
  if (!check.ok()) {
    (void)client.SetSecretEnabled(h.name, set->version, false);
    return check.WithContext("escrow of " + h.name + "/" + set->version + " not verified");
  }
  return set->id;
}

luks2::Json PinToken(const EscrowPin& p) {
  luks2::Json t = luks2::Json::object();
  t["type"] = kEscrowTokenType;
  t["keyslots"] = luks2::Json::array();
  t["passphrase_secret"] = p.passphrase_secret;
  if (!p.header_secret.empty()) {
    t["header_secret"] = p.header_secret;
    t["header_state"] = p.header_state;
  }
  return t;
}

// Writes `pin` into the header (replacing an existing pin) and commits.
Status WritePin(luks2::Volume& v, const EscrowPin& pin) {
  std::optional<int> id;
  if (pin.token_id >= 0) id = pin.token_id;
  auto r = v.ImportToken(PinToken(pin), id, true);
  return r.ok() ? Status::Ok() : r.status().WithContext(v.name() + ": writing the escrow token");
}

}  // namespace

std::string HeaderSecretName(const std::string& passphrase_secret_name) {
  return passphrase_secret_name + "-header";
}

Result<std::optional<EscrowPin>> ReadEscrowPin(const luks2::Metadata& md) {
  const luks2::Json& ts = md.json.contains("tokens") ? md.json["tokens"] : luks2::Json();
  if (!ts.is_object()) return std::optional<EscrowPin>();
  for (auto it = ts.begin(); it != ts.end(); ++it) {
    if (luks2::StrOr(it.value(), "type") != kEscrowTokenType) continue;
    EscrowPin p;
    p.token_id = std::atoi(it.key().c_str());
    p.passphrase_secret = luks2::StrOr(it.value(), "passphrase_secret");
    p.header_secret = luks2::StrOr(it.value(), "header_secret");
    p.header_state = luks2::StrOr(it.value(), "header_state");
    if (p.passphrase_secret.empty() || !ParseObjectId(p.passphrase_secret, "secrets").ok())
      return Corrupt("LUKS2 token " + it.key() + " (" + kEscrowTokenType + ") names no secret version");
    return std::optional<EscrowPin>(std::move(p));
  }
  return std::optional<EscrowPin>();
}

Status MarkHeaderEscrowStale(luks2::Volume& v) {
  DS_ASSIGN_OR_RETURN(auto pin, ReadEscrowPin(v.metadata()));
  if (!pin || pin->header_secret.empty()) return Status::Ok();
  pin->header_state = "stale";
  return WritePin(v, *pin);
}

bool FinalHeaderEscrowPending(const luks2::Metadata& md) {
  auto pin = ReadEscrowPin(md);
  return pin.ok() && *pin && !(*pin)->header_secret.empty() && (*pin)->header_state != "final";
}

Result<EscrowRecord> EscrowNewVolume(Env& env, VaultClient& client, const std::string& device,
                                     const std::string& header_path, bool escrow_header,
                                     const SecureBuffer& pass, const SecureBuffer& vk,
                                     const EscrowRequest& req) {
  auto verify = [&](const SecureBuffer& p) -> Status {
    DS_ASSIGN_OR_RETURN(luks2::Volume check, luks2::Volume::Load(env, device, header_path, false));
    auto u = check.Unlock(p.span());
    if (!u.ok()) return u.status();
    if (!u->key.Equals(vk.span())) return Corrupt("the escrowed passphrase opens a different key");
    return Status::Ok();
  };
  DS_ASSIGN_OR_RETURN(EscrowRecord rec, EscrowAndVerify(client, pass, req, verify));
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env, device, header_path, true));
  EscrowPin pin;
  pin.passphrase_secret = rec.secret_id;
  if (escrow_header) {
    HeaderEscrow h;
    h.name = HeaderSecretName(rec.secret_name);
    h.kek = req.kek;
    h.kek_version = req.kek_version;
    h.alg = req.kek_alg;
    h.machine = req.machine_name.empty() ? HostName() : req.machine_name;
    h.passphrase_secret = rec.secret_id;
    DS_ASSIGN_OR_RETURN(pin.header_secret, StoreHeader(client, h, v.metadata(), vk, "encrypting"));
    pin.header_state = "encrypting";
  }
  DS_RETURN_IF_ERROR(WritePin(v, pin));
  return rec;
}

Status EscrowFinalHeaderIfPending(VaultClient& client, luks2::Volume& v, const SecureBuffer& vk,
                                  std::ostream& log) {
  DS_ASSIGN_OR_RETURN(auto pin, ReadEscrowPin(v.metadata()));
  if (!pin || pin->header_secret.empty() || pin->header_state == "final") return Status::Ok();
  // Only an encrypted volume has a header worth recovering (a decrypt that finished has none).
  const auto segs = luks2::Segments(v.metadata());
  if (segs.size() != 1 || segs.front().type != "crypt") return Status::Ok();
  // The same secret, KEK and machine as the escrow before the first data block.
  DS_ASSIGN_OR_RETURN(auto id, ParseObjectId(pin->header_secret, "secrets"));
  DS_ASSIGN_OR_RETURN(SecretBundle before, client.GetSecret(id.first, id.second));
  DS_ASSIGN_OR_RETURN(Envelope e, ParseEnvelope(before));
  HeaderEscrow h;
  h.name = id.first;
  if (!e.kek.empty()) {
    DS_ASSIGN_OR_RETURN(auto kek, ParseObjectId(e.kek, "keys"));
    h.kek = kek.first;
    h.kek_version = kek.second;
    h.alg = e.alg;
  }
  auto machine = before.tags.find(kTagMachineName);
  h.machine = machine != before.tags.end() ? machine->second : HostName();
  h.passphrase_secret = pin->passphrase_secret;
  DS_ASSIGN_OR_RETURN(std::string final_id, StoreHeader(client, h, v.metadata(), vk, "final"));
  pin->header_secret = final_id;
  pin->header_state = "final";
  DS_RETURN_IF_ERROR(WritePin(v, *pin));
  log << v.name() << ": final header escrowed and verified as " << final_id << "\n";
  return Status::Ok();
}

Result<SecureBuffer> FetchPinnedPassphrase(VaultClient& client, const EscrowPin& pin,
                                           const std::string& luks_uuid) {
  DS_ASSIGN_OR_RETURN(auto id, ParseObjectId(pin.passphrase_secret, "secrets"));
  auto got = client.GetSecret(id.first, id.second);
  if (!got.ok()) return got.status().WithContext("escrowed key " + id.first + "/" + id.second + " (pinned by the volume)");
  auto uuid = got->tags.find(kTagLuksUuid);
  if (uuid == got->tags.end() || uuid->second != luks_uuid)
    return Corrupt("vault secret " + id.first + "/" + id.second + " is not tagged " + kTagLuksUuid + "=" + luks_uuid);
  auto r = UnwrapEscrowed(client, *got);
  if (!r.ok()) return r.status().WithContext("escrowed key " + id.first + "/" + id.second);
  return r;
}

Status RecoverHeader(Env& env, VaultClient& client, const std::string& device,
                     const std::string& header_secret_name, const std::string& new_header,
                     const luks2::PbkdfOptions& pbkdf, std::ostream& log) {
  if (env.Exists(new_header)) return Busy(new_header + ": exists; recover writes a new header file only");
  {
    DS_ASSIGN_OR_RETURN(auto d, env.Open(device, OpenOptions{}));
    DS_ASSIGN_OR_RETURN(bool luks, luks2::HasLuksMagic(*d));
    if (luks) return Busy(device + ": has a LUKS header at its start; recover rebuilds detached headers only");
  }
  DS_ASSIGN_OR_RETURN(SecretBundle s, NewestEnabled(client, header_secret_name));
  DS_ASSIGN_OR_RETURN(Envelope e, ParseEnvelope(s));
  const std::string where = header_secret_name + "/" + s.version;
  if (e.state != "final")
    return Busy(where + " was escrowed before the encryption of " + device +
                " finished and never replaced by the final header: how far the data got was recorded only in "
                "the lost header, so no header can be rebuilt safely");
  const auto segs = luks2::Segments(e.md);
  if (segs.size() != 1 || segs.front().id != 0 || segs.front().type != "crypt" || !luks2::DigestOfSegment(e.md, 0))
    return Corrupt(where + ": the escrowed header does not describe one encrypted segment");
  DS_ASSIGN_OR_RETURN(SecureBuffer vk, UnwrapVolumeKey(client, e));
  DS_RETURN_IF_ERROR(CheckVolumeKey(e.md, vk, true).WithContext(where));
  if (e.passphrase_secret.empty()) return Corrupt(where + ": names no passphrase secret");
  EscrowPin pin;
  pin.passphrase_secret = e.passphrase_secret;
  pin.header_secret = s.id;
  pin.header_state = "final";
  DS_ASSIGN_OR_RETURN(SecureBuffer pass, FetchPinnedPassphrase(client, pin, e.md.uuid));

  luks2::FormatOptions f;
  f.cipher = segs.front().cipher;
  f.key_size_bits = uint32_t(vk.size() * 8);
  f.sector_size = segs.front().sector_size;
  f.metadata_size = e.md.hdr_size;
  f.keyslots_size = e.md.keyslots_size();
  f.offset_sectors = segs.front().offset / 512;
  f.label = e.md.label;
  f.subsystem = e.md.subsystem;
  f.uuid = e.md.uuid;
  f.pbkdf = pbkdf;
  f.volume_key = &vk;
  // Tokens that referred only to keyslot 0 (the passphrase's, rebuilt) are kept; others name
  // keyslots that are not rebuilt and are dropped; the pin is written afresh.
  luks2::Json tokens = luks2::Json::object();
  for (const auto& t : luks2::Tokens(e.md)) {
    if (t.type == kEscrowTokenType) continue;
    if (std::any_of(t.keyslots.begin(), t.keyslots.end(), [](int k) { return k != 0; })) {
      log << device << ": token " << t.id << " (" << t.type << ") names keyslots that are not rebuilt; dropped\n";
      continue;
    }
    tokens[std::to_string(t.id)] = t.raw;
  }
  auto hook = [&](luks2::Metadata& md, const SecureBuffer&) -> Status {
    md.json["segments"] = e.md.json["segments"];
    md.json["tokens"] = tokens;
    return Status::Ok();
  };
  const std::string tmp = new_header + ".diskseal-new";
  if (env.Exists(tmp)) DS_RETURN_IF_ERROR(env.Remove(tmp));
  Status made = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Format(env, device, tmp, f, pass.span(), hook));
    DS_RETURN_IF_ERROR(WritePin(v, pin));
    DS_ASSIGN_OR_RETURN(luks2::Volume check, luks2::Volume::Load(env, device, tmp, false));
    // The escrowed binding token came along (it names no keyslot): this device must be the one
    // the header was made for, before the header is put where `open` would use it.
    DS_RETURN_IF_ERROR(CheckBindingKeyless(env, check, new_header));
    DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u, check.Unlock(pass.span()));
    if (!u.key.Equals(vk.span())) return Corrupt("the rebuilt header opens a different key");
    return CheckBindingUnlocked(check, new_header, {{u.digest, &u.key}});
  }();
  if (!made.ok()) {
    (void)env.Remove(tmp);
    return made.WithContext(device + ": rebuilding the header from " + where);
  }
  DS_RETURN_IF_ERROR(env.Rename(tmp, new_header));
  log << device << ": header rebuilt from " << s.id << " into " << new_header << "\n";
  return Status::Ok();
}

Status RestoreHeader(Env& env, VaultClient& client, const std::string& device,
                     const std::string& header_secret_name, const std::string& header,
                     const luks2::PbkdfOptions& pbkdf, std::ostream& log) {
  const bool present = env.Exists(header);
  if (present) {
    // The header alone, without the device: "loads" means either copy reads as LUKS2.
    DS_ASSIGN_OR_RETURN(auto h, env.Open(header, OpenOptions{}));
    auto read = luks2::ReadHeader(*h);
    if (read.ok())
      return InvalidArgument(header + ": reads as the LUKS2 header " + read->md.uuid +
                             "; nothing to restore from the vault (`diskseal repair " + device + " --header " +
                             header + "` without --vault rewrites a damaged copy from the intact one)");
  }
  // Rebuilt beside it first: the unreadable file stays where it is until the new one is checked.
  const std::string fresh = header + ".diskseal-restored";
  if (env.Exists(fresh)) DS_RETURN_IF_ERROR(env.Remove(fresh));
  DS_RETURN_IF_ERROR(RecoverHeader(env, client, device, header_secret_name, fresh, pbkdf, log));
  if (present) {
    std::string keep = header + ".damaged";
    for (int i = 1; env.Exists(keep); ++i) {
      if (i > 999) {
        (void)env.Remove(fresh);
        return Busy(header + ".damaged.1 to .999 exist; remove the old copies of the damaged header first");
      }
      keep = header + ".damaged." + std::to_string(i);
    }
    Status moved = env.Rename(header, keep);
    if (!moved.ok()) {
      (void)env.Remove(fresh);
      return moved.WithContext(header + ": keeping the damaged header");
    }
    log << header << ": the unreadable header is kept as " << keep << "\n";
  }
  DS_RETURN_IF_ERROR(env.Rename(fresh, header));
  log << device << ": header restored from the vault into " << header << "\n";
  return Status::Ok();
}

Result<EscrowedHeader> NewestEscrowedHeader(VaultClient& client, const std::string& header_secret_name) {
  DS_ASSIGN_OR_RETURN(SecretBundle s, NewestEnabled(client, header_secret_name));
  DS_ASSIGN_OR_RETURN(Envelope e, ParseEnvelope(s));
  EscrowedHeader h;
  h.id = s.id;
  h.version = s.version;
  h.state = e.state;
  h.uuid = e.md.uuid;
  const auto segs = luks2::Segments(e.md);
  h.finished = segs.size() == 1 && segs.front().type == "crypt";
  if (h.finished)
    if (auto d = luks2::DigestOfSegment(e.md, 0)) h.segment0_digest = d->digest;
  return h;
}

}  // namespace ds::engine
