// Escrow of a whole volume, so that the vault alone can give it back: the passphrase (escrow.h)
// and, for a detached header, what rebuilds the header; both pinned by exact version in a LUKS2
// token on the volume. One home for it: `encrypt --vault`, `enable` and `recover` call these.
//
// Why not the header backup itself: a header backup is the binary headers, the JSON areas and the
// keyslot areas, and one LUKS2 keyslot alone is 256,000 bytes of anti-forensic stripes (4000
// stripes x 64-byte key; cryptsetup requires 4000). A secret value is at most 25 KiB in Azure Key
// Vault and in ours, and the stripes are encrypted, so they do not compress. What is escrowed
// instead ("header secret", <passphrase secret name>-header, contentType kContentTypeHeader):
//   {"format": "diskseal-luks2-header/1", "state": "encrypting" | "final",
//    "luks2": <the header's JSON metadata>, "volume_key": <base64>,
//    "volume_key_kek": <kid, when wrapped>, "volume_key_alg": <alg, when wrapped>}
// a few KiB. The volume key is wrapped by the same KEK as the passphrase when one is given; it
// is no more than the vault already held (passphrase + header = volume key). From it `recover`
// rebuilds an equivalent header: the same UUID, cipher, sector size, sizes, segments and tokens,
// the volume key checked against the escrowed digest, and a new keyslot for the escrowed
// passphrase (new salt and stripes: not the same bytes, the same volume). This fits Azure.
//
// What goes stale: keyslots and the volume key digest never change during an encryption; the
// segments do, at every commit, so a header escrowed before the first data block ("encrypting")
// cannot say how far the data got. It is escrowed anyway (the escrow-then-verify rule: nothing is
// written before the vault holds the keys), and once the engine has finished the final header is
// escrowed as a new version ("final") and the token is moved to it. `recover` rebuilds only a
// "final" header and refuses an "encrypting" one, naming why.
//
// The pin (LUKS2 token, type kEscrowTokenType; "luks2-" types are reserved):
//   {"type": "diskseal-escrow", "keyslots": [], "passphrase_secret": <id with version>,
//    "header_secret": <id with version, absent for an attached header>,
//    "header_state": "encrypting" | "final"}
// `open`/`resume`/`decrypt --vault` fetch exactly the pinned passphrase version, so a later
// version (a bad one set by another host) changes nothing.
#pragma once

#include <optional>
#include <ostream>
#include <string>

#include "luks2/volume.h"
#include "util/secure_buffer.h"
#include "util/status.h"
#include "vault/client.h"
#include "vault/escrow.h"

namespace ds::engine {

// The vault side this builds on (vault/escrow.h, vault/client.h).
using vault::EscrowRecord;
using vault::EscrowRequest;
using vault::VaultClient;

inline constexpr const char* kEscrowTokenType = "diskseal-escrow";
inline constexpr const char* kContentTypeHeader = "application/vnd.diskseal.luks2-header+json";
inline constexpr const char* kHeaderFormat = "diskseal-luks2-header/1";

struct EscrowPin {
  int token_id = -1;
  std::string passphrase_secret;  // secret id with version
  std::string header_secret;      // secret id with version; empty: header not escrowed
  std::string header_state;       // "encrypting" | "final" | "" (no header)
};

// The diskseal-escrow token of `md`, if any; kCorrupt when it is there but malformed.
Result<std::optional<EscrowPin>> ReadEscrowPin(const luks2::Metadata& md);

// The header secret's name for a passphrase secret name.
std::string HeaderSecretName(const std::string& passphrase_secret_name);

// Before the first data block: `header_path` holds the new header (the operation recorded in it,
// writable, not yet in its final place; for an attached header the temp image file). Escrows and
// verifies the passphrase (EscrowAndVerify against this header and `vk`), then, when
// `escrow_header`, the header secret (read back, the volume key unwrapped and checked against the
// header's digest), then writes the pin token into the header (one commit). Any failure leaves
// the data device untouched; the caller removes the temp header.
Result<EscrowRecord> EscrowNewVolume(Env& env, VaultClient& client, const std::string& device,
                                     const std::string& header_path, bool escrow_header,
                                     const SecureBuffer& pass, const SecureBuffer& vk,
                                     const EscrowRequest& req);

// After the operation finished on `v` (writable): when its pin says the vault holds only the
// header of the unfinished encryption, escrows the final header as a new version (same KEK as
// before), verifies it and moves the pin to it. `vk` is the volume key of the final segment.
// Does nothing (Ok) without a pin or when it is final already.
Status EscrowFinalHeaderIfPending(VaultClient& client, luks2::Volume& v, const SecureBuffer& vk,
                                  std::ostream& log);

// After a reencrypt finished (a new volume key): the escrowed header no longer opens the volume.
// Marks the pin "stale" (one commit) so that the next `resume --vault` escrows the new one; no-op
// without a header pin.
Status MarkHeaderEscrowStale(luks2::Volume& v);

// True when `md` has a pin whose header escrow is not final (still "encrypting", or "stale").
bool FinalHeaderEscrowPending(const luks2::Metadata& md);

// The passphrase the pin names, that exact version, checked to belong to `luks_uuid`.
Result<SecureBuffer> FetchPinnedPassphrase(VaultClient& client, const EscrowPin& pin,
                                           const std::string& luks_uuid);

// From the vault alone: fetches the newest enabled version of `header_secret_name`, refuses one
// escrowed before the operation finished, fetches the pinned passphrase, rebuilds the header for
// `device` into `new_header` (which must not exist), checks that the passphrase opens it to the
// escrowed volume key and that it belongs to `device` (engine/binding.h: size and ids, then the
// plaintext's filesystem through the rebuilt header; kWrongDevice otherwise, nothing written).
// `pbkdf` makes the new keyslot.
Status RecoverHeader(Env& env, VaultClient& client, const std::string& device,
                     const std::string& header_secret_name, const std::string& new_header,
                     const luks2::PbkdfOptions& pbkdf, std::ostream& log);

// `repair DEVICE --header F --vault ...`: puts back a detached header file that is missing or no
// longer reads as LUKS2 (both copies damaged), rebuilt by RecoverHeader from the vault. Refused,
// with nothing changed: when F reads as a LUKS2 header (kInvalidArgument: nothing to restore;
// `repair` without --vault rewrites one damaged copy from the other), when the vault holds only
// the header escrowed before the encryption finished (kBusy), when the rebuilt header does not
// belong to `device` (kWrongDevice). An unreadable F is kept beside it as F.damaged (or
// F.damaged.N when that exists) and named in `log`; the rebuilt header replaces F by rename.
Status RestoreHeader(Env& env, VaultClient& client, const std::string& device,
                     const std::string& header_secret_name, const std::string& header,
                     const luks2::PbkdfOptions& pbkdf, std::ostream& log);

// What the vault holds for a volume's header, as `doctor` needs it (nothing unwrapped, so a token
// with secrets:get alone will do): the newest enabled version of `header_secret_name`.
struct EscrowedHeader {
  std::string id, version;  // secret id (with version) and the version alone
  std::string state;        // "encrypting" | "final"
  std::string uuid;         // the LUKS2 UUID it describes
  bool finished = false;    // one crypt segment: the operation that wrote it had finished
  Bytes segment0_digest;    // digest of segment 0's volume key (empty when not finished)
};
// kNotFound when the vault has no such secret (or no enabled version); kCorrupt when the newest
// version is not a header document.
Result<EscrowedHeader> NewestEscrowedHeader(VaultClient& client, const std::string& header_secret_name);

}  // namespace ds::engine
