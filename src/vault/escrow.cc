#include "vault/escrow.h"

#include <unistd.h>

#include <openssl/crypto.h>

#include "crypto/crypto.h"

namespace ds::vault {

namespace {

Result<SecureBuffer> DecodeStored(const SecretBundle& s) {
  // ADE and we store standard base64; be lenient about base64url from other writers.
  std::string_view v = s.value.view();
  auto bytes = Base64Decode(v);
  if (!bytes) bytes = Base64UrlDecode(v);
  if (!bytes) return Corrupt("vault secret " + s.name + "/" + s.version + " is not base64");
  SecureBuffer out(*bytes);
  OPENSSL_cleanse(bytes->data(), bytes->size());
  return out;
}

Result<SecureBuffer> Unwrap(VaultClient& client, const SecretBundle& s) {
  DS_ASSIGN_OR_RETURN(SecureBuffer stored, DecodeStored(s));
  if (s.content_type == kContentTypeBek) return stored;
  if (s.content_type != kContentTypeWrappedBek)
    return Corrupt("vault secret " + s.name + " has contentType '" + s.content_type +
                   "', not BEK or Wrapped BEK");
  auto url = s.tags.find(kTagKekUrl);
  auto alg = s.tags.find(kTagAlgorithm);
  if (url == s.tags.end() || alg == s.tags.end())
    return Corrupt("vault secret " + s.name + " is a Wrapped BEK without " + kTagKekUrl + " and " +
                   kTagAlgorithm + " tags");
  DS_ASSIGN_OR_RETURN(auto kek, ParseObjectId(url->second, "keys"));
  return client.UnwrapKey(kek.first, kek.second, alg->second, stored.span());
}

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace

Result<SecureBuffer> UnwrapEscrowed(VaultClient& client, const SecretBundle& s) { return Unwrap(client, s); }

std::string DefaultSecretName(const std::string& luks_uuid) {
  std::string name = "diskseal-";
  for (char c : luks_uuid)
    if (std::isalnum(uint8_t(c)) || c == '-') name += c;
  return name;
}

Result<SecureBuffer> GeneratePassphrase() {
  uint8_t raw[36];
  DS_RETURN_IF_ERROR(RandomBytes(raw));
  std::string s = Base64UrlEncode(raw);  // 48 characters, no padding
  OPENSSL_cleanse(raw, sizeof raw);
  SecureBuffer out(AsBytes(s));
  OPENSSL_cleanse(s.data(), s.size());
  return out;
}

Result<EscrowRecord> EscrowAndVerify(VaultClient& client, const SecureBuffer& passphrase,
                                     const EscrowRequest& req,
                                     const std::function<Status(const SecureBuffer&)>& verify) {
  if (req.luks_uuid.empty()) return InvalidArgument("escrow needs the volume's LUKS UUID");
  if (passphrase.empty()) return InvalidArgument("escrow: empty passphrase");
  EscrowRecord rec;
  rec.secret_name = req.secret_name.empty() ? DefaultSecretName(req.luks_uuid) : req.secret_name;
  Tags tags = {{kTagKeyFileName, req.key_file_name},
               {kTagMachineName, req.machine_name.empty() ? HostName() : req.machine_name},
               {kTagLuksUuid, req.luks_uuid}};

  // 1. Wrap with the KEK when one is named; the kid returned pins the exact KEK version.
  Bytes stored;
  if (!req.kek.empty()) {
    DS_ASSIGN_OR_RETURN(auto wrapped, client.WrapKey(req.kek, req.kek_version, req.kek_alg,
                                                     passphrase.span()));
    rec.kek_kid = wrapped.first;
    stored = std::move(wrapped.second);
    if (rec.kek_kid.empty()) return Corrupt("vault wrapkey reply has no kid");
    rec.content_type = kContentTypeWrappedBek;
    tags[kTagAlgorithm] = req.kek_alg;
    tags[kTagKekUrl] = rec.kek_kid;
  } else {
    stored.assign(passphrase.data(), passphrase.data() + passphrase.size());
    rec.content_type = kContentTypeBek;
  }
  std::string value = Base64Encode(stored);
  OPENSSL_cleanse(stored.data(), stored.size());

  // 2. Store it.
  auto set = client.SetSecret(rec.secret_name, AsBytes(value), rec.content_type, tags);
  OPENSSL_cleanse(value.data(), value.size());
  if (!set.ok()) return set.status().WithContext("escrow of " + rec.secret_name);
  rec.secret_version = set->version;
  rec.secret_id = set->id;
  if (rec.secret_version.empty()) return Corrupt("vault set-secret reply has no version id");

  // 3. Read back exactly that version, unwrap as a later open would, and compare; any failure
  //    disables the version so FetchEscrowedPassphrase never hands it out.
  Status check = [&]() -> Status {
    DS_ASSIGN_OR_RETURN(SecretBundle back, client.GetSecret(rec.secret_name, rec.secret_version));
    if (back.content_type != rec.content_type)
      return Corrupt("read-back contentType '" + back.content_type + "' differs");
    for (const auto& [k, v] : tags) {
      auto it = back.tags.find(k);
      if (it == back.tags.end() || it->second != v) return Corrupt("read-back tag " + k + " differs");
    }
    DS_ASSIGN_OR_RETURN(SecureBuffer plain, Unwrap(client, back));
    if (plain.size() != passphrase.size() || !plain.Equals(passphrase.span()))
      return Corrupt("read-back passphrase differs from the one stored");
    return verify(plain).WithContext("read-back passphrase does not open the volume");
  }();
  if (!check.ok()) {
    (void)client.SetSecretEnabled(rec.secret_name, rec.secret_version, false);
    return check.WithContext("escrow of " + rec.secret_name + "/" + rec.secret_version +
                             " not verified; nothing may be written");
  }
  return rec;
}

Result<SecureBuffer> FetchEscrowedPassphrase(VaultClient& client, const std::string& secret_name,
                                             const std::string& version) {
  auto got = client.GetSecret(secret_name, version);
  if (!got.ok() && version.empty() && got.status().code() == Code::kPermissionDenied &&
      got.status().message().find("disabled") != std::string::npos) {
    // The newest version was disabled (an escrow that did not verify, see EscrowAndVerify): the
    // key that opens the volume is the newest enabled one. Needs secrets:list; without it the
    // original error stands.
    auto versions = client.ListSecretVersions(secret_name);
    if (!versions.ok()) return got.status();
    const SecretBundle* best = nullptr;
    for (const auto& v : *versions)
      if (v.enabled && (!best || v.created > best->created)) best = &v;
    if (!best) return got.status();
    got = client.GetSecret(secret_name, best->version);
  }
  if (!got.ok()) return got.status();
  const SecretBundle& s = *got;
  auto r = Unwrap(client, s);
  if (!r.ok()) return r.status().WithContext("escrowed key " + secret_name);
  return r;
}

}  // namespace ds::vault
