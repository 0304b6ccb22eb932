#include "luks2/keyslot.h"

namespace ds::luks2 {

// Defined in keyslot_luks2.cc and keyslot_reencrypt.cc.
const KeyslotHandler& Luks2KeyslotHandler();
const KeyslotHandler& ReencryptKeyslotHandler();

const KeyslotHandler* FindKeyslotHandler(std::string_view type) {
  static const KeyslotHandler* const kHandlers[] = {&Luks2KeyslotHandler(),
                                                    &ReencryptKeyslotHandler()};
  for (const KeyslotHandler* h : kHandlers)
    if (h->type() == type) return h;
  return nullptr;
}

Result<SecureBuffer> KeyslotHandler::Open(BlockDevice&, const KeyslotInfo& ks,
                                          std::span<const uint8_t>) const {
  return Unsupported("keyslot " + std::to_string(ks.id) + " of type " + ks.type +
                     " does not hold a passphrase");
}

}  // namespace ds::luks2
