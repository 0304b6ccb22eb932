// The "reencrypt" keyslot: no key material, only the state of an in-place operation (mode,
// direction, resilience area). Validated here; the engine reads and writes it.
#include "luks2/keyslot.h"

namespace ds::luks2 {

namespace {

Status Rule(const std::string& id, const std::string& what) {
  return Corrupt("keyslot " + id + " (reencrypt): " + what);
}

class ReencryptKeyslot final : public KeyslotHandler {
 public:
  std::string_view type() const override { return "reencrypt"; }

  Status Validate(const Json& ks, const std::string& id) const override {
    if (JsonU32(ks["key_size"]) != 1u) return Rule(id, "key_size must be 1");
    const std::string mode = StrOr(ks, "mode");
    if (mode != "reencrypt" && mode != "encrypt" && mode != "decrypt")
      return Rule(id, "mode must be reencrypt, encrypt or decrypt");
    const std::string dir = StrOr(ks, "direction");
    if (dir != "forward" && dir != "backward") return Rule(id, "direction must be forward or backward");
    const Json& area = ks["area"];
    if (!area.contains("type") || !area["type"].is_string()) return Rule(id, "area.type must be a string");
    const std::string at = area["type"].get<std::string>();
    bool checksum = at == "checksum" || at == "datashift-checksum";
    bool shift = at == "datashift" || at == "datashift-checksum" || at == "datashift-journal";
    if (!(checksum || shift || at == "none" || at == "journal"))
      return Rule(id, "area.type '" + at + "' is not a known resilience mode");
    if (checksum) {
      if (!area.contains("hash") || !area["hash"].is_string() || area["hash"].get_ref<const std::string&>().empty())
        return Rule(id, "a checksum area needs a hash (a non-empty string)");
      if (!area.contains("sector_size") || !area["sector_size"].is_number_integer())
        return Rule(id, "a checksum area needs an integer sector_size");
      auto ss = JsonU32(area["sector_size"]);
      if (!ss || *ss < 512 || *ss > 4096 || (*ss & (*ss - 1)))
        return Rule(id, "area.sector_size must be a power of 2 from 512 to 4096");
    }
    if (shift && (!area.contains("shift_size") || !JsonU64(area["shift_size"]) ||
                  *JsonU64(area["shift_size"]) % 512))
      return Rule(id, "a datashift area needs a 512-aligned shift_size");
    return Status::Ok();
  }
};

}  // namespace

const KeyslotHandler& ReencryptKeyslotHandler() {
  static const ReencryptKeyslot h;
  return h;
}

}  // namespace ds::luks2
