#include "luks2/token.h"

namespace ds::luks2 {

namespace {

// cryptsetup's built-in kernel-keyring token: {type, keyslots, key_description}.
class KeyringToken final : public TokenHandler {
 public:
  std::string_view type() const override { return "luks2-keyring"; }
  Status Validate(const Json& t, const std::string& id) const override {
    if (!t.contains("key_description") || !t["key_description"].is_string())
      return Corrupt("token " + id + ": a luks2-keyring token needs a key_description string");
    return Status::Ok();
  }
};

}  // namespace

const TokenHandler* FindTokenHandler(std::string_view type) {
  static const KeyringToken keyring;
  return type == keyring.type() ? &keyring : nullptr;
}

Status CheckImportedToken(const Metadata& md, const Json& t) {
  if (!t.is_object()) return InvalidArgument("a token must be a JSON object");
  if (!t.contains("type") || !t["type"].is_string() || t["type"].get<std::string>().empty())
    return InvalidArgument("a token needs a non-empty \"type\" string");
  if (!t.contains("keyslots") || !t["keyslots"].is_array())
    return InvalidArgument("a token needs a \"keyslots\" array");
  for (const auto& k : t["keyslots"]) {
    if (!k.is_string() || !ParseU64(k.get<std::string>()))
      return InvalidArgument("token keyslots must be decimal strings");
    if (!md.json["keyslots"].contains(k.get<std::string>()))
      return InvalidArgument("token refers to keyslot " + k.get<std::string>() + ", which does not exist");
  }
  const std::string type = t["type"].get<std::string>();
  if (type.rfind("luks2-", 0) == 0) {
    const TokenHandler* h = FindTokenHandler(type);
    if (!h) return InvalidArgument("token type '" + type + "' is reserved (luks2- prefix) and unknown");
    Status s = h->Validate(t, "(new)");
    if (!s.ok()) return InvalidArgument(s.message());
  }
  return Status::Ok();
}

}  // namespace ds::luks2
