// The vault flags format/encrypt/open/resume/decrypt share (escrow and fetch of the volume key),
// and the client the commands build from them.
#pragma once

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/key_input.h"
#include "io/block_device.h"
#include "luks2/metadata.h"
#include "util/status.h"
#include "vault/client.h"

namespace ds::cli {

struct VaultOptions {
  std::string url;          // --vault https://host:port (empty: no vault)
  std::string token_file;   // --vault-token-file
  std::string token_env;    // --vault-token-env NAME (e.g. an Entra ID token for Azure Key Vault)
  std::string ca_file;      // --vault-ca
  std::string kek;          // --kek NAME: wrap the passphrase with this key
  std::string kek_alg = "RSA-OAEP";  // --kek-alg
  std::string secret_name;  // --vault-secret-name (default: diskseal-<LUKS UUID>)

  bool enabled() const { return !url.empty(); }
  // The secret name to use for a volume: --vault-secret-name, else derived from its UUID.
  std::string SecretNameFor(const std::string& luks_uuid) const;
};

// --vault, --vault-token-file, --vault-token-env, --vault-ca (what every vault client needs).
void AddVaultConnectionOptions(CLI::App& app, VaultOptions& o);
// The above plus --kek, --kek-alg and --vault-secret-name: for format/encrypt/open.
void AddVaultOptions(CLI::App& app, VaultOptions& o);

// kInvalidArgument when --vault is given without a token source (or the reverse).
Result<std::unique_ptr<vault::VaultClient>> MakeVaultClient(Env& env, const VaultOptions& o);

// `--uuid U`: which volume's secrets a header is rebuilt from (recover, repair --vault), the
// other way being --vault-secret-name. HeaderSecretFor checks that exactly one was given and
// returns the name of that volume's header secret; `what` names the command in the error
// ("dev: recover needs exactly one of ...").
void AddVolumeUuidOption(CLI::App& app, std::string& uuid, const std::string& help_prefix = "");
Result<std::string> HeaderSecretFor(const std::string& what, const VaultOptions& o, const std::string& uuid);

// The passphrase of an existing volume: when --vault is given and no key file is, the escrowed
// secret fetched from the vault (unwrapped with the KEK when it was wrapped): exactly the version
// the volume's diskseal-escrow token pins (engine/volume_escrow.h), or, for a volume escrowed
// before pins existed, the newest enabled version of the volume's secret; else from the key
// options (file, stdin, prompt). `vo` may be null (no vault flags on the command).
Result<SecureBuffer> ObtainPassphrase(Env& env, const KeySource& keys, const VaultOptions* vo,
                                      const luks2::Metadata& md, const std::string& device);

}  // namespace ds::cli
