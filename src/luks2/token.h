// Tokens: metadata for external unlock methods (clevis, systemd-tpm2, luks2-keyring ...). A
// token's own fields are not ours: they are kept byte for byte as stored. Types starting with
// "luks2-" are reserved for built-in handlers, which validate their own fields.
#pragma once

#include <string_view>

#include "luks2/metadata.h"

namespace ds::luks2 {

class TokenHandler {
 public:
  virtual ~TokenHandler() = default;
  virtual std::string_view type() const = 0;
  virtual Status Validate(const Json& token, const std::string& id) const = 0;
};

// Built-in handler for a reserved type, or nullptr (foreign types have none and are opaque).
const TokenHandler* FindTokenHandler(std::string_view type);

// Checks a token about to be imported: an object with a string type and a keyslots array of
// decimal strings naming existing keyslots; a reserved "luks2-" type must be one we know.
Status CheckImportedToken(const Metadata& md, const Json& token);

}  // namespace ds::luks2
